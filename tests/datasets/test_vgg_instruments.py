"""VGG-Instruments adapter on a tiny tree in the reference format (generated WAV + JPEG files)."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

import datasets
from datasets.adapters import vgg_instruments as V
from datasets.errors import DatasetError

RATE = 16000
TRAIN_PER_CLASS = 2  # val and test: 1 per class


def _write_clip(root, vid, seed, seconds=3.5, rate=RATE, size=(40, 30)):
    rng = np.random.default_rng(seed)
    sf.write(
        root / "audio" / f"{vid}.wav", (0.1 * rng.standard_normal((int(seconds * rate), 2))).astype(np.float32), rate
    )
    Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(
        root / "frames" / f"{vid}.jpg", quality=90
    )


def make_tree(data_root, malformed=True):
    """36 classes x (2 train, 1 val, 1 test) clips; malformed `-` lines in two files; a header in one."""
    root = data_root / "vgg_instruments"
    for d in ("metadata", "audio", "frames"):
        (root / d).mkdir(parents=True, exist_ok=True)
    n = 0
    for g, classes in enumerate(V.GROUPS):
        for split in ("train", "val", "test"):
            lines = ["id,class"] if (g, split) == (1, "val") else []
            for c in classes:
                for _ in range(TRAIN_PER_CLASS if split == "train" else 1):
                    vid = f"-x{n:04d}"  # real VGGSound ids may start with '-': only the bare '-' is malformed
                    name = c.replace("_", " ") if c == "bass_guitar" else c  # spaces are accepted
                    lines.append(f"{vid},{name}")
                    _write_clip(root, vid, n, seconds=1.0 if n == 5 else 3.5)  # clip 5 is short: tiled
                    n += 1
            if malformed and (g, split) in ((0, "train"), (2, "test")):
                lines.insert(3, f"-,{classes[0]}")
                lines.append(f"-,{classes[1]}")
            (root / "metadata" / V.metadata_name(g, split)).write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    data_root = tmp_path_factory.mktemp("vggi")
    make_tree(data_root)
    return data_root


@pytest.fixture(scope="module")
def built(tree):
    adapter = V.VGGInstruments(batch_size=32, workers=2)
    return adapter, adapter.open(tree, progress=False)


def test_registered_with_raw_views_only():
    a = datasets.registry()["vgg_instruments"]
    assert a.title == "VGG-Instruments" and a.suites == ("audio-visual",)
    assert a.views == ("spectrogram", "image")
    (p,) = a.protocols()
    assert p.name == "4x9" and p.classes_per_step == (9, 9, 9, 9) and p.memory == 0


def test_class_order_and_groups():
    assert len(V.CLASSES) == 36 and len(set(V.CLASSES)) == 36 and "djembe" not in V.CLASSES
    assert V.CLASSES[:9] == (
        "flute",
        "cello",
        "bass_guitar",
        "accordion",
        "tabla",
        "erhu",
        "cornet",
        "electronic_organ",
        "timbales",
    )
    assert V.CLASSES[9] == "acoustic_guitar" and V.CLASSES[17] == "zither"
    assert V.CLASSES[18] == "cymbal" and V.CLASSES[26] == "guiro"
    assert V.CLASSES[27] == "saxophone" and V.CLASSES[35] == "congas"


def test_missing_folder_gives_instructions(tmp_path):
    a = V.VGGInstruments()
    status = a.availability(tmp_path)
    assert not status.present
    for text in ("avctl_vgginstruments_group_", "audio", "frames", "stoneMo/CIGN", "--datasets vgg_instruments"):
        assert text in status.message
    with pytest.raises(DatasetError, match="not found"):
        a.open(tmp_path)
    (tmp_path / "vgg_instruments" / "metadata").mkdir(parents=True)
    status = a.availability(tmp_path)
    assert not status.present and "avctl_vgginstruments_group_0_train.txt" in status.message


def test_metadata_drops_malformed_ids_with_a_count(tree, caplog):
    a = V.VGGInstruments()
    with caplog.at_level(logging.WARNING, logger="datasets.adapters.vgg_instruments"):
        table, meta = a.read_metadata(tree)
    assert meta["dropped_malformed_total"] == 4
    assert meta["dropped_malformed"] == {V.metadata_name(0, "train"): 2, V.metadata_name(2, "test"): 2}
    assert "dropped 4 line(s) with the malformed id '-'" in caplog.text
    assert "-" not in table.ids and all(i.startswith("-x") for i in table.ids)
    assert len(table.ids) == 36 * (TRAIN_PER_CLASS + 2)
    # labels follow the reference order; each group file holds only its own 9 classes
    for split, per in (("train", TRAIN_PER_CLASS), ("val", 1), ("test", 1)):
        assert np.bincount(table.labels[table.splits == split], minlength=36).tolist() == [per] * 36
    assert table.labels[table.ids.index("-x0000")] == table.labels[table.ids.index("-x0001")] == 0  # flute
    assert table.labels[table.ids.index("-x0002")] == 1  # cello
    assert table.labels[table.ids.index("-x0004")] == 2  # bass guitar, written with a space


def test_group_membership_is_checked(tmp_path):
    make_tree(tmp_path, malformed=False)
    f = tmp_path / "vgg_instruments" / "metadata" / V.metadata_name(1, "test")
    f.write_text(f.read_text() + "zzz,flute\n")  # flute is a group-0 class
    with pytest.raises(DatasetError, match=r"group_1_test.txt:\d+: class 'flute' belongs to group 0"):
        V.VGGInstruments().read_metadata(tmp_path)
    f.write_text("a,b,c\n")
    with pytest.raises(DatasetError, match="expected `id,class_name`"):
        V.VGGInstruments().read_metadata(tmp_path)


def test_store_views_and_preprocessing(built, tree):
    adapter, store = built
    assert set(store.views) == {"spectrogram", "image"}
    assert store.views["spectrogram"].shape == (257, 200)  # 3 s at 16 kHz, nperseg 512, hop 238
    assert store.views["image"].shape == (3, 224, 224)
    assert store.views["spectrogram"].dtype == store.views["image"].dtype == "float16"
    assert store.path.parent == tree / "cache" / "store" and store.path.name.startswith("vgg_instruments-")
    assert store.meta["sample_rate"] == RATE and store.meta["dropped_malformed_total"] == 4
    assert store.class_names == list(V.CLASSES)
    # one clip recomputed by hand: centred 3 s window, scipy spectrogram, log(S + 1e-7)
    from scipy.signal import spectrogram

    vid = store.ids[3]
    data, rate = sf.read(tree / "vgg_instruments" / "audio" / f"{vid}.wav", dtype="float32", always_2d=True)
    wave = np.clip(data, -1, 1).mean(1)
    start = (len(wave) - 3 * RATE) // 2
    _, _, S = spectrogram(wave[start : start + 3 * RATE].astype(np.float64), RATE, nperseg=512, noverlap=274)
    np.testing.assert_allclose(store.array("spectrogram")[3].astype(np.float32), np.log(S + 1e-7), rtol=2e-3, atol=2e-2)
    # the short clip (1 s) is tiled to 3 s
    short = store.array("spectrogram")[store.ids.index("-x0005")]
    assert np.isfinite(short.astype(np.float32)).all()
    # images: ImageNet-normalised, the centre crop of a 40x30 frame resized to 299x224
    img = store.array("image")[0].astype(np.float32)
    assert -2.2 < img.min() and img.max() < 2.7
    with Image.open(tree / "vgg_instruments" / "frames" / f"{store.ids[0]}.jpg") as im:
        ref = (
            np.asarray(im.convert("RGB").resize((299, 224), Image.BICUBIC).crop((37, 0, 261, 224)), dtype=np.float32)
            / 255
        )
    ref = (ref - np.array(V.IMAGENET_MEAN)) / np.array(V.IMAGENET_STD)
    np.testing.assert_allclose(img, ref.transpose(2, 0, 1), atol=1e-2)
    # a second open is a cheap read of the same store
    assert adapter.open(tree, progress=False).path == store.path


def test_missing_media_is_a_clear_error_or_a_listed_skip(tmp_path, caplog):
    make_tree(tmp_path, malformed=False)
    root = tmp_path / "vgg_instruments"
    victim = "-x0001"  # flute has 2 train clips: skipping one keeps the class
    (root / "frames" / f"{victim}.jpg").unlink()
    with pytest.raises(DatasetError, match=rf"(?s)first: .*frames/{victim}\.jpg.*VGG_INSTRUMENTS_SKIP_BAD=1"):
        V.VGGInstruments(workers=1).open(tmp_path, progress=False)
    with caplog.at_level(logging.WARNING, logger="datasets.adapters.vgg_instruments"):
        a = V.VGGInstruments(skip_bad=True, workers=1, batch_size=64)
        table, _ = a.read_metadata(tmp_path)
        kept, skipped = a.check_media(tmp_path, table)
    assert skipped == [victim] and victim not in kept.ids and len(kept.ids) == len(table.ids) - 1
    assert "skipping 1 clip(s)" in caplog.text and f"{victim}.jpg" in caplog.text


def test_unreadable_media_names_the_file(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    with pytest.raises(DatasetError, match="bad.wav: not a readable audio file"):
        V.log_spectrogram(tmp_path / "bad.wav", RATE)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="bad.jpg: not a readable image"):
        V.load_image(tmp_path / "bad.jpg")


def test_other_rates_are_resampled_and_frame_counts_follow_scipy(tmp_path):
    assert [V.spectrogram_frames(r) for r in (16000, 22050, 44100)] == [200, 276, 554]
    sf.write(tmp_path / "a.wav", np.zeros(int(4 * 22050), dtype=np.float32), 22050)
    spec, resampled = V.log_spectrogram(tmp_path / "a.wav", RATE)
    assert resampled and spec.shape == (257, 200)
    spec, resampled = V.log_spectrogram(tmp_path / "a.wav", 22050)
    assert not resampled and spec.shape == (257, 276)


def test_interrupted_build_resumes(tmp_path, monkeypatch):
    make_tree(tmp_path, malformed=False)
    a = V.VGGInstruments(workers=1, batch_size=32)
    calls = {"n": 0}
    real = V._clip_job

    def flaky(job):
        calls["n"] += 1
        if calls["n"] == 40:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(V, "_clip_job", flaky)
    with pytest.raises(KeyboardInterrupt):
        a.open(tmp_path, progress=False)
    partial = list((tmp_path / "cache" / "store").glob("*.partial"))
    assert len(partial) == 1
    monkeypatch.setattr(V, "_clip_job", real)
    store = a.open(tmp_path, progress=False)
    assert len(store) == 36 * 4 and not list((tmp_path / "cache" / "store").glob("*.partial"))
    full = V.VGGInstruments(workers=1, batch_size=32)
    other = tmp_path / "again"
    shutil.copytree(tmp_path / "vgg_instruments", other / "vgg_instruments")
    np.testing.assert_array_equal(
        np.asarray(full.open(other, progress=False).array("image")), np.asarray(store.array("image"))
    )
