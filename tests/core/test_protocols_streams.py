"""Protocols never drop a remainder; streams are Avalanche benchmarks over ids with a stable hash."""

import pytest
import torch

from benchmarks.core.protocols import Protocol
from benchmarks.core.streams import build_stream
from datasets.errors import DatasetError
from tests.conftest import make_toy_store


def test_uniform_protocol_refuses_remainder_unless_explicit():
    with pytest.raises(DatasetError, match="remainder 3"):
        Protocol.uniform("p", 28, 5)
    p = Protocol.uniform("p", 28, 5, remainder="last-step")
    assert p.classes_per_step == (5, 5, 5, 5, 5, 3) and p.num_classes == 28
    assert Protocol.uniform("ave", 28, 7).classes_per_step == (7, 7, 7, 7)


def test_explicit_steps_must_cover_the_order():
    with pytest.raises(DatasetError, match="cover 6 classes"):
        Protocol("p", tuple(range(7)), (3, 3))
    with pytest.raises(DatasetError, match="repeats"):
        Protocol("p", (0, 1, 1), (2, 1))
    p = Protocol("p", (4, 0, 1, 2, 3), (3, 2))
    assert p.step_bounds(1) == (3, 5) and p.step_of_position() == [0, 0, 0, 1, 1]


def test_stream_steps_hold_their_classes_and_unequal_steps(toy_store):
    protocol = Protocol("uneven", (5, 4, 3, 2, 1, 0), (3, 2, 1), memory=6)
    stream = build_stream(toy_store, protocol)
    for split in ("train", "val", "test"):
        for t in range(3):
            rows, targets = stream.step(split, t)
            lo, hi = protocol.step_bounds(t)
            assert set(targets.tolist()) == set(range(lo, hi))
            # targets are class-order positions: position p is dataset class protocol.class_order[p]
            assert (
                torch.as_tensor(toy_store.labels[rows.numpy()]) == torch.tensor(protocol.class_order)[targets]
            ).all()
    assert stream.counts()["train"] == [36, 24, 12]
    assert [len(e.dataset) for e in stream.benchmark.train_stream] == [36, 24, 12]


def test_stream_hash_depends_on_content_only(tmp_path, toy_store, toy_protocol):
    again = build_stream(make_toy_store(tmp_path / "other"), toy_protocol)
    assert build_stream(toy_store, toy_protocol).hash == again.hash  # same ids, same protocol
    other_order = Protocol("3x2", (1, 0, 2, 3, 4, 5), (2, 2, 2), memory=12)
    assert build_stream(toy_store, other_order).hash != again.hash


def test_empty_class_is_a_clear_error(tmp_path):
    store = make_toy_store(tmp_path / "s", n_classes=3)
    with pytest.raises(DatasetError, match="do not exist"):
        build_stream(store, Protocol("p", (0, 1, 2, 3), (2, 2)))


def test_avalanche_layer_keeps_remainder_classes_and_task_labels(tmp_path):
    """avalanche-lib 0.6.0 drops remainder classes with num_experiences and needs task labels
    for LwF/replay; the stream builder passes explicit steps and task-aware datasets."""
    store = make_toy_store(tmp_path / "seven", n_classes=7)
    protocol = Protocol.uniform("3+3+1", 7, 3, memory=7, remainder="last-step")
    stream = build_stream(store, protocol)
    exps = list(stream.benchmark.train_stream)
    assert [sorted(e.classes_in_this_experience) for e in exps] == [[0, 1, 2], [3, 4, 5], [6]]
    for e in exps:
        assert set(e.dataset.targets_task_labels) == {0}
        assert list(e.dataset.task_set) == [0]
    assert sum(len(r) for r, _ in stream.steps["test"]) == 7 * 4  # no class lost in any split
