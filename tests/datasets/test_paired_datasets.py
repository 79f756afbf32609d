"""Paired image+audio adapters (generic folder, ImageNet-ESC-19/27, miniARIC) and SynthAV's raw views.

Every tree here is made of real files (JPEG/PNG through PIL, WAV/FLAC through soundfile), tiny:
images of a few dozen pixels stored at S = 16 or 32, clips of a fraction of a second at 8 kHz.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from PIL import Image

import datasets
from benchmarks.core.protocols import Protocol
from datasets import media, pairing
from datasets.adapters import imagenet_esc as E
from datasets.adapters import mini_aric as M
from datasets.adapters import paired_build
from datasets.adapters import paired_folder as P
from datasets.adapters.paired_folder import PairedFolderAdapter
from datasets.adapters.paired_protocol import parse_protocol
from datasets.base import SampleTable
from datasets.errors import ConfigError, DatasetError
from datasets.pairing import AudioPairing
from datasets.store import FeatureStore, StoreWriter

RATE = 8000
CLIP_S = 0.25  # stored clip length in the small trees: 2000 samples
MEAN, STD = np.array(media.CLIP_MEAN, dtype=np.float32), np.array(media.CLIP_STD, dtype=np.float32)


# ----------------------------------------------------------------------------- fixture writers


def write_image(path: Path, seed: int, size=(20, 14), fmt=None) -> Path:
    """A random RGB image (w, h) = size, JPEG or PNG by suffix."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(path, format=fmt)
    return path


def write_audio(path: Path, seed: int, seconds=0.3, rate=RATE, channels=1, subtype=None) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (0.2 * rng.standard_normal((int(round(seconds * rate)), channels))).astype(np.float32)
    sf.write(path, data, rate, subtype=subtype)
    return path


def make_generic(
    root: Path, classes=("alpha", "beta", "gamma_ray"), train=(12, 3, 4), test=2, val=None, audio="split"
) -> Path:
    """image/{train,test}/<c>/ (JPEG and PNG, several sizes), audio per `audio` ("split": 2-3 train + 1 test clip
    per class, mixed formats/rates/channels; "per-class": one audio/<c>.wav)."""
    n = 0
    for c_i, c in enumerate(classes):
        counts = {"train": train[c_i], "test": test, **({"val": val} if val else {})}
        for split, k in counts.items():
            for i in range(k):
                ext = ".png" if (i + c_i) % 3 == 0 else ".jpg"
                write_image(
                    root / "image" / split / c / f"img{i:02d}{ext}", n, size=(16 + 3 * (i % 4), 12 + 5 * (i % 3))
                )
                n += 1
        if audio == "split":
            write_audio(
                root / "audio" / "train" / c / "a0.wav", n, seconds=0.4, rate=44100, channels=2
            )  # stereo 44.1 kHz
            write_audio(
                root / "audio" / "train" / c / "a1.flac", n + 1, seconds=0.2, rate=RATE
            )  # FLAC, shorter: padded
            if c_i == 0:
                write_audio(root / "audio" / "train" / c / "a2.wav", n + 2, seconds=1.0, rate=16000)  # 1-second clip
            write_audio(root / "audio" / "test" / c / "t0.wav", n + 3, seconds=0.3)
        else:
            write_audio(root / "audio" / f"{c}.wav", n, seconds=0.3)
        n += 4
    return root


def adapter_for(root: Path, name="mydata", **kw) -> PairedFolderAdapter:
    opts = dict(image_size=32, sample_rate=RATE, clip_seconds=CLIP_S, workers=1, batch_size=8)
    opts.update(kw)
    return PairedFolderAdapter(root, name, **opts)


@pytest.fixture(scope="module")
def generic(tmp_path_factory):
    """A generic tree with protocol.yaml, opened once (2 workers: exercises the pool)."""
    data = tmp_path_factory.mktemp("paired")
    root = make_generic(data / "mydata")
    (root / "protocol.yaml").write_text(
        yaml.safe_dump(
            {
                "initial": 1,
                "per_step": 2,
                "class_order": ["gamma_ray", "alpha", "beta"],
                "memory": 9,
                "prompt_template": "a picture of a {}.",
            }
        )
    )
    adapter = adapter_for(root, workers=2)
    return adapter, adapter.open(data, progress=False), data, root


# ----------------------------------------------------------------------------- preprocessing values


def test_image_resize_crop_normalise_matches_clip_eval_transform(tmp_path):
    # Left half red, right half blue, 64x32: no resize at S=32, crop columns 16..47 -> 16 red then 16 blue.
    arr = np.zeros((32, 64, 3), dtype=np.uint8)
    arr[:, :32, 0] = 255
    arr[:, 32:, 2] = 255
    x = media.load_image(_save(arr, tmp_path / "rb.png"), 32)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    red = (np.array([1, 0, 0], dtype=np.float32) - MEAN) / STD
    blue = (np.array([0, 0, 1], dtype=np.float32) - MEAN) / STD
    np.testing.assert_allclose(x[:, :, :16], np.broadcast_to(red[:, None, None], (3, 32, 16)), atol=1e-6)
    np.testing.assert_allclose(x[:, :, 16:], np.broadcast_to(blue[:, None, None], (3, 32, 16)), atol=1e-6)
    # A constant grey image of any size (greyscale mode, tall): bicubic keeps the constant.
    g = Image.fromarray(np.full((90, 37), 128, dtype=np.uint8), mode="L")
    g.save(tmp_path / "grey.jpg", quality=100)
    y = media.load_image(tmp_path / "grey.jpg", 16)
    np.testing.assert_allclose(y, np.broadcast_to(((128 / 255 - MEAN) / STD)[:, None, None], (3, 16, 16)), atol=0.02)
    # Random images of odd sizes: identical to torchvision's Resize(S, bicubic) + CenterCrop(S) + ToTensor + Normalize.
    T = pytest.importorskip("torchvision.transforms")
    tf = T.Compose(
        [
            T.Resize(24, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(24),
            T.ToTensor(),
            T.Normalize(media.CLIP_MEAN, media.CLIP_STD),
        ]
    )
    for k, size in enumerate([(53, 31), (31, 77), (24, 24), (10, 13)]):
        path = write_image(tmp_path / f"r{k}.png", k, size=size)
        ref = tf(Image.open(path).convert("RGB")).numpy()
        np.testing.assert_allclose(media.load_image(path, 24), ref, atol=1e-5)


def _save(arr, path):
    Image.fromarray(arr).save(path)
    return path


def test_audio_mono_resample_crop_pad(tmp_path):
    n = 2000  # 0.25 s at 8 kHz
    t = np.arange(4 * n) / RATE
    left, right = 0.5 * np.sin(2 * np.pi * 300 * t), 0.25 * np.cos(2 * np.pi * 500 * t)
    sf.write(tmp_path / "st.wav", np.stack([left, right], 1).astype(np.float32), RATE, subtype="FLOAT")
    wave, resampled = media.load_clip(tmp_path / "st.wav", RATE, n)
    assert wave.shape == (n,) and wave.dtype == np.float32 and not resampled
    mono = ((left + right) / 2).astype(np.float32)
    np.testing.assert_allclose(wave, mono[3 * n // 2 : 3 * n // 2 + n], atol=1e-6)  # channels averaged, centre crop
    # 1-second clip of 0.5 into a 2-second slot: centred, zero padded on both sides (FLAC).
    sf.write(tmp_path / "one.flac", np.full(RATE, 0.5, dtype=np.float32), RATE)
    w1, _ = media.load_clip(tmp_path / "one.flac", RATE, 2 * RATE)
    assert np.all(w1[: RATE // 2] == 0) and np.all(w1[-RATE // 2 :] == 0)
    np.testing.assert_allclose(w1[RATE // 2 : RATE // 2 + RATE], 0.5, atol=2e-4)  # FLAC is 16-bit
    # 44.1 kHz stereo -> 8 kHz mono: a 440 Hz tone stays a 440 Hz tone; values stay in [-1, 1].
    t44 = np.arange(44100) / 44100
    tone = np.sin(2 * np.pi * 440 * t44)
    sf.write(tmp_path / "t44.wav", np.stack([tone, tone], 1).astype(np.float32), 44100, subtype="FLOAT")
    w2, resampled = media.load_clip(tmp_path / "t44.wav", RATE, RATE)
    assert resampled and w2.min() >= -1 and w2.max() <= 1
    expect = np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE)
    np.testing.assert_allclose(w2[400:-400], expect[400:-400], atol=0.02)
    # Empty and unreadable files name themselves.
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1), dtype=np.float32), RATE)
    (tmp_path / "junk.wav").write_bytes(b"RIFF not really a wave file")
    for bad in ("empty.wav", "junk.wav"):
        with pytest.raises(DatasetError, match=bad):
            media.load_clip(tmp_path / bad, RATE, n)


# ----------------------------------------------------------------------------- generic store


def test_generic_store_shapes_meta_and_val_carve_out(generic):
    adapter, store, data, root = generic
    assert store.class_names == ["alpha", "beta", "gamma_ray"]
    assert store.views["clip_image"].shape == (3, 32, 32) and store.views["clip_image"].dtype == "float16"
    assert "audio_clip" not in store.views
    m = store.meta
    for key in (
        "dataset",
        "audio_bank",
        "pairing",
        "sample_rate",
        "clip_samples",
        "image_size",
        "image_mean",
        "image_std",
        "prompt_template",
        "class_prompt_names",
        "skipped",
    ):
        assert key in m, key
    assert m["pairing"] == "class" and m["sample_rate"] == RATE and m["clip_samples"] == 2000 and m["image_size"] == 32
    assert m["prompt_template"] == "a picture of a {}." and m["class_prompt_names"] == ["alpha", "beta", "gamma ray"]
    assert m["skipped"] == [] and m["image_mean"] == list(media.CLIP_MEAN) and m["audio_layout"] == "split"
    bank = FeatureStore(store.path.parent / m["audio_bank"])
    assert store.path.parent == bank.path.parent and bank.path.name.startswith("mydata-bank-")
    assert bank.views["waveform"].shape == (2000,) and bank.views["waveform"].dtype == "float16"
    assert len(bank) == 3 * 3 + 1 and set(bank.table().splits) == {"train", "test"}
    w = bank.array("waveform")
    assert np.abs(w).max() <= 1.0
    # The 1-second 16 kHz clip was resampled and centre-cropped; the 0.2 s FLAC is zero padded at both ends.
    i_flac = bank.ids.index("audio/train/beta/a1.flac")
    assert np.all(w[i_flac][:200] == 0) and np.all(w[i_flac][-200:] == 0) and np.abs(w[i_flac][900:1100]).max() > 0
    i_1s = bank.ids.index("audio/train/alpha/a2.wav")
    expect = media.load_clip(root / "audio/train/alpha/a2.wav", RATE, 2000)[0]
    np.testing.assert_allclose(w[i_1s], expect.astype(np.float16))
    # Image rows are exactly load_image of their file, as float16.
    for rid in ("image/train/alpha/img00.png", "image/test/gamma_ray/img01.png"):
        np.testing.assert_array_equal(
            store.array("clip_image")[store.ids.index(rid)], media.load_image(root / rid, 32).astype(np.float16)
        )
    # val carved from train: alpha has 12 -> position 9; beta 3 and gamma 4 -> their last image.
    t = store.table()
    val = sorted(i for i, s in zip(t.ids, t.splits) if s == "val")
    assert val == ["image/train/alpha/img09.png", "image/train/beta/img02.png", "image/train/gamma_ray/img03.jpg"]
    assert (t.splits == "train").sum() == 11 + 2 + 3 and (t.splits == "test").sum() == 6
    assert "carved" in m["val_split"]
    # A second open is a cheap read of the same store (no rebuild).
    assert adapter.open(data, progress=False).path == store.path


def test_val_folder_is_used_when_present(tmp_path):
    root = make_generic(tmp_path / "d", classes=("a", "b"), train=(2, 2), test=1, val=1)
    store = adapter_for(root).open(tmp_path, progress=False)
    t = store.table()
    assert sorted(i for i, s in zip(t.ids, t.splits) if s == "val") == [
        "image/val/a/img00.png",
        "image/val/b/img00.jpg",
    ]
    assert store.meta["val_split"] == "folder"
    # val images draw from bank train clips (the bank has no val)
    pairing = AudioPairing(store)
    rows = store.rows("val")
    for e in range(4):
        assert set(pairing.bank.splits[pairing.clip_rows(rows, 3, e)]) == {0}


def test_audio_pairing_labels_determinism_epochs_and_eval(generic):
    _, store, _, _ = generic
    pairing = AudioPairing(store)
    bank = pairing.bank
    rows = np.arange(len(store))
    for seed in (0, 1, 7):
        for epoch in range(5):
            clips = pairing.clip_rows(rows, seed, epoch)
            assert clips.dtype == np.int64
            np.testing.assert_array_equal(bank.labels[clips], store.labels)  # every pair shares the label
            # split groups: train/val images -> bank train, test images -> bank test (every class has test clips here)
            test = store.splits == 2
            assert np.all(bank.splits[clips[test]] == 2) and np.all(bank.splits[clips[~test]] == 0)
    np.testing.assert_array_equal(pairing.clip_rows(rows, 3, 2), pairing.clip_rows(rows, 3, 2))
    np.testing.assert_array_equal(pairing.clip_rows(rows[::-1], 3, 2), pairing.clip_rows(rows, 3, 2)[::-1])
    train = store.rows("train")
    assert not np.array_equal(
        pairing.clip_rows(train, 3, 0), pairing.clip_rows(train, 3, 1)
    )  # classes have 2-3 train clips
    assert not np.array_equal(pairing.clip_rows(train, 3, 0), pairing.clip_rows(train, 4, 0))
    # over many epochs every train clip of a class gets used
    alpha = train[store.labels[train] == 0]
    used = {int(c) for e in range(30) for c in pairing.clip_rows(alpha, 0, e)}
    assert used == set(np.flatnonzero((bank.labels == 0) & (bank.splits == 0)).tolist())
    np.testing.assert_array_equal(pairing.eval_clip_rows(rows), pairing.clip_rows(rows, 0, 0))
    w = pairing.waveforms(rows[:5])
    assert tuple(w.shape) == (5, 2000)
    np.testing.assert_array_equal(w.numpy(), bank.array("waveform")[pairing.eval_clip_rows(rows[:5])])


def test_pairing_hash_is_deterministic_and_mixes():
    rows = np.arange(1000)
    h = pairing.pair_hash(0, 0, rows)
    assert h.dtype == np.uint64 and np.array_equal(h, pairing.pair_hash(0, 0, rows))
    assert len(np.unique(h % 7)) == 7 and (pairing.pair_hash(0, 1, rows) != h).mean() > 0.99
    assert (pairing.pair_hash(1, 0, rows) != h).mean() > 0.99
    assert np.array_equal(
        pairing.splitmix64(np.array([0], dtype=np.uint64)), np.array([0xE220A8397B1DCDAF], dtype=np.uint64)
    )


# ----------------------------------------------------------------------------- protocols


def test_protocol_yaml_and_class_order(generic, tmp_path):
    adapter, _, _, root = generic
    (spec,) = adapter.protocols()
    assert (
        spec.name == "1+2x1" and spec.classes_per_step == (1, 2) and spec.memory == 9 and spec.class_order == (2, 0, 1)
    )
    assert adapter.prompt_template == "a picture of a {}."
    names = ["a", "b", "c", "d", "e", "f", "g"]
    spec, template = parse_protocol({"initial": 4, "per_step": 3}, names, "p.yaml")
    assert (spec.name, spec.classes_per_step, spec.memory, spec.class_order, template) == (
        "4+3x1",
        (4, 3),
        105,
        tuple(range(7)),
        "a photo of a {}.",
    )
    (tmp_path / "orders.yaml").write_text("[g, f, e, d, c, b, a]\n")
    spec, _ = parse_protocol(
        {"initial": 1, "per_step": 2, "class_order_file": "orders.yaml", "name": "mine"}, names, "p.yaml", tmp_path
    )
    assert spec.name == "mine" and spec.class_order == (6, 5, 4, 3, 2, 1, 0) and spec.classes_per_step == (1, 2, 2, 2)
    spec, _ = parse_protocol({"initial": 3, "per_step": 2, "class_order": [6, 5, 4, 3, 2, 1, 0]}, names, "p.yaml")
    assert spec.class_order == (6, 5, 4, 3, 2, 1, 0)
    for bad, msg in (
        (
            {"initial": 4, "per_step": 2},
            r"7 classes .* initial step of 4 .* steps of 2: 3 classes remain .* not a multiple of 2",
        ),
        ({"initial": 9, "per_step": 1}, "only 7"),
        ({"initial": 1}, "missing"),
        ({"initial": 1, "per_step": 2, "colour": 1}, "unknown key"),
        ({"initial": 1, "per_step": 2, "class_order": ["a", "zz"]}, "zz"),
        ({"initial": 1, "per_step": 2, "class_order": ["a"] * 7}, "more than once"),
        ({"initial": 1, "per_step": 2, "prompt_template": "no slot"}, "prompt_template"),
    ):
        with pytest.raises(DatasetError, match=msg):
            parse_protocol(bad, names, "p.yaml")
    # A bad protocol.yaml: the dataset is reported missing with the numbers; --list does not crash.
    bad_root = tmp_path / "badproto"
    shutil.copytree(root / "image", bad_root / "image")
    shutil.copytree(root / "audio", bad_root / "audio")
    (bad_root / "protocol.yaml").write_text("initial: 2\nper_step: 2\n")
    a = adapter_for(bad_root, "badproto")
    status = a.availability(tmp_path)
    assert (
        not status.present
        and "protocol.yaml" in status.message
        and "3 classes" in status.message
        and "1 classes remain" in status.message
    )
    assert a.protocols() == []
    (bad_root / "protocol.yaml").unlink()
    status = a.availability(tmp_path)
    assert not status.present and "--paired-protocol" in status.message
    a2 = adapter_for(bad_root, "badproto", protocol=P.parse_paired_protocol("1,2"))
    assert a2.availability(tmp_path).present and a2.protocols()[0].classes_per_step == (1, 2)
    with pytest.raises(ConfigError, match="INITIAL,PER_STEP"):
        P.parse_paired_protocol("4;3")


# ----------------------------------------------------------------------------- errors and skips


def _tree(tmp_path, name="d", **kw):
    root = make_generic(tmp_path / name, classes=("a", "b"), train=(3, 3), test=1, **kw)
    (root / "protocol.yaml").write_text("initial: 1\nper_step: 1\n")
    return root


def test_bad_files_raise_naming_them_or_are_skipped(tmp_path, monkeypatch):
    root = _tree(tmp_path)
    corrupt = root / "image/train/a/img01.jpg"
    corrupt.write_bytes(np.random.default_rng(0).bytes(500))
    unreadable = root / "audio/train/b/a0.wav"
    unreadable.write_bytes(b"")
    a = adapter_for(root)
    with pytest.raises(DatasetError) as e:
        a.open(tmp_path, progress=False)
    assert str(corrupt) in str(e.value) and "image/train/a/img01.jpg" in str(e.value) and "--skip-bad" in str(e.value)
    assert "audio/train/b/a0.wav" in str(e.value)
    monkeypatch.setenv("PAIRED_SKIP_BAD", "1")
    store = adapter_for(root).open(tmp_path, progress=False)
    skipped = {d["file"]: d["reason"] for d in store.meta["skipped"]}
    assert (
        set(skipped) == {"image/train/a/img01.jpg", "audio/train/b/a0.wav"}
        and "empty" in skipped["audio/train/b/a0.wav"]
    )
    assert "image/train/a/img01.jpg" not in store.ids and len(store) == 7
    bank = AudioPairing(store).bank
    assert "audio/train/b/a0.wav" not in bank.ids and [d["file"] for d in bank.meta["skipped"]] == [
        "audio/train/b/a0.wav"
    ]
    monkeypatch.delenv("PAIRED_SKIP_BAD")
    # the constructor flag wins over the environment; the store hash covers the skip list: fixing the file rebuilds
    write_image(corrupt, 99)
    write_audio(unreadable, 98)
    fixed = adapter_for(root, skip_bad=False).open(tmp_path, progress=False)
    assert fixed.path != store.path and fixed.meta["skipped"] == [] and len(fixed) == 8


def test_truncated_image_found_while_building(tmp_path):
    """A JPEG whose header is fine but whose data is cut: caught by the build, then named or skipped."""
    root = _tree(tmp_path)
    path = root / "image/train/b/img00.jpg"
    write_image(path, 5, size=(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert paired_build.check_job(("image", str(path))) is None  # passes the header check
    with pytest.raises(DatasetError, match="image/train/b/img00.jpg"):
        adapter_for(root).open(tmp_path, progress=False)
    assert not list((tmp_path / "cache/store").glob("*.partial"))  # the stale half-built store is gone
    check = json.loads((tmp_path / "cache/store/mydata-check.json").read_text())
    assert "image/train/b/img00.jpg" in check["bad"]  # remembered: the next run stops before building
    store = adapter_for(root, skip_bad=True).open(tmp_path, progress=False)
    assert [d["file"] for d in store.meta["skipped"]] == ["image/train/b/img00.jpg"] and len(store) == 7


def test_structure_errors_name_the_folder(tmp_path):
    root = _tree(tmp_path, "orphan")
    write_audio(root / "audio/train/zebra/z.wav", 1)
    with pytest.raises(DatasetError, match=r"audio/train/zebra.*no matching image class"):
        adapter_for(root).open(tmp_path, progress=False)
    root = _tree(tmp_path, "notest")
    for f in (root / "image/test/b").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match=r"image/test/b/: class 'b' has no test images"):
        adapter_for(root).open(tmp_path, progress=False)
    root = _tree(tmp_path, "noaudio")
    shutil.rmtree(root / "audio/train/b")
    shutil.rmtree(root / "audio/test/b")
    with pytest.raises(DatasetError, match=r"\['b'\] have no audio clip"):
        adapter_for(root).open(tmp_path, progress=False)
    root = _tree(tmp_path, "onetrain")
    for f in sorted((root / "image/train/a").iterdir())[1:]:
        f.unlink()
    with pytest.raises(DatasetError, match=r"image/train/a/: class 'a' has 1 train image; at least 2"):
        adapter_for(root).open(tmp_path, progress=False)
    status = adapter_for(tmp_path / "nowhere").availability(tmp_path)
    assert not status.present and "nowhere/ (the dataset folder)" in status.message


def test_interrupted_build_resumes(tmp_path, monkeypatch):
    root = _tree(tmp_path)
    calls = {"n": 0}
    real = paired_build.image_job

    def counting(job):
        calls["n"] += 1
        return real(job)

    real_write = StoreWriter.write

    def crash_after_first_image_batch(self, view, start, values):
        real_write(self, view, start, values)
        if view == "clip_image" and start == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(paired_build, "image_job", counting)
    monkeypatch.setattr(StoreWriter, "write", crash_after_first_image_batch)
    with pytest.raises(KeyboardInterrupt):
        adapter_for(root, batch_size=3).open(tmp_path, progress=False)
    partial = list((tmp_path / "cache/store").glob("mydata-*.partial"))
    assert len(partial) == 1 and calls["n"] == 3
    monkeypatch.setattr(StoreWriter, "write", real_write)
    store = adapter_for(root, batch_size=3).open(tmp_path, progress=False)
    assert calls["n"] == 8  # the 3 finished rows were not redone
    expect = np.stack([media.load_image(root / i, 32) for i in store.ids]).astype(np.float16)
    np.testing.assert_array_equal(store.array("clip_image"), expect)
    assert not list((tmp_path / "cache/store").glob("*.partial"))


def test_required_splits_keeps_default_behaviour():
    t = SampleTable(["x", "y"], np.array([0, 0]), np.array(["train", "test"]), ["c"])
    with pytest.raises(DatasetError, match="no val samples"):
        t.validate("src")
    t.validate("src", required_splits=("train", "test"))
    with pytest.raises(DatasetError, match="no test samples; every class needs train and test"):
        SampleTable(["x"], np.array([0]), np.array(["train"]), ["c"]).validate("bank", ("train", "test"))


# ----------------------------------------------------------------------------- ImageNet-ESC


def make_imagenet_esc(root: Path, variant: int, layout: str) -> Path:
    for k, (wnid, *_rest) in enumerate(E.pairs(variant)):
        for split, n in (("train", 2), ("test", 1)):
            for i in range(n):
                write_image(root / "image" / split / wnid / f"{wnid}_{i}.JPEG", k * 3 + i, size=(12, 10), fmt="JPEG")
        if layout == "readme":
            write_audio(root / "audio" / "train" / wnid / "1-100-A-0.wav", k, seconds=0.2)
            write_audio(root / "audio" / "test" / wnid / "2-100-A-0.wav", k + 100, seconds=0.2)
        else:
            write_audio(root / "audio" / f"{wnid}.wav", k, seconds=0.2)
    return root


@pytest.mark.parametrize("layout", ["readme", "code"])
def test_imagenet_esc19_both_layouts(tmp_path, layout):
    make_imagenet_esc(tmp_path / "imagenet19", 19, layout)
    a = E.ImageNetESC(19, image_size=16, sample_rate=RATE, clip_seconds=0.1, workers=1)
    assert a.availability(tmp_path).present
    store = a.open(tmp_path, progress=False)
    wnids = [p[0] for p in E.pairs(19)]
    assert store.class_names == wnids == sorted(wnids) and len(wnids) == 19
    assert store.meta["class_prompt_names"][:5] == ["cock", "hen", "chickadee", "tree frog", "Otterhound"]
    assert store.meta["class_prompt_names"][8] == "pig" and store.meta["prompt_template"] == "a bad photo of a {}."
    assert store.meta["esc50"][0] == {
        "wnid": "n01514668",
        "imagenet": "cock",
        "esc50_class": "rooster",
        "esc50_target": 1,
    }
    assert store.views["clip_image"].shape == (3, 16, 16) and len(store) == 19 * 3
    pairing = AudioPairing(store)
    assert pairing.bank.views["waveform"].shape == (800,)
    rows = np.arange(len(store))
    for e in range(3):
        np.testing.assert_array_equal(pairing.bank.labels[pairing.clip_rows(rows, 0, e)], store.labels)
    if layout == "readme":
        assert (
            store.meta["audio_layout"] == "split" and len(pairing.bank) == 38 and store.meta["pairing_fallback"] == []
        )
        test = store.rows("test")
        assert np.all(pairing.bank.splits[pairing.eval_clip_rows(test)] == 2)
    else:  # one clip per class serves every split
        assert store.meta["audio_layout"] == "per-class" and len(pairing.bank) == 19
        assert set(pairing.bank.table().splits) == {"train"}
        np.testing.assert_array_equal(pairing.eval_clip_rows(rows), pairing.clip_rows(rows, 5, 9))


def test_imagenet_esc_folder_errors(tmp_path):
    root = make_imagenet_esc(tmp_path / "imagenet19", 19, "code")
    a = E.ImageNetESC(19, image_size=16, sample_rate=RATE, clip_seconds=0.1, workers=1)
    shutil.rmtree(root / "image/test/n09421951", ignore_errors=True)
    write_image(root / "image/train/n09421951/x.JPEG", 1)  # a 27-only WNID in the 19 set
    shutil.rmtree(root / "image/train/n01514668")
    shutil.rmtree(root / "image/test/n01514668")
    with pytest.raises(DatasetError) as e:
        a.open(tmp_path, progress=False)
    assert "missing ['n01514668']" in str(e.value) and "unexpected ['n09421951']" in str(e.value)
    shutil.rmtree(root / "image/train/n09421951")
    write_image(root / "image/train/n01514668/y.JPEG", 2)
    write_image(root / "image/train/n01514668/z.JPEG", 3)
    write_image(root / "image/test/n01514668/t.JPEG", 4)
    shutil.rmtree(root / "audio")
    (root / "audio/misc").mkdir(parents=True)
    with pytest.raises(
        DatasetError, match=r"no audio found; expected .*audio/\{train,test\}/<class>/.* or one .*audio/<class>\.wav"
    ):
        a.open(tmp_path, progress=False)
    assert not E.ImageNetESC(27).availability(tmp_path).present
    readme = make_imagenet_esc(tmp_path / "r" / "imagenet19", 19, "readme")
    shutil.rmtree(readme / "audio/test/n04554684")
    with pytest.raises(DatasetError, match=r"audio/test: no clips for class\(es\) \['n04554684'\]"):
        a.open(tmp_path / "r", progress=False)
    assert "imagenet27" in E.ImageNetESC(27).availability(tmp_path).message


def _steps(spec, names):
    proto = Protocol.from_spec(spec, len(names))
    out, k = [], 0
    for n in proto.classes_per_step:
        out.append([names[c] for c in proto.class_order[k : k + n]])
        k += n
    return out


def test_imagenet_esc_protocols_reproduce_reference_tasks():
    reg = datasets.registry()
    a19, a27 = reg["imagenet_esc19"], reg["imagenet_esc27"]
    assert (a19.title, a27.title, a19.suites) == ("ImageNet-ESC-19", "ImageNet-ESC-27", ("audio-visual",))
    p19 = {p.name: p for p in a19.protocols()}
    assert {k: (p.classes_per_step, p.memory) for k, p in p19.items()} == {
        "7+6x2": ((7, 6, 6), 285),
        "4+3x5": ((4, 3, 3, 3, 3, 3), 285),
    }
    names19 = a19.class_prompt_names
    steps = _steps(p19["4+3x5"], names19)
    assert [set(s) for s in steps] == [
        {"chainsaw", "chickadee", "Otterhound", "cock"},
        {"vacuum cleaner", "bullet train", "pig"},
        {"computer mouse", "Egyptian cat", "big-horn sheep"},
        {"digital clock", "wall clock", "cricket"},
        {"fly", "hen", "tree frog"},
        {"computer keyboard", "airliner", "washing machine"},
    ]
    merged = _steps(p19["7+6x2"], names19)
    assert merged[0] == steps[0] + steps[1] and merged[1] == steps[2] + steps[3] and merged[2] == steps[4] + steps[5]
    p27 = {p.name: p for p in a27.protocols()}
    assert {k: (p.classes_per_step, p.memory) for k, p in p27.items()} == {
        "7+5x4": ((7, 5, 5, 5, 5), 405),
        "6+3x7": ((6,) + (3,) * 7, 405),
    }
    steps27 = _steps(p27["6+3x7"], a27.class_prompt_names)
    assert [set(s) for s in steps27] == [
        {"fly", "chainsaw", "big-horn sheep", "computer mouse", "wall clock", "vacuum cleaner"},
        {"water jug", "chickadee", "washing machine"},
        {"hen", "church", "bullet train"},
        {"tree frog", "airliner", "pig"},
        {"toilet seat", "Otterhound", "water bottle"},
        {"Egyptian cat", "can opener", "cricket"},
        {"washbasin", "fire screen", "cock"},
        {"digital clock", "sandbar", "computer keyboard"},
    ]
    flat = [c for s in steps27 for c in s]
    assert _steps(p27["7+5x4"], a27.class_prompt_names) == [flat[:7]] + [flat[7 + 5 * i : 12 + 5 * i] for i in range(4)]
    assert len(E.PAIRS) == 27 and sum(p[5] for p in E.PAIRS) == 19 and len({p[4] for p in E.PAIRS}) == 27


# ----------------------------------------------------------------------------- miniARIC


def make_aric(root: Path, missing_for=None, shared=False) -> Path:
    """33 classes x (2 train, 1 test) images `cam<k>_p<i>_<class>_<i>.jpg` with audio/wav_<class>_<i>.wav (0.2 s)."""
    for k, c in enumerate(M.CLASSES):
        for split, idx in (("train", (0, 1)), ("test", (2,))):
            for i in idx:
                name = f"cam{k}_p{i}_{c}_{i}.jpg"
                write_image(root / "image" / split / c / name, k * 3 + i, size=(10, 12), fmt="JPEG")
                if name != missing_for:
                    write_audio(root / "audio" / M.audio_partner(name), k * 3 + i, seconds=0.2)
    if shared:  # a second person in the same moment, another class: same clip
        write_image(root / "image/train/yawning/cam9_p7_analyzing_0.jpg", 500, size=(10, 12), fmt="JPEG")
    return root


def test_mini_aric_pairing_rule_and_store(tmp_path):
    assert M.audio_partner("A_B_rest.jpg") == "wav_rest.wav"
    assert M.audio_partner("cam1_p3_2021_05_01_x.jpg") == "wav_2021_05_01_x.wav"
    assert M.audio_partner("front_07_listening_12.png") == "wav_listening_12.wav"
    root = make_aric(tmp_path / "classroom_data", shared=True)
    a = M.MiniARIC(image_size=16, sample_rate=RATE, clip_seconds=0.1, workers=1)
    store = a.open(tmp_path, progress=False)
    assert store.class_names == list(M.CLASSES) and len(M.CLASSES) == 33
    assert (
        store.meta["pairing"] == "fixed"
        and store.views["audio_clip"].shape == ()
        and store.views["audio_clip"].dtype == "int32"
    )
    assert store.meta["class_prompt_names"][1] == "blackboard_wiping"
    assert store.meta["prompt_template"] == "a photo of a person who is {} in a classroom."
    pairing = AudioPairing(store)
    bank = pairing.bank
    rows = np.arange(len(store))
    clips = pairing.clip_rows(rows, 1, 2)
    np.testing.assert_array_equal(clips, pairing.eval_clip_rows(rows))  # fixed: the same every epoch
    np.testing.assert_array_equal(bank.labels[clips], store.labels)
    for r in (0, 40, len(store) - 1):
        image = Path(store.ids[r]).name
        clip_id = bank.ids[clips[r]]
        assert clip_id.split("#")[0] == f"audio/{M.audio_partner(image)}"
        expect = media.load_clip(root / "audio" / M.audio_partner(image), RATE, 800)[0]
        np.testing.assert_array_equal(bank.array("waveform")[clips[r]], expect.astype(np.float16))
    # 0.2 s source, 0.1 s stored: the centre (samples 400..1199 of 1600)
    src, _ = sf.read(root / "audio" / M.audio_partner(Path(store.ids[0]).name), dtype="float32")
    np.testing.assert_allclose(bank.array("waveform")[clips[0]], src[400:1200], atol=1e-3)
    # the shared clip has one bank row per class, each with its image's label
    shared = [i for i in bank.ids if i.startswith("audio/wav_analyzing_0.wav")]
    assert len(shared) == 2 and all("#" in i for i in shared)
    assert {bank.class_names[bank.labels[bank.ids.index(i)]] for i in shared} == {"analyzing", "yawning"}
    names = a.class_prompt_names
    p = {x.name: x for x in a.protocols()}
    assert {k: (v.classes_per_step, v.memory) for k, v in p.items()} == {
        "13+10x2": ((13, 10, 10), 495),
        "13+5x4": ((13, 5, 5, 5, 5), 495),
    }
    steps = _steps(p["13+5x4"], names)
    assert steps[0] == [
        "unknown",
        "listening",
        "reading",
        "using_phone",
        "using_pad",
        "using_computers",
        "scratching_head",
        "writing",
        "talking",
        "standing",
        "sleeping",
        "teaching",
        "yawning",
    ]
    assert steps[1:] == [
        ["walking", "relaxing", "analyzing", "taking_bottle", "gathering_up_bag"],
        ["drinking", "taking_photos", "listening_to_music", "discussing", "setting_equipment"],
        ["taking_bag", "blackboard_writing", "blackboard_wiping", "taking_off", "student_demonstrating"],
        ["eating", "reviewing", "handsup", "speaking", "picking_up_computers"],
    ]


def test_mini_aric_missing_partner(tmp_path):
    missing = "cam4_p0_drinking_0.jpg"
    make_aric(tmp_path / "classroom_data", missing_for=missing)
    # drinking needs 2 train images to carve a val image, so add a third with its clip
    root = tmp_path / "classroom_data"
    write_image(root / "image/train/drinking/cam4_p5_drinking_5.jpg", 7, size=(10, 12), fmt="JPEG")
    write_audio(root / "audio/wav_drinking_5.wav", 7, seconds=0.2)
    a = M.MiniARIC(image_size=16, sample_rate=RATE, clip_seconds=0.1, workers=1)
    with pytest.raises(DatasetError) as e:
        a.open(tmp_path, progress=False)
    msg = str(e.value)
    assert f"image/train/drinking/{missing}" in msg and "audio/wav_drinking_0.wav" in msg and "--skip-bad" in msg
    store = M.MiniARIC(image_size=16, sample_rate=RATE, clip_seconds=0.1, workers=1, skip_bad=True).open(
        tmp_path, progress=False
    )
    assert store.meta["skipped"] == [
        {"file": f"image/train/drinking/{missing}", "reason": "its audio partner audio/wav_drinking_0.wav is missing"}
    ]
    assert f"image/train/drinking/{missing}" not in store.ids


# ----------------------------------------------------------------------------- registration and run_all


def test_register_paired_folder_and_run_all_options(generic, monkeypatch, capsys):
    import run_all

    _, _, data, root = generic
    monkeypatch.setattr(datasets, "_RUNTIME", {})
    try:
        assert (
            run_all.main(["--data-root", str(data), "--paired-folder", f"{root}=my_pairs", "--skip-bad", "--list"]) == 0
        )
        out = capsys.readouterr().out
        assert "my_pairs" in out and "[present]" in out.split("my_pairs")[1][:20] and "1+2x1" in out
        a = datasets.get_adapter("my_pairs")
        assert isinstance(a, PairedFolderAdapter) and a.skip_bad and a.suites == ("audio-visual",)
        assert pickle.loads(pickle.dumps(a)).skip_bad  # the Ray / Slurm workers get the adapter object, not the run
        bare = data / "bare"
        shutil.copytree(root / "image", bare / "image")
        shutil.copytree(root / "audio", bare / "audio")
        assert (
            run_all.main(["--data-root", str(data), "--paired-folder", str(bare), "--paired-protocol", "3,1", "--list"])
            == 0
        )
        b = datasets.get_adapter("bare")
        assert b.protocols()[0].classes_per_step == (3,) and not b.skip_bad
        capsys.readouterr()
        assert run_all.main(["--data-root", str(data), "--paired-folder", str(bare), "--list"]) == 0
        assert "MISSING" in capsys.readouterr().out.split("bare")[1][:30]
        with pytest.raises(ConfigError, match="taken by a built-in"):
            P.register_paired_folder(root, "synth_av")
        assert run_all.main(["--paired-folder", str(root), "--paired-protocol", "x", "--list"]) == 2
    finally:
        P.configure(None)


# ----------------------------------------------------------------------------- SynthAV raw views


def test_synth_av_raw_views_and_self_pairing(tmp_path):
    import torch

    from datasets import media
    from datasets.adapters.synth_av import SynthAV, SynthConfig

    a = SynthAV(SynthConfig(num_classes=4, train=2, val=1, test=1), workers=1)
    store = a.open(tmp_path, progress=False)
    assert a.EXTRACT_VERSION == 3 and set(a.views) == {"audio", "visual", "clip_image", "waveform"}
    assert store.views["clip_image"].shape == (3, 64, 64) and store.views["waveform"].shape == (16000,)
    m = store.meta
    assert (m["audio_bank"], m["pairing"], m["sample_rate"], m["clip_samples"], m["image_size"]) == (
        "self",
        "self",
        16000,
        16000,
        64,
    )
    assert (
        m["prompt_template"] == a.prompt_template == "a video of {}."
        and m["class_prompt_names"] == a.class_prompt_names
    )
    assert (
        a.class_prompt_names[0] == "a low buzzing hum with a red ball sliding sideways"
        and len(set(a.class_prompt_names)) == 4
    )
    pairing = AudioPairing(store)
    rows = np.arange(len(store))
    assert pairing.bank is store and np.array_equal(pairing.clip_rows(rows, 3, 4), rows)
    # The raw views are the decoded media; the feature views are the encoders on the same decode (unchanged path).
    decoded = [
        media.decode_video(a.raw_dir(tmp_path) / "videos" / f"{i}.mp4", num_frames=8, sample_rate=16000, duration=1.0)
        for i in store.ids
    ]
    frames, waves = np.stack([d[0] for d in decoded]), np.stack([d[1] for d in decoded])
    img = ((frames[:, 4].astype(np.float32) / 255 - MEAN) / STD).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(store.array("clip_image"), img.astype(np.float16))
    np.testing.assert_array_equal(store.array("waveform"), np.clip(waves, -1, 1).astype(np.float16))
    audio_enc, visual_enc = a.encoders()
    with torch.no_grad():
        fa = audio_enc(torch.from_numpy(waves)).numpy()
    np.testing.assert_array_equal(
        store.array("audio"), fa.astype(np.float16)
    )  # one batch, same order: the same computation
