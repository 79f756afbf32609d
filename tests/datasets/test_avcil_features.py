"""AV-CIL released-feature import and adapters, on tiny fixtures in the exact released on-disk format.

Fixtures: pickled 0-d object arrays (np.save of a dict) for the three dict files and the
audio dict; the visual features either as a pickled dict or as an HDF5 file with one
dataset per vid. Dimensions are reduced (audio 12-d, visual 8*4 tokens x 6-d).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import datasets
from datasets.adapters import avcil_features as av
from datasets.base import SPLITS
from datasets.errors import ConfigError, DatasetError
from datasets.store import StoreWriter

REPO = Path(__file__).resolve().parents[2]
CLASSES = {"Zebra": 0, "Apple": 1, "Mango": 2}  # index order deliberately not alphabetical
PER_SPLIT = {"train": 3, "val": 2, "test": 2}
A_DIM, T, P, V_DIM = 12, 8, 4, 6


def make_source(
    root: Path,
    folder: str = "AVE",
    visual: str = "dict",
    seed: int = 0,
    n_tokens: int = T * P,
    audio_scale: float = 1.0,
    drop=None,
) -> dict:
    """Write SRC/<folder>/ in the released layout; return the expected contents."""
    rng = np.random.default_rng(seed)
    d = root / folder
    (d / "audio_pretrained_feature").mkdir(parents=True, exist_ok=True)
    (d / "visual_pretrained_feature").mkdir(parents=True, exist_ok=True)
    names = {i: n for n, i in CLASSES.items()}
    cid = {s: {} for s in SPLITS}
    idc = {s: {} for s in SPLITS}
    for s in SPLITS:
        for c in (2, 0, 1):  # inner dict key order is arbitrary in the release
            vids = [f"{s[:2]}{c}v{k}{rng.integers(1000)}" for k in range(PER_SPLIT[s])]
            cid[s][c] = vids
            for v in vids:
                idc[s][v] = names[c]
    if drop:
        drop(cid, idc)
    all_vids = [v for s in SPLITS for vids in cid[s].values() for v in vids]
    audio = {v: (rng.standard_normal(A_DIM) * audio_scale).astype(np.float32) for v in all_vids}
    vis = {v: rng.standard_normal((n_tokens, V_DIM)).astype(np.float32) for v in all_vids}
    for name, obj in (("category_encode_dict", CLASSES), ("all_classId_vid_dict", cid), ("all_id_category_dict", idc)):
        np.save(d / f"{name}.npy", np.array(obj, dtype=object))
    np.save(d / av.AUDIO_FILE, np.array(audio, dtype=object))
    if visual in ("dict", "both"):
        np.save(
            d / av.VISUAL_DICT, np.array({v: x + 100 if visual == "both" else x for v, x in vis.items()}, dtype=object)
        )
    if visual in ("h5", "both"):
        with h5py.File(d / av.VISUAL_H5, "w") as f:
            for v, x in vis.items():
                f.create_dataset(v, data=x)
    return {"dir": d, "cid": cid, "audio": audio, "visual": vis}


def run(src: Path, data_root: Path, dataset: str = "ave", *extra: str) -> int:
    return av.main(
        [
            "import",
            "--src",
            str(src),
            "--dataset",
            dataset,
            "--data-root",
            str(data_root),
            "--trust-pickle",
            "--no-progress",
            *extra,
        ]
    )


def expected_rows(cid: dict) -> list[tuple[str, int, str]]:
    return [(s, c, v) for s in SPLITS for c in sorted(cid[s]) for v in sorted(cid[s][c])]


def check_store(store, fx: dict, grid=(T, P)) -> None:
    rows = expected_rows(fx["cid"])
    assert store.ids == [v for _, _, v in rows]
    assert store.labels.tolist() == [c for _, c, _ in rows]
    assert [SPLITS[i] for i in store.splits] == [s for s, _, _ in rows]
    assert store.class_names == ["Zebra", "Apple", "Mango"]
    assert store.views["audio"].shape == (A_DIM,) and store.views["visual"].shape == (*grid, V_DIM)
    a = np.stack([fx["audio"][v] for v in store.ids])
    x = np.stack([fx["visual"][v].reshape(*grid, V_DIM) for v in store.ids])
    np.testing.assert_allclose(store.array("audio"), a, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(store.array("visual"), x, rtol=1e-3, atol=1e-4)
    conv = store.meta["fp16_conversion"]
    for view, ref in (("audio", a), ("visual", x)):
        assert conv[view]["dtype"] == "float16" == store.views[view].dtype
        assert conv[view]["max_abs_error"] == pytest.approx(
            float(np.abs(ref.astype(np.float16).astype(np.float32) - ref).max())
        )
        assert 0 < conv[view]["max_rel_error"] <= 2.0**-11


def test_import_pickled_visual_dict(tmp_path):
    fx = make_source(tmp_path / "src", visual="dict")
    assert run(tmp_path / "src", tmp_path / "data") == 0
    adapter = datasets.get_adapter("ave")
    assert adapter.availability(tmp_path / "data").present
    store = adapter.open(tmp_path / "data")
    assert store.path == av.store_path(tmp_path / "data", "ave") == tmp_path / "data/imported/ave"
    check_store(store, fx)
    m = store.meta
    assert (
        m["dataset"] == store.dataset == "ave" and m["source"] == "avcil-released-features" and m["pretrained"] is True
    )
    assert m["encoders"] == {"audio": av.AUDIO_ENCODER, "visual": av.VISUAL_ENCODER}
    assert set(m["source_files"]) == {*av.DICT_FILES, av.AUDIO_FILE, av.VISUAL_DICT}
    assert m["source_files"]["category_encode_dict.npy"]["sha256"] == av.file_sha256(
        fx["dir"] / "category_encode_dict.npy"
    )
    assert {"size", "mtime", "sha256_first_16MiB", "sha256_last_16MiB"} <= set(m["source_files"][av.AUDIO_FILE])
    assert not list(store.path.glob("import_stats_*"))  # bookkeeping does not leak into the store


def test_import_h5_and_prefers_h5(tmp_path):
    fx = make_source(tmp_path / "src", folder="kinetics-sounds", visual="both")  # dict variant holds different values
    assert run(tmp_path / "src", tmp_path / "data", "ksounds") == 0
    store = av.ADAPTERS[1].open(tmp_path / "data")
    check_store(store, fx)
    assert av.VISUAL_H5 in store.meta["source_files"] and av.VISUAL_DICT not in store.meta["source_files"]


def test_src_may_point_at_the_folder_itself(tmp_path):
    fx = make_source(tmp_path / "src", folder="VGGSound_100", visual="h5")
    assert run(tmp_path / "src" / "VGGSound_100", tmp_path / "data", "vggsound100") == 0
    check_store(av.ADAPTERS[2].open(tmp_path / "data"), fx)


def test_refuses_without_trust_pickle(tmp_path, capsys):
    make_source(tmp_path / "src")
    rc = av.main(["import", "--src", str(tmp_path / "src"), "--dataset", "ave", "--data-root", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert (
        rc != 0
        and "pickle" in err
        and "execute arbitrary code" in err
        and "trusted source" in err
        and "--trust-pickle" in err
    )
    assert not (tmp_path / "data").exists()


def test_refusal_exit_code_subprocess(tmp_path):
    make_source(tmp_path / "src")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "datasets.adapters.avcil_features",
            "import",
            "--src",
            str(tmp_path / "src"),
            "--dataset",
            "ave",
            "--data-root",
            str(tmp_path / "data"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "trusted source" in proc.stderr


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        av.main(["import", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in (
        "--dataset",
        "--src",
        "--data-root",
        "--trust-pickle",
        "--grid",
        "--batch-rows",
        "--force",
        "--no-progress",
    ):
        assert opt in out


def expect_error(tmp_path, capsys, *fragments, dataset="ave", extra=()):
    assert run(tmp_path / "src", tmp_path / "data", dataset, *extra) == 1
    err = capsys.readouterr().err
    for f in fragments:
        assert str(f) in err, (f, err)
    assert not av.store_path(tmp_path / "data", dataset).exists()
    return err


def test_missing_source_folder_and_file(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    expect_error(tmp_path, capsys, tmp_path / "src" / "AVE", "category_encode_dict.npy", "wiberg/AV-CIL_features")
    fx = make_source(tmp_path / "src")
    (fx["dir"] / av.AUDIO_FILE).unlink()
    expect_error(tmp_path, capsys, "missing source file", fx["dir"] / av.AUDIO_FILE, "AVE_features.zip")


def test_unknown_dataset(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run(tmp_path / "src", tmp_path / "data", "nope")
    assert e.value.code != 0 and "nope" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown AV-CIL dataset 'nope'"):
        av.import_features("nope", tmp_path, tmp_path, trust_pickle=True)


def test_missing_vid_in_audio_and_visual(tmp_path, capsys):
    fx = make_source(tmp_path / "src", visual="h5")
    vid = fx["cid"]["val"][1][0]
    audio = dict(fx["audio"])
    del audio[vid]
    np.save(fx["dir"] / av.AUDIO_FILE, np.array(audio, dtype=object))
    expect_error(tmp_path, capsys, repr(vid), fx["dir"] / av.AUDIO_FILE, "missing")
    np.save(fx["dir"] / av.AUDIO_FILE, np.array(fx["audio"], dtype=object))
    with h5py.File(fx["dir"] / av.VISUAL_H5, "a") as f:
        del f[vid]
    expect_error(tmp_path, capsys, repr(vid), fx["dir"] / av.VISUAL_H5, "missing")


def test_wrong_shape(tmp_path, capsys):
    fx = make_source(tmp_path / "src", visual="dict")
    vid = fx["cid"]["test"][2][1]
    vis = dict(fx["visual"])
    vis[vid] = vis[vid][:-1]
    np.save(fx["dir"] / av.VISUAL_DICT, np.array(vis, dtype=object))
    expect_error(
        tmp_path,
        capsys,
        repr(vid),
        fx["dir"] / av.VISUAL_DICT,
        f"({T * P - 1}, {V_DIM})",
        f"expected ({T * P}, {V_DIM})",
    )


def test_truncated_h5(tmp_path, capsys):
    fx = make_source(tmp_path / "src", visual="h5")
    h5 = fx["dir"] / av.VISUAL_H5
    os.truncate(h5, h5.stat().st_size // 2)
    expect_error(tmp_path, capsys, h5, "truncated or corrupt", "download it again")


def test_class_with_no_samples(tmp_path, capsys):
    def drop(cid, idc):
        for v in cid["val"].pop(1):
            del idc["val"][v]

    fx = make_source(tmp_path / "src", drop=drop)
    expect_error(tmp_path, capsys, fx["dir"] / "all_classId_vid_dict.npy", "'Apple'", "no val samples")


def test_inconsistent_category_dict(tmp_path, capsys):
    def relabel(cid, idc):
        idc["train"][cid["train"][0][1]] = "Mango"

    fx = make_source(tmp_path / "src", drop=relabel)
    expect_error(tmp_path, capsys, fx["dir"] / "all_id_category_dict.npy", repr(fx["cid"]["train"][0][1]), "'Mango'")


def test_resume_after_interruption(tmp_path, monkeypatch):
    fx = make_source(tmp_path / "src", visual="h5")
    original, calls = StoreWriter.write, []

    def killed_mid_view(self, view, start, values):
        calls.append((view, start))
        original(self, view, start, values)
        if len(calls) == 4:  # audio rows 0-7 written in 4 batches, killed before the 4th batch's stats are saved
            raise KeyboardInterrupt

    monkeypatch.setattr(StoreWriter, "write", killed_mid_view)
    assert run(tmp_path / "src", tmp_path / "data", "ave", "--batch-rows", "2") == 130
    final = av.store_path(tmp_path / "data", "ave")
    partial = final.with_name(final.name + ".partial")
    assert not final.exists() and partial.is_dir()
    assert "interrupted" in av.ADAPTERS[0].availability(tmp_path / "data").message
    assert json.loads((partial / "progress.json").read_text()) == {"audio": 8, "visual": 0}
    assert (
        json.loads((partial / "import_stats_audio.json").read_text())["rows"] == 6
    )  # stats lag: rows 6-7 get re-measured

    calls.clear()
    monkeypatch.setattr(
        StoreWriter,
        "write",
        lambda self, view, start, values: (calls.append((view, start)), original(self, view, start, values)),
    )
    assert run(tmp_path / "src", tmp_path / "data", "ave", "--batch-rows", "2") == 0
    assert calls[0] == ("audio", 8)  # continued, did not start over
    check_store(av.ADAPTERS[0].open(tmp_path / "data"), fx)  # includes the fp16 error over every row


def test_fp16_overflow_keeps_float32(tmp_path):
    fx = make_source(tmp_path / "src", audio_scale=1e5)
    assert run(tmp_path / "src", tmp_path / "data") == 0
    store = av.ADAPTERS[0].open(tmp_path / "data")
    assert store.views["audio"].dtype == "float32" and store.views["visual"].dtype == "float16"
    conv = store.meta["fp16_conversion"]["audio"]
    assert conv["dtype"] == "float32" and "exceed the float16 range" in conv["note"] and conv["max_abs_value"] > 65504
    np.testing.assert_array_equal(store.array("audio"), np.stack([fx["audio"][v] for v in store.ids]))


def test_grid_override_and_non_divisible(tmp_path, capsys):
    fx = make_source(tmp_path / "src", visual="h5")
    assert run(tmp_path / "src", tmp_path / "data", "ave", "--grid", "4,8") == 0
    store = av.ADAPTERS[0].open(tmp_path / "data")
    check_store(store, fx, grid=(4, 8))
    assert store.meta["visual_grid"]["T"] == 4 and store.meta["visual_grid"]["P"] == 8
    capsys.readouterr()
    assert run(tmp_path / "src", tmp_path / "data", "ave", "--grid", "5,5", "--force") == 1
    err = capsys.readouterr().err
    assert "--grid 5,5 gives 25 tokens" in err and "T*P = 32" in err
    assert av.ADAPTERS[0].open(tmp_path / "data").views["visual"].shape == (
        4,
        8,
        V_DIM,
    )  # a failed re-import keeps the old store

    fx = make_source(tmp_path / "src2", visual="h5", n_tokens=30)
    assert run(tmp_path / "src2", tmp_path / "data2") == 1
    assert "30 visual tokens per vid, not divisible by the default T=8" in capsys.readouterr().err
    assert run(tmp_path / "src2", tmp_path / "data2", "ave", "--grid", "6,5") == 0
    assert av.ADAPTERS[0].open(tmp_path / "data2").views["visual"].shape == (6, 5, V_DIM)


def test_already_imported_is_kept_unless_forced(tmp_path, capsys):
    make_source(tmp_path / "src")
    assert run(tmp_path / "src", tmp_path / "data") == 0
    fp = av.ADAPTERS[0].open(tmp_path / "data").fingerprint
    assert run(tmp_path / "src", tmp_path / "data") == 0
    assert "already imported" in capsys.readouterr().out
    make_source(tmp_path / "src", seed=1)
    assert run(tmp_path / "src", tmp_path / "data", "ave", "--force") == 0
    assert av.ADAPTERS[0].open(tmp_path / "data").fingerprint != fp


def test_availability_messages(tmp_path):
    adapter = av.ADAPTERS[0]
    missing = adapter.availability(tmp_path / "data")
    assert not missing.present
    for f in (
        "python -m datasets.adapters.avcil_features import --dataset ave",
        "--trust-pickle",
        "wiberg/AV-CIL_features",
        "AVE_features.zip",
        "category_encode_dict.npy",
        "data/AVE/",
        "Concatenate".lower(),
    ):
        assert f in missing.message, f
    with pytest.raises(DatasetError, match="python -m datasets.adapters.avcil_features import --dataset ave"):
        adapter.open(tmp_path / "data")
    assert "VS100_features.zip" in av.ADAPTERS[2].availability(tmp_path / "data").message

    make_source(tmp_path / "data" / "avcil_features")
    found = adapter.availability(tmp_path / "data")
    assert not found.present and "not imported" in found.message
    assert av.import_command("ave", tmp_path / "data" / "avcil_features", tmp_path / "data") in found.message
    assert (
        av.main(
            ["import", "--dataset", "ave", "--data-root", str(tmp_path / "data"), "--trust-pickle", "--no-progress"]
        )
        == 0
    )
    assert adapter.availability(tmp_path / "data").present


def test_registry_and_protocols():
    reg = datasets.registry()
    got = {
        n: (
            reg[n].title,
            reg[n].suites,
            [(p.name, p.classes_per_step, p.memory, p.class_order) for p in reg[n].protocols()],
        )
        for n in ("ave", "ksounds", "vggsound100")
    }
    assert got == {
        "ave": ("AVE", ("audio-visual",), [("4x7", (7, 7, 7, 7), 340, None)]),
        "ksounds": ("Kinetics-Sounds", ("audio-visual",), [("5x6", (6,) * 5, 500, None)]),
        "vggsound100": ("VGGSound100", ("audio-visual",), [("10x10", (10,) * 10, 1500, None)]),
    }
