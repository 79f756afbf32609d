"""Multi-label datasets: the phase-file parser, audio resolution, bad input, the CSV manifest, SynthTags files."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from datasets.adapters.audio_multilabel import (
    CsvManifest,
    PhaseFileAdapter,
    cumulative_test_file,
    format_record,
    parse_phase_file,
    phase_file_names,
    train_phase_file,
)
from datasets.encoders.logmel import LogMelConfig
from datasets.errors import DatasetError

SIZES = (2, 1, 1)  # a 2 + 1 x 2 protocol keeps the fixtures small
NAMES = ("alpha", "beta", "gamma", "delta")


class TinyPhases(PhaseFileAdapter):
    name, title, class_names, phase_sizes = "tiny_ml", "Tiny", NAMES, SIZES

    def __init__(self):
        super().__init__(frontend=LogMelConfig(seconds=0.1), batch_size=4, workers=1)


def write_wav(path, seconds=0.1, rate=32000, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.random.default_rng(seed).uniform(-0.3, 0.3, int(seconds * rate)).astype(np.float32), rate)


def make_dataset(root, prefix="wav/", wav_root=None, extra=None):
    """Phase files for TinyPhases under root/tiny_ml/phases; wavs under wav_root (default: the dataset folder)."""
    folder = root / "tiny_ml"
    wav_root = wav_root or folder
    clips = {
        "tr0": [("a0", [1, 0]), ("a1", [1, 1]), ("a2", [0, 1])],
        "tr1": [("b0", [1])],
        "tr2": [("c0", [1])],
        "te0": [("t0", [1, 0]), ("t1", [0, 1])],
        "te1": [("t2", [0, 0, 1])],
        "te2": [("t3", [1, 0, 0, 1])],
    }
    for recs in clips.values():
        for cid, _ in recs:
            write_wav(wav_root / "wav" / f"{cid}.wav", seed=hash(cid) % 1000)
    seen = 0
    for t, k in enumerate(SIZES):
        seen += k
        lines = [format_record(f"{prefix}{cid}.wav", y) for cid, y in clips[f"tr{t}"]]
        (folder / "phases").mkdir(parents=True, exist_ok=True)
        (folder / "phases" / train_phase_file(t)).write_text("\n".join(lines) + "\n")
        test = [(cid, (y + [0] * seen)[:seen]) for g in range(t + 1) for cid, y in clips[f"te{g}"]]
        (folder / "phases" / cumulative_test_file(t)).write_text(
            "\n".join(format_record(f"{prefix}{cid}.wav", y) for cid, y in test) + "\n"
        )
    return folder


# ----------------------------------------------------------------------------- parser
WRAPPED = (
    "/scratch/project_2003370/as/train/Ya_1000.wav_"
    "[0. 0. 1. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0.\n"
    " 0. 0. 0. 0. 1. 0.]\n"
    "/scratch/project_2003370/as/train/Yb_2000.wav_"
    "[1. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0.\n"
    " 0. 0. 0. 0. 0. 1.]\n"
    "/data/elsewhere/Yc_3000.wav_[0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0. 0.\n"
    " 0. 0. 0. 0. 0. 0.]"  # the last record, no trailing newline: the reference drops it
)


def test_wrapped_records_and_the_last_record_are_kept(tmp_path):
    f = tmp_path / "train_phase_0.txt"
    f.write_text(WRAPPED)
    recs, skipped = parse_phase_file(f, 30)
    assert [r.path for r in recs] == [
        "/scratch/project_2003370/as/train/Ya_1000.wav",
        "/scratch/project_2003370/as/train/Yb_2000.wav",
        "/data/elsewhere/Yc_3000.wav",
    ]
    assert recs[0].labels.tolist() == [0, 0, 1] + [0] * 25 + [1, 0] and recs[1].labels[[0, 29]].tolist() == [1, 1]
    assert recs[2].labels.sum() == 0 and skipped == []
    assert recs[1].where == f"{f}:3"


def test_format_record_is_numpy_printing_and_round_trips(tmp_path):
    y = np.zeros(50)
    y[[3, 49]] = 1
    text = format_record("x/y.wav", y)
    assert text.count("\n") >= 1 and text.splitlines()[1].startswith(" ")  # numpy wraps with a leading space
    f = tmp_path / "t.txt"
    f.write_text(text + "\n\n" + format_record("x/z.wav", np.ones(5)) + "\n")
    a, b = parse_phase_file(f)[0]
    assert a.labels.tolist() == y.astype(int).tolist() and b.labels.tolist() == [1] * 5


@pytest.mark.parametrize(
    "content,line,what",
    [
        ("a.wav_[0. 1.]\nb.wav_[1. 0. 1.]\n", 2, "has 3 entries, expected 2"),
        ("a.wav_[0. 1.]\nb.wav_[1. 2.]\n", 2, "multi-hot"),
        ("a.wav_[0. 1.]\nb.wav_[1. x]\n", 2, "not a number"),
        ("a.wav_[0. 1.\nb.wav_[1. 0.]\n", 1, "not terminated"),
        ("a.wav_[0. 1.]\nb.wav_[1. 0.\n", 2, "not terminated"),
        (" 0. 1.]\na.wav_[0. 1.]\n", 1, "continuation line"),
        ("a.wav_[0. 1.]\nno vector here\n", 2, "not a record"),
        ("a.wav_[0. 1.]\na.wav_[1. 0.]\n", 2, "listed twice"),
    ],
)
def test_bad_records_name_file_and_line_or_are_skipped(tmp_path, content, line, what):
    f = tmp_path / "train_phase_0.txt"
    f.write_text(content)
    with pytest.raises(DatasetError, match=f"{f}:{line}: .*{what}"):
        parse_phase_file(f, 2)
    recs, skipped = parse_phase_file(f, 2, skip_bad=True)
    assert len(skipped) == 1 and skipped[0].startswith(f"{f}:{line}:") and what in skipped[0]
    assert len(recs) == 1


def test_empty_file_is_an_error(tmp_path):
    f = tmp_path / "e.txt"
    f.write_text("\n\n")
    with pytest.raises(DatasetError, match="no records"):
        parse_phase_file(f)


# ----------------------------------------------------------------------------- adapter
def test_adapter_reads_phases_and_reports_missing_files(tmp_path):
    a = TinyPhases()
    status = a.availability(tmp_path)
    assert not status.present and "train_phase_0.txt" in status.message and "--audio-root" in status.message
    make_dataset(tmp_path)
    assert a.availability(tmp_path).present
    ps, files = a.phase_set(tmp_path)
    assert [len(r) for r in ps.train] == [3, 1, 1] and [len(r) for r in ps.test] == [2, 3, 4]
    assert (
        ps.test[2][-1].labels.tolist() == [1, 0, 0, 1]
        and files["wav/a0.wav"] == tmp_path / "tiny_ml" / "wav" / "a0.wav"
    )


def test_audio_root_reroots_absolute_paths_from_another_machine(tmp_path):
    elsewhere = tmp_path / "moved"
    # records name /scratch/project_2003370/user/audioset/wav/<id>.wav; the wavs lie in moved/wav/<id>.wav
    make_dataset(tmp_path, prefix="/scratch/project_2003370/user/audioset/wav/", wav_root=elsewhere)
    with pytest.raises(
        DatasetError, match=r"train_phase_0.txt:1: audio file /scratch/.*a0.wav not found.*--audio-root"
    ):
        TinyPhases().phase_set(tmp_path)
    a = TinyPhases()
    a.configure(audio_root=str(elsewhere / "wav"))  # the directory common to all records is replaced
    _, files = a.phase_set(tmp_path)
    assert files["/scratch/project_2003370/user/audioset/wav/a0.wav"] == elsewhere / "wav" / "a0.wav"
    # dataset.yaml, with an explicit prefix: the rest of the path (audioset/wav/<id>.wav) is kept under the root
    (elsewhere / "audioset").mkdir()
    (elsewhere / "wav").rename(elsewhere / "audioset" / "wav")
    (tmp_path / "tiny_ml" / "dataset.yaml").write_text(
        f"audio_root: {elsewhere}\npath_prefix: /scratch/project_2003370/user\n"
    )
    _, files = TinyPhases().phase_set(tmp_path)
    assert files["/scratch/project_2003370/user/audioset/wav/t3.wav"] == elsewhere / "audioset" / "wav" / "t3.wav"


def test_missing_wav_is_an_error_naming_the_phase_line_or_a_listed_skip(tmp_path):
    folder = make_dataset(tmp_path)
    (folder / "wav" / "t1.wav").unlink()
    with pytest.raises(DatasetError, match=r"test_phase_0.txt:2: audio file .*t1.wav not found"):
        TinyPhases().phase_set(tmp_path)
    (folder / "dataset.yaml").write_text("skip_bad: true\n")
    ps, files = TinyPhases().phase_set(tmp_path)
    assert "wav/t1.wav" not in files and [len(r) for r in ps.test] == [1, 2, 3]
    assert sum("t1.wav: audio file not found" in s for s in ps.skipped) == 3  # listed once per phase file naming it


def test_corrupt_wav_is_an_error_naming_the_phase_line_or_a_listed_skip(tmp_path):
    from benchmarks.suites.multilabel import build_ml_stream

    folder = make_dataset(tmp_path)
    (folder / "wav" / "b0.wav").write_bytes(b"RIFF\x00\x00garbage, not a wav")
    with pytest.raises(DatasetError, match=r"b0.wav \(listed at .*train_phase_1.txt:1\): not a readable audio file"):
        TinyPhases().open(tmp_path, progress=False)
    (folder / "dataset.yaml").write_text("skip_bad: true\n")
    a = TinyPhases()
    store = a.open(tmp_path, progress=False)
    assert list(a.bad_audio(store)) == ["wav/b0.wav"]
    with pytest.raises(RuntimeError, match="phase 1 has no train"):  # b0 was phase 1's only train clip
        build_ml_stream(a, store, tmp_path)


def test_store_holds_fp16_logmels_of_every_distinct_wav_and_is_reused(tmp_path):
    make_dataset(tmp_path)
    a = TinyPhases()
    store = a.open(tmp_path, progress=False)
    assert store.views["logmel"].shape == (11, 64) and store.views["logmel"].dtype == "float16"
    assert len(store) == 9 and store.ids[0] == "wav/a0.wav" and (store.labels == -1).all()
    again = TinyPhases().open(tmp_path, progress=False)
    assert again.path == store.path and again.fingerprint == store.fingerprint


def test_csv_manifest_builds_reference_like_phases(tmp_path):
    d = tmp_path / "ml_csv"
    d.mkdir()
    (d / "classes.txt").write_text("\n".join(NAMES) + "\n")
    (d / "dataset.yaml").write_text("base_classes: 2\nclasses_per_phase: 1\n")
    rows = [
        "path,labels,split",
        "wav/a0.wav,alpha;gamma,train",
        "wav/a1.wav,beta,train",
        "wav/b0.wav,delta,train",
        "wav/v0.wav,alpha,val",
        "wav/t0.wav,alpha,test",
        "wav/t1.wav,gamma,test",
        "wav/t2.wav,delta;beta,test",
    ]
    (d / "manifest.csv").write_text("\n".join(rows) + "\n")
    for cid in ("a0", "a1", "b0", "t0", "t1", "t2"):
        write_wav(d / "wav" / f"{cid}.wav")
    a = CsvManifest()
    assert a.availability(tmp_path).present
    ps, _ = a.phase_set(tmp_path)
    assert ps.phase_sizes == (2, 1, 1)
    assert [(r.path, r.labels.tolist()) for r in ps.train[0]] == [("wav/a0.wav", [1, 0]), ("wav/a1.wav", [0, 1])]
    assert [(r.path, r.labels.tolist()) for r in ps.train[1]] == [("wav/a0.wav", [1])]
    assert [(r.path, r.labels.tolist()) for r in ps.test[0]] == [("wav/t0.wav", [1, 0]), ("wav/t2.wav", [0, 1])]
    assert [r.labels.tolist() for r in ps.test[2]] == [[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 1]]
    assert any("val row ignored" in s for s in ps.skipped)
    (d / "manifest.csv").write_text("path,labels,split\nwav/a0.wav,omega,train\n")
    with pytest.raises(DatasetError, match=r"manifest.csv:2: unknown class name"):
        CsvManifest().phase_set(tmp_path)


def test_synth_tags_writes_reference_phase_files(tmp_path):
    from datasets.adapters.synth_tags import SynthTags, SynthTagsConfig

    a = SynthTags(SynthTagsConfig(train_base=6, train_new=2, test_base=4, test_new=2))
    ps, files = a.phase_set(tmp_path)
    phases = a.phase_dir(tmp_path)
    assert sorted(p.name for p in phases.iterdir()) == sorted(phase_file_names(5))
    text = (phases / "test_phase_0_1_2_3_4.txt").read_text()
    assert "\n " in text  # 50-dim vectors wrap over several lines, as numpy prints them
    assert [len(r) for r in ps.train] == [6, 2, 2, 2, 2] and [len(r) for r in ps.test] == [4, 6, 8, 10, 12]
    assert all(r.labels.any() for r in ps.train[1]) and ps.train[1][0].labels.shape == (5,)
    info = sf.info(str(files[ps.train[0][0].path]))
    assert info.samplerate == 32000 and abs(info.duration - 0.32) < 1e-3
    # deterministic: a second folder generated from the same seed is byte-identical
    b = SynthTags(SynthTagsConfig(train_base=6, train_new=2, test_base=4, test_new=2))
    other = tmp_path / "again"
    b.phase_set(other)
    assert (b.phase_dir(other) / "train_phase_0.txt").read_text() == (phases / "train_phase_0.txt").read_text()
    first = ps.train[0][0].path
    assert (a.folder(other) / first).read_bytes() == (a.folder(tmp_path) / first).read_bytes()
