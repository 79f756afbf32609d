"""The feature store: vectorised gather in request order, resumable writes, atomic publication."""

import json

import numpy as np
import pytest
import torch

from datasets.base import SampleTable
from datasets.errors import DatasetError
from datasets.store import FeatureStore, StoreWriter, ViewSpec


def table(n=6):
    return SampleTable(
        [f"id{i}" for i in range(n)], np.arange(n) % 2, ["train", "train", "val", "val", "test", "test"][:n], ["a", "b"]
    )


def test_gather_returns_rows_in_the_requested_order(tmp_path):
    w = StoreWriter(tmp_path / "s", table(), [ViewSpec("audio", (3,), "float32")], {"dataset": "t"}, "t")
    data = np.arange(18, dtype=np.float32).reshape(6, 3)
    w.write("audio", 0, data)
    store = w.finalize()
    rows = torch.tensor([4, 0, 5, 0])
    torch.testing.assert_close(store.gather("audio", rows), torch.from_numpy(data[[4, 0, 5, 0]]))
    assert store.rows("val").tolist() == [2, 3]
    assert store.rows("train", classes=[1]).tolist() == [1]


def test_writer_resumes_and_publishes_only_when_complete(tmp_path):
    path = tmp_path / "s"
    spec = [ViewSpec("audio", (2,)), ViewSpec("visual", (2, 1, 2))]
    w = StoreWriter(path, table(), spec, {"dataset": "t"}, "t")
    w.write("audio", 0, np.ones((4, 2)))
    assert not path.exists()  # nothing published yet
    with pytest.raises(RuntimeError, match="not fully written"):
        w.finalize()
    w2 = StoreWriter(path, table(), spec, {"dataset": "t"}, "t")  # a new process: continue where it stopped
    assert w2.filled == {"audio": 4, "visual": 0}
    with pytest.raises(RuntimeError, match="expected rows from 4"):
        w2.write("audio", 0, np.ones((2, 2)))
    w2.write("audio", 4, 2 * np.ones((2, 2)))
    w2.write("visual", 0, np.zeros((6, 2, 1, 2)))
    store = w2.finalize()
    assert store.array("audio")[:, 0].tolist() == [1, 1, 1, 1, 2, 2]
    assert store.array("audio").dtype == np.float16
    assert not (tmp_path / "s.partial").exists()


def test_a_different_build_restarts_the_partial_store(tmp_path):
    w = StoreWriter(tmp_path / "s", table(), [ViewSpec("audio", (2,))], {"dataset": "t", "encoder": 1}, "t")
    w.write("audio", 0, np.ones((3, 2)))
    w2 = StoreWriter(tmp_path / "s", table(), [ViewSpec("audio", (2,))], {"dataset": "t", "encoder": 2}, "t")
    assert w2.filled == {"audio": 0}


def test_wrong_shapes_and_corrupt_stores_are_clear_errors(tmp_path):
    w = StoreWriter(tmp_path / "s", table(), [ViewSpec("audio", (2,))], {"dataset": "t"}, "t")
    with pytest.raises(DatasetError, match="expected \\(2,\\)"):
        w.write("audio", 0, np.ones((6, 3)))
    w.write("audio", 0, np.ones((6, 2)))
    store = w.finalize()
    manifest = json.loads((store.path / "manifest.json").read_text())
    manifest["views"]["audio"]["shape"] = [5]
    (store.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="corrupt"):
        FeatureStore(store.path)
    with pytest.raises(DatasetError, match="not a feature store"):
        FeatureStore(tmp_path / "nothing")


def test_sample_table_validation_names_the_source():
    with pytest.raises(DatasetError, match="src.csv: class\\(es\\) \\['b'\\] have no val samples"):
        SampleTable(["x", "y", "z", "w"], [0, 0, 0, 1], ["train", "val", "test", "train"], ["a", "b"]).validate(
            "src.csv"
        )
    with pytest.raises(DatasetError, match="appears more than once"):
        SampleTable(["x", "x"], [0, 0], ["train", "val"], ["a"]).validate("src.csv")
