"""The bad-input corpus: every input a user can get wrong, in one parametrised list, and what the harness does with it.

Each case builds a tiny broken input (real on-disk formats, made by the helpers of the other test files),
feeds it to the entry point a user would reach it through, and requires one of:

* a `HarnessError` (the base class: the subclasses are being reorganised) whose message names the file
  (or the argument) and says the fix;
* for the command line (`run_all.main`, `python -m datasets.adapters.avcil_features`): an exit code != 0
  with that message on stderr;
* a listed skip (`--skip-bad` / `skip_bad: true` names the unreadable file in the store meta or phase set).

and that nothing half-written is left behind: no `*.tmp` file, no new finished store (`manifest.json`:
a `.partial` directory renamed into place) and no new result record (`seed<k>.json`; only the
`seed<k>.error.json` the runner writes on purpose for a failed cell).

Cases where the harness falls short are marked `xfail(strict=True)` with what is wrong; when one is
fixed its case turns XPASS and fails: drop the marker then.

Imports of the project's modules (and of the fixture helpers of other test files) are made inside
the cases, so a module being moved breaks only the cases that use it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from datasets.errors import HarnessError

DID_NOT_RAISE = pytest.fail.Exception  # what pytest.raises raises when nothing was raised


# ----------------------------------------------------------------------------- checks shared by every case


@dataclass
class Corpus:
    """What a case gets: a scratch folder and the pytest helpers it may need."""

    tmp: Path
    capsys: pytest.CaptureFixture
    monkeypatch: pytest.MonkeyPatch
    request: pytest.FixtureRequest


def half_written(root: Path) -> list[Path]:
    """Temp files of atomic writes (`.<name>.<pid>.tmp`, `<name>.tmp`) left under root."""
    return sorted(p for p in root.rglob("*") if p.name.endswith(".tmp"))


def finished_outputs(root: Path) -> set[Path]:
    """Finished stores (their manifest.json) and finished result records (seed<k>.json, not the error files)."""
    stores = set(root.rglob("manifest.json"))
    records = {p for p in root.rglob("seed*.json") if not p.name.endswith(".error.json")}
    return stores | records


@contextmanager
def nothing_half_written(root: Path, allow_new=()):
    """Around the bad input: no temp file left, no store or record finished that was not there before
    (except those matching one of the `allow_new` globs, relative to root)."""
    before = finished_outputs(root)
    yield
    assert not half_written(root), f"temp files left behind: {half_written(root)}"
    new = sorted(
        p
        for p in finished_outputs(root) - before
        if not any(fnmatch.fnmatch(p.relative_to(root).as_posix(), pat) for pat in allow_new)
    )
    assert not new, f"finished outputs written for a failed input: {new}"


def check_message(msg: str, names, fix) -> None:
    for name in names:
        assert str(name) in msg, f"the message does not name {name}:\n{msg}"
    assert any(word in msg for word in fix), f"the message says none of the fixes {list(fix)}:\n{msg}"


def expect_error(c: Corpus, trigger, names, fix, allow_new=()) -> str:
    """`trigger()` raises a HarnessError naming every one of `names` and saying one of the `fix` words."""
    with nothing_half_written(c.tmp, allow_new):
        with pytest.raises(HarnessError) as e:
            trigger()
    msg = str(e.value)
    check_message(msg, names, fix)
    return msg


def run_cli(c: Corpus, main, argv) -> tuple[int, str, str]:
    """A command's main(argv) -> (exit code, stdout, stderr); argparse's SystemExit is the exit code."""
    c.capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = c.capsys.readouterr()
    return code, out, err


def expect_exit(c: Corpus, main, argv, names, fix, code=None, allow_new=()) -> str:
    """The command exits non-zero (`code` if given) with the message on stderr; returns stderr."""
    with nothing_half_written(c.tmp, allow_new):
        rc, _, err = run_cli(c, main, argv)
    assert rc != 0 and (code is None or rc == code), f"exit code {rc}, expected {code or 'non-zero'}; stderr:\n{err}"
    check_message(err, names, fix)
    assert "Traceback" not in err, f"a traceback instead of a message:\n{err}"
    return err


def no_partial_store(c: Corpus) -> None:
    """A build that stopped on a bad file removes its half-built store."""
    assert not list(c.tmp.rglob("*.partial")), list(c.tmp.rglob("*.partial"))


# ----------------------------------------------------------------------------- fixture builders


def tiny_mp4(path: Path, audio: bool = True) -> Path:
    """A 1 s, 8-frame, 32x32 H.264 (+ AAC) clip."""
    from datasets import media

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    wave = (0.2 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32) if audio else None
    return media.write_clip(path, frames, 8, wave, 16000)


def tiny_wav(path: Path, seconds: float = 0.1, rate: int = 8000, fmt: str | None = None) -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(
        path, (0.2 * np.random.default_rng(1).standard_normal(int(seconds * rate))).astype(np.float32), rate, format=fmt
    )
    return path


def truncate(path: Path, keep: float | int = 0.5) -> Path:
    """Cut the file to a fraction (float) or a byte count (int) of its length."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)] if isinstance(keep, float) else data[:keep])
    return path


BANK_STORE = "cache/store/*-bank-*/manifest.json"  # a paired folder's audio clip bank, built before its image store


def paired_tree(c: Corpus, name: str = "d"):
    """A generic paired image+audio folder (classes a, b: 3 train + 1 test images each; audio/{train,test}/<c>/
    with a0.wav, a1.flac, t0.wav; protocol 1,1) and a function opening it (kwargs: adapter options)."""
    from tests.datasets.test_paired_datasets import adapter_for, make_generic

    root = make_generic(c.tmp / name, classes=("a", "b"), train=(3, 3), test=1)
    (root / "protocol.yaml").write_text("initial: 1\nper_step: 1\n")
    return root, lambda **kw: adapter_for(root, **kw).open(c.tmp, progress=False)


def avcil_source(c: Corpus, **kw) -> dict:
    """The AV-CIL released layout (pickled dict .npy files, visual features as dict or h5) under tmp/src/AVE."""
    from tests.datasets.test_avcil_features import make_source

    return make_source(c.tmp / "src", **kw)


def avcil_import(c: Corpus, **kw):
    from datasets.adapters import avcil_features as av

    return lambda: av.import_features("ave", c.tmp / "src", c.tmp / "data", trust_pickle=True, progress=False, **kw)


def save_pickled_dict(path: Path, mapping: dict) -> None:
    np.save(path, np.array(mapping, dtype=object))


def phase_dataset(c: Corpus) -> Path:
    """The tiny multi-label phase-file dataset of tests/datasets/test_phase_files.py (2 + 1 + 1 classes)."""
    from tests.datasets.test_phase_files import make_dataset

    return make_dataset(c.tmp)


def tiny_phases():
    from tests.datasets.test_phase_files import TinyPhases

    return TinyPhases()


def phase_record(path: str, labels) -> str:
    from datasets.adapters.audio_multilabel import format_record

    return format_record(path, labels)


def toy_argv(c: Corpus, *extra) -> list:
    return [
        "--data-root",
        c.tmp / "data",
        "--results-dir",
        c.tmp / "results",
        "--leaderboard-dir",
        c.tmp / "lb",
        "--no-progress",
        *extra,
    ]


def toy_cli(c: Corpus):
    """run_all.main over the toy registry (toy, absent, toy_paired)."""
    c.request.getfixturevalue("toy_registry")
    import run_all

    return run_all.main


# ----------------------------------------------------------------------------- media: MP4, WAV, FLAC, JPEG, PNG


def case_mp4_truncated(c):
    from datasets import media

    clip = truncate(tiny_mp4(c.tmp / "clip.mp4"))
    expect_error(c, lambda: media.decode_video(clip, num_frames=4), [clip], ["replace it", "re-download"])


def case_mp4_corrupt(c):
    from datasets import media

    clip = c.tmp / "junk.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42" + np.random.default_rng(0).bytes(2000))
    expect_error(c, lambda: media.decode_video(clip, num_frames=4), [clip], ["replace it", "re-download"])


def case_mp4_without_audio_track(c):
    from datasets import media

    clip = tiny_mp4(c.tmp / "silent.mp4", audio=False)
    expect_error(c, lambda: media.decode_video(clip, num_frames=4), [clip, "no audio stream"], ["replace it"])


def case_wav_corrupt(c):
    from datasets import media

    wav = c.tmp / "bad.wav"
    wav.write_bytes(b"RIFF1234WAVE" + b"\x00" * 40)
    expect_error(c, lambda: media.read_audio(wav), [wav], ["replace it"])


def case_wav_truncated_mid_data(c):
    """Header intact, half the sample data gone: the clip must not pass as a shorter one."""
    from datasets import media

    wav = truncate(tiny_wav(c.tmp / "cut.wav", seconds=1.0))
    expect_error(c, lambda: media.read_audio(wav, 8000), [wav], ["replace it"])


def case_wav_truncated_header_paired(c):
    root, open_ = paired_tree(c)
    wav = truncate(root / "audio/train/a/a0.wav", 30)
    expect_error(c, open_, [wav], ["--skip-bad"])
    no_partial_store(c)


def case_wav_empty_paired(c):
    root, open_ = paired_tree(c)
    wav = root / "audio/test/b/t0.wav"
    wav.write_bytes(b"")
    expect_error(c, open_, [wav, "empty"], ["--skip-bad"])
    no_partial_store(c)


def case_flac_truncated_paired(c):
    root, open_ = paired_tree(c)
    flac = truncate(root / "audio/train/b/a1.flac")
    expect_error(c, open_, [flac], ["--skip-bad"])
    no_partial_store(c)


def case_jpeg_truncated_paired(c):
    """A JPEG whose header is fine but whose data is cut: found while building, the half-built store removed."""
    from tests.datasets.test_paired_datasets import write_image

    root, open_ = paired_tree(c)
    jpeg = truncate(write_image(root / "image/train/b/img00.jpg", 5, size=(64, 64)))
    # the audio clip bank is complete (and reused by the next run); the image store is not published
    expect_error(c, open_, [jpeg], ["--skip-bad"], allow_new=[BANK_STORE])
    no_partial_store(c)


def case_png_corrupt_paired(c):
    root, open_ = paired_tree(c)
    png = root / "image/train/a/img00.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + np.random.default_rng(2).bytes(300))
    expect_error(c, open_, [png], ["--skip-bad"])
    no_partial_store(c)


def case_jpeg_corrupt_skip_bad_lists_it(c):
    """With --skip-bad (skip_bad=True) the unreadable file is left out and listed in the store meta."""
    root, open_ = paired_tree(c)
    jpeg = root / "image/train/a/img01.jpg"
    jpeg.write_bytes(np.random.default_rng(0).bytes(500))
    with nothing_half_written(c.tmp, allow_new=["cache/store/*"]):
        store = open_(skip_bad=True)
    assert {d["file"] for d in store.meta["skipped"]} == {"image/train/a/img01.jpg"}
    assert "image/train/a/img01.jpg" not in store.ids


def case_jpeg_corrupt_vgg(c):
    from datasets.adapters import vgg_instruments as V

    jpeg = c.tmp / "frame.jpg"
    jpeg.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    expect_error(c, lambda: V.load_image(jpeg), [jpeg], ["VGG_INSTRUMENTS_SKIP_BAD=1", "replace it"])


def case_wav_corrupt_vgg(c):
    from datasets.adapters import vgg_instruments as V

    wav = c.tmp / "clip.wav"
    wav.write_bytes(b"not audio at all")
    expect_error(c, lambda: V.log_spectrogram(wav, 16000), [wav], ["VGG_INSTRUMENTS_SKIP_BAD=1", "replace it"])


# ----------------------------------------------------------------------------- AV-CIL features: h5, pickled .npy


def case_h5_truncated(c):
    from datasets.adapters import avcil_features as av

    fx = avcil_source(c, visual="h5")
    h5 = fx["dir"] / av.VISUAL_H5
    os.truncate(h5, h5.stat().st_size // 2)
    expect_error(c, avcil_import(c), [h5], ["download it again"])
    assert not av.store_path(c.tmp / "data", "ave").exists()


def case_h5_corrupt(c):
    from datasets.adapters import avcil_features as av

    fx = avcil_source(c, visual="h5")
    h5 = fx["dir"] / av.VISUAL_H5
    h5.write_bytes(np.random.default_rng(3).bytes(4096))
    expect_error(c, avcil_import(c), [h5], ["download it again"])


def case_npy_feature_dict_truncated(c):
    from datasets.adapters import avcil_features as av

    fx = avcil_source(c, visual="h5")
    npy = truncate(fx["dir"] / av.AUDIO_FILE)
    expect_error(c, avcil_import(c), [npy], ["download it again"])


def case_npy_pickles_without_trust_pickle(c):
    """The released .npy dicts are pickles: the import refuses them without --trust-pickle (exit 2), writes nothing."""
    from datasets.adapters import avcil_features as av

    avcil_source(c)
    argv = ["import", "--src", c.tmp / "src", "--dataset", "ave", "--data-root", c.tmp / "data", "--no-progress"]
    expect_exit(c, av.main, argv, ["--trust-pickle", "pickle"], ["trusted source"], code=2)
    assert not (c.tmp / "data").exists()


def case_features_wrong_shape(c):
    from datasets.adapters import avcil_features as av

    fx = avcil_source(c, visual="dict")
    vid = fx["cid"]["test"][2][1]
    vis = dict(fx["visual"])
    vis[vid] = vis[vid][:-1]
    save_pickled_dict(fx["dir"] / av.VISUAL_DICT, vis)
    expect_error(c, avcil_import(c), [fx["dir"] / av.VISUAL_DICT, repr(vid)], ["download it again"])


def case_features_wrong_ndim(c):
    """Every audio feature 2-d (1, D) instead of (D,): named, but the message gives no fix."""
    from datasets.adapters import avcil_features as av

    fx = avcil_source(c, visual="h5")
    save_pickled_dict(fx["dir"] / av.AUDIO_FILE, {v: a[None] for v, a in fx["audio"].items()})
    expect_error(c, avcil_import(c), [fx["dir"] / av.AUDIO_FILE], ["download it again", "replace it", "wrong file"])


def case_features_tokens_do_not_fit_grid(c):
    from datasets.adapters import avcil_features as av

    fx = avcil_source(c, visual="h5", n_tokens=30)
    expect_error(c, avcil_import(c), [fx["dir"] / av.VISUAL_H5, "30 visual tokens"], ["pass --grid"])


def case_features_vid_missing(c):
    from datasets.adapters import avcil_features as av

    fx = avcil_source(c, visual="h5")
    vid = fx["cid"]["val"][1][0]
    save_pickled_dict(fx["dir"] / av.AUDIO_FILE, {v: a for v, a in fx["audio"].items() if v != vid})
    expect_error(c, avcil_import(c), [fx["dir"] / av.AUDIO_FILE, repr(vid)], ["download the features again"])


def case_avcil_source_file_missing(c):
    from datasets.adapters import avcil_features as av

    fx = avcil_source(c, visual="h5")
    (fx["dir"] / av.AUDIO_FILE).unlink()
    expect_error(c, avcil_import(c), ["missing source file", fx["dir"] / av.AUDIO_FILE], ["unzip AVE_features.zip"])


def case_avcil_dict_files_disagree(c):
    """all_id_category_dict names another class for a vid than all_classId_vid_dict: named, but no fix said."""
    from tests.datasets.test_avcil_features import make_source

    def relabel(cid, idc):
        idc["train"][cid["train"][0][1]] = "Mango"

    fx = make_source(c.tmp / "src", visual="h5", drop=relabel)
    expect_error(
        c,
        avcil_import(c),
        [fx["dir"] / "all_id_category_dict.npy", repr(fx["cid"]["train"][0][1])],
        ["download both again", "download them again", "copy both again", "copy them again", "re-copy"],
    )


def case_avcil_class_without_val_samples(c):
    from tests.datasets.test_avcil_features import make_source

    def drop(cid, idc):
        for v in cid["val"].pop(1):
            del idc["val"][v]

    fx = make_source(c.tmp / "src", visual="h5", drop=drop)
    expect_error(
        c,
        avcil_import(c),
        [fx["dir"] / "all_classId_vid_dict.npy", "'Apple'", "no val samples"],
        ["fix the split lists"],
    )


# ----------------------------------------------------------------------------- feature stores


def toy_store(c: Corpus) -> Path:
    from tests.conftest import make_toy_store

    return make_toy_store(c.tmp / "data" / "toy-store", n_classes=6, per_split=(2, 1, 1)).path


def case_store_view_shape_mismatch(c):
    from datasets.store import FeatureStore

    path = toy_store(c)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["views"]["audio"]["shape"] = [5]
    (path / "manifest.json").write_text(json.dumps(manifest))
    expect_error(c, lambda: FeatureStore(path), [path / "views" / "audio.npy"], ["delete it and rebuild"])


def case_store_manifest_truncated(c):
    from datasets.store import FeatureStore

    path = toy_store(c)
    truncate(path / "manifest.json")
    expect_error(c, lambda: FeatureStore(path), [path / "manifest.json"], ["delete the store", "rebuild"])


def case_store_view_truncated_fails_the_cell(c):
    """Through run_all: the cell fails with the store's message, records seed0.error.json and no seed0.json."""
    main = toy_cli(c)
    view = truncate(toy_store(c) / "views" / "audio.npy")
    argv = toy_argv(
        c,
        "--datasets",
        "toy",
        "--methods",
        "fine_tuning",
        "--modalities",
        "audio",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--no-leaderboard",
    )
    expect_exit(c, main, argv, [view, "FAILED"], ["rebuild"], code=1)
    errors = list((c.tmp / "results").rglob("*.error.json"))
    assert [p.name for p in errors] == ["seed0.error.json"] and str(view) in json.loads(errors[0].read_text())["error"]


def case_store_missing(c):
    from datasets.store import FeatureStore

    path = c.tmp / "data" / "imported" / "ave"
    path.mkdir(parents=True)
    expect_error(
        c, lambda: FeatureStore(path), [path / "manifest.json", "not a feature store"], ["re-running the import"]
    )


def case_store_linked_target_missing(c):
    """A derived store whose linked raw store is gone names both stores and the fix."""
    from datasets.store import FeatureStore, StoreWriter
    from tests.conftest import make_toy_store

    raw = make_toy_store(c.tmp / "store" / "raw", n_classes=6, per_split=(2, 1, 1))
    derived = StoreWriter(
        c.tmp / "store" / "derived", raw.table(), [], {"dataset": "toy"}, "toy", links={"audio": (raw.path, "audio")}
    ).finalize()
    shutil.rmtree(raw.path)
    expect_error(
        c, lambda: FeatureStore(derived.path), [derived.path, raw.path, "missing or incomplete"], ["derive it again"]
    )


def case_stream_protocol_names_missing_classes(c):
    """A protocol listing class indices the store lacks: named, but not where the protocol is set nor the fix."""
    from benchmarks.core.protocols import Protocol
    from benchmarks.core.streams import build_stream
    from tests.conftest import make_toy_store

    store = make_toy_store(c.tmp / "s", n_classes=3, per_split=(2, 1, 1))
    expect_error(
        c,
        lambda: build_stream(store, Protocol("p", (0, 1, 2, 3), (2, 2))),
        ["protocol p", "[3]"],
        ["protocol.yaml", "class_order", "fix"],
    )


# ----------------------------------------------------------------------------- missing partners (paired image + audio)


def case_image_class_without_audio(c):
    root, open_ = paired_tree(c)
    shutil.rmtree(root / "audio/train/b")
    shutil.rmtree(root / "audio/test/b")
    expect_error(c, open_, [root / "audio", "['b']"], ["put at least one"])


def case_audio_class_without_image(c):
    from tests.datasets.test_paired_datasets import write_audio

    root, open_ = paired_tree(c)
    write_audio(root / "audio/train/zebra/z.wav", 1, seconds=0.1)
    expect_error(c, open_, [root / "audio/train/zebra", "no matching image class"], ["Rename the folder"])


def case_image_without_its_audio_partner(c):
    """miniARIC pairs each image with one clip by name: a missing partner names both files and --skip-bad."""
    from datasets.adapters import mini_aric as M
    from tests.datasets.test_paired_datasets import RATE, make_aric

    missing = "cam4_p0_drinking_0.jpg"
    root = make_aric(c.tmp / "classroom_data", missing_for=missing)
    adapter = M.MiniARIC(image_size=16, sample_rate=RATE, clip_seconds=0.1, workers=1)
    expect_error(
        c,
        lambda: adapter.open(c.tmp, progress=False),
        [root / "image/train/drinking" / missing, "wav_drinking_0.wav"],
        ["--skip-bad"],
    )


def case_paired_class_without_test_images(c):
    root, open_ = paired_tree(c)
    for f in (root / "image/test/b").iterdir():
        f.unlink()
    expect_error(c, open_, [f"{root / 'image/test/b'}/", "no test images"], ["put", "remove"])


def case_paired_class_with_one_train_image(c):
    root, open_ = paired_tree(c)
    for f in sorted((root / "image/train/a").iterdir())[1:]:
        f.unlink()
    expect_error(c, open_, [f"{root / 'image/train/a'}/", "1 train image"], ["at least 2"])


# ----------------------------------------------------------------------------- multi-label phase files


def bad_phase_file(c, name: str, content: str):
    """Replace one phase file of the tiny phase dataset; return (its path, the phase_set trigger)."""
    folder = phase_dataset(c)
    f = folder / "phases" / name
    f.write_text(content)
    return f, lambda: tiny_phases().phase_set(c.tmp)


FIX_RECORD = ["fix the record", "skip_bad: true"]


def case_phase_record_malformed(c):
    good = phase_record("wav/b0.wav", [1])
    f, trigger = bad_phase_file(c, "train_phase_1.txt", f"{good}\nwav/b1.wav [1.]\n")
    expect_error(c, trigger, [f"{f}:2", "not a record"], FIX_RECORD)


def case_phase_record_duplicated(c):
    good = phase_record("wav/b0.wav", [1])
    f, trigger = bad_phase_file(c, "train_phase_1.txt", f"{good}\n{good}\n")
    expect_error(c, trigger, [f"{f}:2", "listed twice"], FIX_RECORD)


def case_phase_record_wrong_width(c):
    # test_phase_1 is cumulative over 2 + 1 classes: a 2-wide vector is wrong
    recs = [
        phase_record("wav/t0.wav", [1, 0, 0]),
        phase_record("wav/t2.wav", [0, 1]),
        phase_record("wav/t1.wav", [0, 1, 0]),
    ]
    f, trigger = bad_phase_file(c, "test_phase_0_1.txt", "\n".join(recs) + "\n")
    expect_error(c, trigger, [f"{f}:2", "has 2 entries, expected 3"], FIX_RECORD)


def case_phase_record_not_multi_hot(c):
    f, trigger = bad_phase_file(c, "train_phase_2.txt", "wav/c0.wav_[2.]\n")
    expect_error(c, trigger, [f"{f}:1", "multi-hot"], FIX_RECORD)


def case_phase_record_unterminated(c):
    f, trigger = bad_phase_file(c, "train_phase_0.txt", "wav/a0.wav_[1. 0.]\nwav/a1.wav_[1. 1.\n")
    expect_error(c, trigger, [f"{f}:2", "not terminated"], FIX_RECORD)


def case_phase_record_continuation_line(c):
    f, trigger = bad_phase_file(c, "train_phase_2.txt", " 0. 1.]\nwav/c0.wav_[1.]\n")
    expect_error(c, trigger, [f"{f}:1", "continuation line"], FIX_RECORD)


def case_phase_record_label_not_a_number(c):
    f, trigger = bad_phase_file(c, "train_phase_2.txt", "wav/c0.wav_[x]\n")
    expect_error(c, trigger, [f"{f}:1", "not a number"], FIX_RECORD)


def case_phase_file_empty(c):
    f, trigger = bad_phase_file(c, "train_phase_2.txt", "\n\n")
    expect_error(c, trigger, [f, "no records"], ["needs at least one"])


def case_phase_record_skip_bad_lists_it(c):
    """skip_bad: true in dataset.yaml: the malformed record is skipped and listed with its file and line."""
    good = phase_record("wav/b0.wav", [1])
    f, _ = bad_phase_file(c, "train_phase_1.txt", f"{good}\nwav/b1.wav [1.]\n")
    (f.parent.parent / "dataset.yaml").write_text("skip_bad: true\n")
    with nothing_half_written(c.tmp):
        ps, _ = tiny_phases().phase_set(c.tmp)
    assert any(s.startswith(f"{f}:2:") and "not a record" in s for s in ps.skipped), ps.skipped
    assert [r.path for r in ps.train[1]] == ["wav/b0.wav"]


def case_phase_wav_corrupt(c):
    folder = phase_dataset(c)
    wav = folder / "wav" / "b0.wav"
    wav.write_bytes(b"RIFF\x00\x00garbage, not a wav")
    expect_error(c, lambda: tiny_phases().open(c.tmp, progress=False), [wav, "train_phase_1.txt:1"], ["replace it"])


def case_phase_wav_missing(c):
    folder = phase_dataset(c)
    (folder / "wav" / "t1.wav").unlink()
    expect_error(
        c, lambda: tiny_phases().phase_set(c.tmp), ["test_phase_0.txt:2", "t1.wav"], ["--audio-root", "skip_bad: true"]
    )


def case_csv_manifest_classes_do_not_divide(c):
    from datasets.adapters.audio_multilabel import CsvManifest

    d = c.tmp / "ml_csv"
    d.mkdir()
    (d / "classes.txt").write_text("a\nb\nc\nd\n")
    (d / "dataset.yaml").write_text("base_classes: 3\nclasses_per_phase: 2\n")
    (d / "manifest.csv").write_text("path,labels,split\nwav/x.wav,a,train\n")
    expect_error(c, lambda: CsvManifest().phase_set(c.tmp), [d / "classes.txt", "4 classes"], ["set base_classes"])


# ----------------------------------------------------------------------------- protocols


def case_protocol_classes_do_not_divide(c):
    from benchmarks.core.protocols import Protocol

    expect_error(
        c, lambda: Protocol.uniform("7x3", 7, 3), ["protocol 7x3", "remainder 1"], ["give explicit classes per step"]
    )


def case_protocol_steps_do_not_cover_classes(c):
    from benchmarks.core.protocols import Protocol

    expect_error(
        c,
        lambda: Protocol("2+2+1", tuple(range(6)), (2, 2, 1)),
        ["protocol 2+2+1", "cover 5 classes"],
        ["list every step explicitly"],
    )


def case_protocol_yaml_classes_do_not_divide(c):
    from datasets.adapters.paired_folder import parse_protocol

    spec = c.tmp / "protocol.yaml"
    expect_error(
        c,
        lambda: parse_protocol({"initial": 4, "per_step": 2}, list("abcdefg"), str(spec)),
        [spec, "not a multiple of 2"],
        ["initial", "per_step"],
    )


def case_method_config_not_a_mapping(c):
    from benchmarks.suites.single_label import StoreTemplate
    from methods._avcil import AVCILSpec

    (c.tmp / "config.yaml").write_text("- just\n- a list\n")
    expect_error(
        c,
        lambda: AVCILSpec("bad", StoreTemplate, c.tmp).config("toy", "audio"),
        [c.tmp / "config.yaml"],
        ["a mapping with 'defaults' and 'datasets'"],
    )


def vgg_metadata(c, line: str) -> Path:
    """Only the first metadata file (group 0, train) of VGG-Instruments, holding `line` after a good one."""
    from datasets.adapters import vgg_instruments as V

    f = c.tmp / "vgg_instruments" / "metadata" / V.metadata_name(0, "train")
    f.parent.mkdir(parents=True)
    f.write_text(f"-x0000,flute\n{line}\n")
    return f


def case_vgg_metadata_malformed_line(c):
    from datasets.adapters import vgg_instruments as V

    f = vgg_metadata(c, "-x0001,flute,extra")
    expect_error(
        c,
        lambda: V.VGGInstruments().read_metadata(c.tmp),
        [f"{f}:2", "expected `id,class_name`"],
        ["fix or remove the line"],
    )


def case_vgg_metadata_class_in_wrong_group(c):
    from datasets.adapters import vgg_instruments as V

    f = vgg_metadata(c, "-x0001,acoustic_guitar")
    expect_error(c, lambda: V.VGGInstruments().read_metadata(c.tmp), [f"{f}:2", "belongs to group 1"], ["re-copy them"])


# ----------------------------------------------------------------------------- run_all command line


def case_cli_unknown_dataset(c):
    main = toy_cli(c)
    expect_exit(c, main, toy_argv(c, "--datasets", "nope"), ["'nope'", "toy"], ["--list"], code=2)
    assert not (c.tmp / "results").exists()


def case_cli_unknown_method(c):
    main = toy_cli(c)
    expect_exit(
        c,
        main,
        toy_argv(c, "--datasets", "toy", "--methods", "nonsense"),
        ["'nonsense'", "fine_tuning"],
        ["--list"],
        code=2,
    )
    assert not (c.tmp / "results").exists()


def case_cli_unknown_modality(c):
    main = toy_cli(c)
    expect_exit(
        c,
        main,
        toy_argv(c, "--datasets", "toy", "--modalities", "smell"),
        ["--modalities", "'smell'", "audio-visual"],
        ["choose from"],
        code=2,
    )


def case_cli_unknown_suite(c):
    main = toy_cli(c)
    expect_exit(
        c,
        main,
        toy_argv(c, "--suite", "video-only"),
        ["--suite", "'video-only'", "audio-multilabel"],
        ["choose from"],
        code=2,
    )


def case_cli_unknown_set_key(c):
    main = toy_cli(c)
    argv = toy_argv(c, "--datasets", "toy", "--methods", "lwf", "--set", "kd_temperatur=2", "--epochs", "1")
    expect_exit(c, main, argv, ["--set kd_temperatur", "kd_temperature"], ["valid keys"], code=2)
    assert not (c.tmp / "results").exists()


def case_cli_set_without_value(c):
    main = toy_cli(c)
    expect_exit(
        c,
        main,
        toy_argv(c, "--datasets", "toy", "--set", "kd_temperature"),
        ["--set 'kd_temperature'"],
        ["KEY=VALUE"],
        code=2,
    )


def case_cli_method_config_lacks_a_key(c):
    """Without --epochs the toy dataset has no epochs in the method config: the cells cannot run, said up front."""
    main = toy_cli(c)
    argv = toy_argv(c, "--datasets", "toy", "--methods", "lwf", "--seeds", "0", "--dry-run")
    expect_exit(
        c,
        main,
        argv,
        ["reads config key(s) ['epochs']", "config.yaml"],
        ["--epochs", "add them"],
        code=1,
        allow_new=["data/toy-store/manifest.json"],
    )  # the (good) toy store is built on first open
    assert not (c.tmp / "results").exists()


def case_cli_paired_folder_missing(c):
    main = toy_cli(c)
    c.monkeypatch.setattr("datasets._RUNTIME", {})
    gone = c.tmp / "no" / "such" / "pairs"
    expect_exit(
        c, main, toy_argv(c, "--paired-folder", gone, "--list"), ["--paired-folder", gone], ["image/ and audio/"]
    )


def case_cli_paired_protocol_malformed(c):
    root, _ = paired_tree(c)
    main = toy_cli(c)
    c.monkeypatch.setattr("datasets._RUNTIME", {})
    expect_exit(
        c,
        main,
        toy_argv(c, "--paired-folder", root, "--paired-protocol", "4;3", "--list"),
        ["--paired-protocol", "'4;3'"],
        ["INITIAL,PER_STEP"],
        code=2,
    )


# ----------------------------------------------------------------------------- checkpoints: missing / unexpected keys


def audiomae_ckpt(c, **kw) -> Path:
    from tests.datasets.test_extraction_videos import fake_audiomae_checkpoint

    path = c.tmp / "pretrained.pth"
    fake_audiomae_checkpoint(path, **kw)
    return path


def load_audiomae(path: Path):
    from datasets.encoders.audiomae import AudioMAEEncoder, load_audiomae_checkpoint
    from datasets.extraction.videos import TINY_AUDIO

    return lambda: load_audiomae_checkpoint(AudioMAEEncoder(TINY_AUDIO), path)


def case_ckpt_audiomae_unexpected_key(c):
    import torch

    path = audiomae_ckpt(c, extra={"blocks.0.attn.extra": torch.zeros(3)})
    expect_error(c, load_audiomae(path), [path, "unexpected ['blocks.0.attn.extra']"], ["pretrained.pth"])


def case_ckpt_audiomae_missing_key(c):
    path = audiomae_ckpt(c, drop="blocks.1.mlp.fc1.weight")
    expect_error(c, load_audiomae(path), [path, "missing ['blocks.1.mlp.fc1.weight']"], ["pretrained.pth"])


def case_ckpt_audiomae_truncated(c):
    path = truncate(audiomae_ckpt(c))
    expect_error(c, load_audiomae(path), [path], ["download it again"])


def videomae_ckpt(c, edit) -> Path:
    import torch

    from datasets.encoders.videomae import VideoMAEEncoder
    from datasets.extraction.videos import TINY_VIDEO

    sd = dict(VideoMAEEncoder(TINY_VIDEO, seed=1).model.state_dict())
    edit(sd)
    path = c.tmp / "videomae.pth"
    torch.save(sd, path)
    return path


def load_videomae(path: Path):
    from datasets.encoders.videomae import VideoMAEEncoder, load_videomae_weights
    from datasets.extraction.videos import TINY_VIDEO

    return lambda: load_videomae_weights(VideoMAEEncoder(TINY_VIDEO), path)


def case_ckpt_videomae_unexpected_key(c):
    import torch

    path = videomae_ckpt(c, lambda sd: sd.update({"classifier.weight": torch.zeros(2, 32)}))
    expect_error(c, load_videomae(path), [path, "unexpected ['classifier.weight']"], ["videomae-base"])


def case_ckpt_videomae_missing_key(c):
    path = videomae_ckpt(c, lambda sd: sd.pop("layernorm.weight"))
    expect_error(c, load_videomae(path), [path, "missing ['layernorm.weight']"], ["videomae-base"])


def cnn14():
    from methods._cnn14.model import CNN14

    return CNN14(4, widths=(4, 4, 4, 4, 4, 4))


def case_ckpt_cnn14_no_matching_key(c):
    """A file none of whose tensors belongs to CNN14: every model key missing, every file key unexpected."""
    import torch

    from methods._cnn14.model import load_pretrained

    path = c.tmp / "panns.pth"
    torch.save({"model": {"encoder.layer0.weight": torch.zeros(3, 3)}}, path)
    expect_error(c, lambda: load_pretrained(cnn14(), str(path)), [path, "encoder.layer0.weight"], ["PANNs", "Cnn14"])


def case_ckpt_cnn14_not_a_checkpoint(c):
    from methods._cnn14.model import load_pretrained

    path = c.tmp / "panns.pth"
    path.write_bytes(b"<html>404 not found</html>")
    expect_error(c, lambda: load_pretrained(cnn14(), str(path)), [path], ["download it again", "replace it"])


def mcil_towers():
    from methods.mcil_audioclip import towers as tw
    from tests.methods.test_mcil_towers import zero_factory

    return tw.build_towers("tiny-rn", zero_factory)


def clip_state():
    from methods.mcil_audioclip import towers as tw
    from tests.methods.test_mcil_towers import non_moe_state

    return non_moe_state(tw.build_clip(tw.PRESETS["tiny-rn"]))


def case_ckpt_mcil_clip_unexpected_key(c):
    import torch

    from methods.mcil_audioclip import weights as wt

    path = c.tmp / "ViT-B-16.pt"
    torch.save({**clip_state(), "visual.extra_adapter.weight": torch.zeros(3)}, path)
    towers = mcil_towers()
    expect_error(
        c,
        lambda: wt.load_openai_clip(towers, path),
        [path, "visual.extra_adapter.weight"],
        ["clip_ckpt", "--clip-ckpt"],
    )


def case_ckpt_mcil_audioclip_missing_audio_keys(c):
    import torch

    from methods.mcil_audioclip import weights as wt

    path = c.tmp / "AudioCLIP-Full-Training.pt"
    torch.save(clip_state(), path)
    towers = mcil_towers()
    expect_error(c, lambda: wt.load_audioclip(towers, path), [path, "audio"], ["audioclip_ckpt", "--audioclip-ckpt"])


def case_ckpt_cign_resnet18_wrong_keys(c):
    import torch
    from torchvision.models import resnet18

    from methods.cign.model import load_resnet18_weights

    path = c.tmp / "r18.pth"
    torch.save({"foo": torch.zeros(1)}, path)
    expect_error(
        c,
        lambda: load_resnet18_weights(resnet18(weights=None), path),
        [path, "visual_weights"],
        ["resnet18", "visual_weights: null"],
    )


def case_ckpt_clip_features_not_torchscript(c):
    from datasets.extraction import paired as pf

    path = c.tmp / "ViT-B-16.pt"
    path.write_bytes(b"not a zip")
    expect_error(
        c,
        lambda: pf.load_openai_clip(pf.build_clip(pf.ClipConfig.tiny(32)), path),
        [path, "not a TorchScript archive"],
        ["download it again"],
    )


# ----------------------------------------------------------------------------- result records


def toy_cell_argv(c, *extra):
    return toy_argv(
        c, "--datasets", "toy", "--methods", "fine_tuning", "--modalities", "audio", "--epochs", "1", *extra
    )


def case_record_truncated_is_rerun_atomically(c):
    """A truncated seed0.json is not done: the cell runs again and its record is replaced by a complete one."""
    main = toy_cli(c)
    argv = toy_cell_argv(c, "--seeds", "0", "--no-leaderboard")
    assert run_cli(c, main, argv)[0] == 0
    (record,) = (c.tmp / "results").rglob("seed0.json")
    good = json.loads(record.read_text())
    truncate(record)
    with nothing_half_written(c.tmp):
        rc, out, err = run_cli(c, main, argv)
    assert rc == 0 and "1 ran, 0 already recorded" in out, out + err
    again = json.loads(record.read_text())  # complete, parses
    assert again["cell_key"] == good["cell_key"] and again["results"]["R"] == good["results"]["R"]
    assert not list((c.tmp / "results").rglob("*.error.json"))


def case_record_truncated_leaderboard_renders(c):
    """A truncated record (and error record) of another cell does not crash the leaderboard; it is left out."""
    main = toy_cli(c)
    assert run_cli(c, main, toy_cell_argv(c, "--seeds", "0", "--no-leaderboard"))[0] == 0
    (record,) = (c.tmp / "results").rglob("seed0.json")
    data = record.read_text()
    (record.parent / "seed1.json").write_text(data[: len(data) // 2])
    (record.parent / "seed1.error.json").write_text('{"schema": 1, "cell": {"dataset": "toy"')
    with nothing_half_written(c.tmp):
        rc, out, err = run_cli(c, main, toy_cell_argv(c, "--seeds", "0"))
    assert rc == 0 and "0 ran, 1 already recorded" in out, out + err
    assert "Traceback" not in err
    page = (c.tmp / "lb" / "audio-visual.md").read_text()
    assert "fine_tuning" in page


# ----------------------------------------------------------------------------- the corpus


def xfail(reason: str, raises=None):
    return pytest.mark.xfail(strict=True, reason=reason, raises=raises)


CASES = [
    # media
    pytest.param(case_mp4_truncated, id="mp4-truncated"),
    pytest.param(case_mp4_corrupt, id="mp4-corrupt"),
    pytest.param(case_mp4_without_audio_track, id="mp4-without-audio-track"),
    pytest.param(case_wav_corrupt, id="wav-corrupt"),
    pytest.param(
        case_wav_truncated_mid_data,
        id="wav-truncated-mid-data",
    ),
    pytest.param(case_wav_truncated_header_paired, id="wav-truncated-header-paired-folder"),
    pytest.param(case_wav_empty_paired, id="wav-empty-paired-folder"),
    pytest.param(case_flac_truncated_paired, id="flac-truncated-paired-folder"),
    pytest.param(case_jpeg_truncated_paired, id="jpeg-truncated-paired-folder"),
    pytest.param(case_png_corrupt_paired, id="png-corrupt-paired-folder"),
    pytest.param(case_jpeg_corrupt_skip_bad_lists_it, id="jpeg-corrupt-skip-bad-listed"),
    pytest.param(case_jpeg_corrupt_vgg, id="jpeg-corrupt-vgg-instruments"),
    pytest.param(case_wav_corrupt_vgg, id="wav-corrupt-vgg-instruments"),
    # released AV-CIL features
    pytest.param(case_h5_truncated, id="h5-truncated"),
    pytest.param(case_h5_corrupt, id="h5-corrupt"),
    pytest.param(case_npy_feature_dict_truncated, id="npy-feature-dict-truncated"),
    pytest.param(case_npy_pickles_without_trust_pickle, id="npy-pickle-without-trust-pickle"),
    pytest.param(case_features_wrong_shape, id="features-wrong-shape"),
    pytest.param(
        case_features_wrong_ndim,
        id="features-wrong-ndim",
    ),
    pytest.param(case_features_tokens_do_not_fit_grid, id="features-tokens-not-divisible-by-grid"),
    pytest.param(case_features_vid_missing, id="features-vid-missing"),
    pytest.param(case_avcil_source_file_missing, id="avcil-source-file-missing"),
    pytest.param(
        case_avcil_dict_files_disagree,
        id="avcil-dict-files-disagree",
    ),
    pytest.param(case_avcil_class_without_val_samples, id="avcil-class-without-val-samples"),
    # feature stores
    pytest.param(case_store_view_shape_mismatch, id="store-view-shape-mismatch"),
    pytest.param(
        case_store_manifest_truncated,
        id="store-manifest-truncated",
    ),
    pytest.param(case_store_view_truncated_fails_the_cell, id="store-view-truncated-run_all-cell-fails"),
    pytest.param(case_store_missing, id="store-missing"),
    pytest.param(case_store_linked_target_missing, id="store-linked-target-missing"),
    pytest.param(
        case_stream_protocol_names_missing_classes,
        id="protocol-names-classes-the-store-lacks",
    ),
    # missing partners
    pytest.param(case_image_class_without_audio, id="partner-image-class-without-audio"),
    pytest.param(case_audio_class_without_image, id="partner-audio-class-without-image"),
    pytest.param(case_image_without_its_audio_partner, id="partner-image-without-its-audio-mini-aric"),
    pytest.param(case_paired_class_without_test_images, id="paired-class-without-test-images"),
    pytest.param(case_paired_class_with_one_train_image, id="paired-class-with-one-train-image"),
    # multi-label phase files
    pytest.param(case_phase_record_malformed, id="phase-record-malformed"),
    pytest.param(case_phase_record_duplicated, id="phase-record-duplicated"),
    pytest.param(case_phase_record_wrong_width, id="phase-record-wrong-width"),
    pytest.param(case_phase_record_not_multi_hot, id="phase-record-not-multi-hot"),
    pytest.param(case_phase_record_unterminated, id="phase-record-unterminated"),
    pytest.param(case_phase_record_continuation_line, id="phase-record-continuation-line"),
    pytest.param(case_phase_record_label_not_a_number, id="phase-record-label-not-a-number"),
    pytest.param(case_phase_file_empty, id="phase-file-empty"),
    pytest.param(case_phase_record_skip_bad_lists_it, id="phase-record-skip-bad-listed"),
    pytest.param(case_phase_wav_corrupt, id="phase-wav-corrupt"),
    pytest.param(case_phase_wav_missing, id="phase-wav-missing"),
    pytest.param(case_csv_manifest_classes_do_not_divide, id="protocol-multilabel-csv-classes-do-not-divide"),
    # protocols
    pytest.param(case_protocol_classes_do_not_divide, id="protocol-classes-do-not-divide"),
    pytest.param(case_protocol_steps_do_not_cover_classes, id="protocol-steps-do-not-cover-classes"),
    pytest.param(case_protocol_yaml_classes_do_not_divide, id="protocol-yaml-classes-do-not-divide"),
    # method configs and metadata files
    pytest.param(case_method_config_not_a_mapping, id="method-config-not-a-mapping"),
    pytest.param(case_vgg_metadata_malformed_line, id="vgg-metadata-malformed-line"),
    pytest.param(case_vgg_metadata_class_in_wrong_group, id="vgg-metadata-class-in-wrong-group"),
    # run_all command line
    pytest.param(case_cli_unknown_dataset, id="cli-unknown-dataset"),
    pytest.param(case_cli_unknown_method, id="cli-unknown-method"),
    pytest.param(case_cli_unknown_modality, id="cli-unknown-modality"),
    pytest.param(case_cli_unknown_suite, id="cli-unknown-suite"),
    pytest.param(case_cli_unknown_set_key, id="cli-unknown-set-key"),
    pytest.param(case_cli_set_without_value, id="cli-set-without-value"),
    pytest.param(case_cli_method_config_lacks_a_key, id="cli-method-config-lacks-a-key"),
    pytest.param(case_cli_paired_folder_missing, id="cli-paired-folder-missing"),
    pytest.param(case_cli_paired_protocol_malformed, id="cli-paired-protocol-malformed"),
    # checkpoints
    pytest.param(case_ckpt_audiomae_unexpected_key, id="ckpt-audiomae-unexpected-key"),
    pytest.param(case_ckpt_audiomae_missing_key, id="ckpt-audiomae-missing-key"),
    pytest.param(case_ckpt_audiomae_truncated, id="ckpt-audiomae-truncated"),
    pytest.param(case_ckpt_videomae_unexpected_key, id="ckpt-videomae-unexpected-key"),
    pytest.param(case_ckpt_videomae_missing_key, id="ckpt-videomae-missing-key"),
    pytest.param(case_ckpt_clip_features_not_torchscript, id="ckpt-clip-features-not-torchscript"),
    pytest.param(
        case_ckpt_cnn14_no_matching_key,
        id="ckpt-cnn14-no-matching-key",
    ),
    pytest.param(
        case_ckpt_cnn14_not_a_checkpoint,
        id="ckpt-cnn14-not-a-checkpoint",
    ),
    pytest.param(case_ckpt_mcil_clip_unexpected_key, id="ckpt-mcil-clip-unexpected-key"),
    pytest.param(case_ckpt_mcil_audioclip_missing_audio_keys, id="ckpt-mcil-audioclip-missing-audio-keys"),
    pytest.param(
        case_ckpt_cign_resnet18_wrong_keys,
        id="ckpt-cign-resnet18-wrong-keys",
    ),
    # result records
    pytest.param(case_record_truncated_is_rerun_atomically, id="record-truncated-rerun"),
    pytest.param(case_record_truncated_leaderboard_renders, id="record-truncated-leaderboard"),
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input(case, tmp_path, capsys, monkeypatch, request):
    case(Corpus(tmp_path, capsys, monkeypatch, request))
    assert not half_written(tmp_path), half_written(tmp_path)


def test_corpus_ids_are_unique_and_cover_the_required_kinds():
    ids = [p.id for p in CASES]
    assert len(ids) == len(set(ids)) >= 25
    for kind in (
        "mp4-",
        "wav-",
        "flac-",
        "jpeg-",
        "png-",
        "h5-",
        "features-wrong-shape",
        "partner-image",
        "partner-audio",
        "phase-record-malformed",
        "phase-record-duplicated",
        "phase-record-wrong-width",
        "without-trust-pickle",
        "protocol-classes-do-not-divide",
        "cli-unknown-dataset",
        "cli-unknown-method",
        "cli-unknown-modality",
        "cli-unknown-set-key",
        "cli-paired-folder-missing",
        "ckpt-",
        "record-truncated",
    ):
        assert any(kind in i for i in ids), kind
