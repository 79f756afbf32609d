"""SynthAV: generation, raw-media I/O, light encoders, extraction into the feature store.

Uses a small config (4 classes, 5 clips each) so the file runs in seconds; the default
20-class config is only checked structurally (families, names, protocol).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

import datasets
from datasets import media
from datasets.adapters import synth_av as S
from datasets.base import SPLITS
from datasets.encoders.synthetic import AudioEncoder, VisualEncoder
from datasets.errors import DatasetError

SMALL = S.SynthConfig(num_classes=4, train=3, val=1, test=1, seed=7)
N_CLIPS = SMALL.num_classes * SMALL.per_class


def small(**kw) -> S.SynthAV:
    return S.SynthAV(SMALL, batch_size=4, **kw)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One generated + extracted small dataset, shared read-only by several tests."""
    root = tmp_path_factory.mktemp("synth")
    adapter = small(workers=2)
    return adapter, root, adapter.open(root, progress=False)


def arrays(store):
    return {v: np.asarray(store.array(v)) for v in ("audio", "visual")}


# ----------------------------------------------------------------------------- structure


@pytest.mark.parametrize("n", [4, 6, 12, 20])
def test_every_family_is_shared_by_exactly_two_classes(n):
    pairs = [(S.audio_family(c, n), S.visual_family(c, n)) for c in range(n)]
    assert len(set(pairs)) == n  # the pair identifies the class
    for fams in zip(*pairs):
        assert sorted(np.bincount(fams).tolist()) == [2] * (n // 2)
    for c in range(n):  # classes sharing a family get opposite cue signs
        partner_a = [d for d in range(n) if d != c and pairs[d][0] == pairs[c][0]][0]
        partner_v = [d for d in range(n) if d != c and pairs[d][1] == pairs[c][1]][0]
        assert S.cue_signs(c)[0] == -S.cue_signs(partner_a)[0]
        assert S.cue_signs(c)[1] == -S.cue_signs(partner_v)[1]


def test_default_adapter_names_prompts_protocol_registry():
    adapter = datasets.registry()["synth_av"]
    assert isinstance(adapter, S.SynthAV) and adapter.title == "SynthAV" and adapter.suites == ("audio-visual",)
    assert len(set(adapter.class_names)) == 20 and len(adapter.prompts) == 20
    assert all(isinstance(p, str) and len(p) > 20 for p in adapter.prompts)
    (spec,) = adapter.protocols()
    assert (spec.name, spec.classes_per_step, spec.memory) == ("5x4", (4, 4, 4, 4, 4), 120)
    assert adapter.availability(Path("/nonexistent")).present
    with pytest.raises(DatasetError):
        S.SynthConfig(num_classes=5)


# ----------------------------------------------------------------------------- media


def test_mp4_has_h264_video_and_aac_audio_and_decodes_to_expected_shapes(built):
    adapter, root, _ = built
    path = adapter.raw_dir(root) / "videos" / f"{adapter.clips()[0][0]}.mp4"
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name in ("h264", "mpeg4")
        assert c.streams.audio[0].codec_context.name == "aac"
        assert (c.streams.video[0].codec_context.width, c.streams.video[0].codec_context.height) == (64, 64)
    frames, wave = media.decode_video(path, num_frames=8, sample_rate=16000, duration=1.0)
    assert frames.shape == (8, 64, 64, 3) and frames.dtype == np.uint8
    assert wave.shape == (16000,) and wave.dtype == np.float32 and np.abs(wave).max() > 0
    frames, wave = media.decode_video(path, fps=4, size=(32, 48), sample_rate=8000, duration=1.5)
    assert frames.shape == (4, 32, 48, 3) and wave.shape == (12000,) and not wave[8000:].any()


def test_media_roundtrip_general(tmp_path):
    """Odd sizes, stereo, another rate, MPEG-4: frames come back in order, audio in place."""
    rng = np.random.default_rng(0)
    frames = np.repeat(np.arange(10, dtype=np.uint8)[:, None, None, None] * 25, 33 * 47 * 3).reshape(10, 33, 47, 3)
    t = np.arange(22050) / 22050
    tone = 0.4 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([tone, tone], axis=1) + 0.01 * rng.standard_normal((len(t), 2))
    media.write_clip(tmp_path / "s.mp4", frames, 10, stereo, 22050)
    info = media.probe(tmp_path / "s.mp4")
    assert (info.video_codec, info.audio_codec, info.channels, info.width, info.height) == ("h264", "aac", 2, 47, 33)
    got, wave = media.decode_video(tmp_path / "s.mp4", num_frames=10, sample_rate=16000, duration=1.0)
    assert np.abs(got[:, 16, 23, 0].astype(int) - frames[:, 0, 0, 0]).max() <= 3
    ref = 0.4 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    assert wave.shape == (16000,) and np.corrcoef(wave[1000:15000], ref[1000:15000])[0, 1] > 0.95
    media.write_clip(tmp_path / "m4.mp4", frames[:, :32, :46], 25, None, video_codec="mpeg4")
    assert media.probe(tmp_path / "m4.mp4").video_codec == "mpeg4"
    got, wave = media.decode_video(tmp_path / "m4.mp4", num_frames=5, audio="silence", duration=0.5)
    assert got.shape == (5, 32, 46, 3) and wave.shape == (8000,) and not wave.any()
    with pytest.raises(DatasetError, match="no audio stream"):
        media.decode_video(tmp_path / "m4.mp4", num_frames=5)
    sf.write(tmp_path / "a.wav", stereo, 22050)
    assert media.read_audio(tmp_path / "a.wav", 16000, duration=2.0).shape == (32000,)


def test_truncated_corrupt_or_missing_files_raise_naming_the_file(built, tmp_path):
    adapter, root, _ = built
    good = adapter.raw_dir(root) / "videos" / f"{adapter.clips()[0][0]}.mp4"
    data = good.read_bytes()
    (tmp_path / "trunc.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.mp4").write_bytes(b"\x00not a video" * 200)
    (tmp_path / "bad.wav").write_bytes(b"RIFF1234WAVE")
    for name in ("trunc.mp4", "junk.mp4", "missing.mp4"):
        with pytest.raises(DatasetError, match=name):
            media.decode_video(tmp_path / name, num_frames=8)
    with pytest.raises(DatasetError, match="bad.wav"):
        media.read_audio(tmp_path / "bad.wav")


def test_corrupt_clip_fails_extraction_and_missing_clip_is_regenerated(built, tmp_path):
    adapter, root, store = built
    mine = tmp_path / "root"
    shutil.copytree(adapter.raw_dir(root), adapter.raw_dir(mine))
    first = adapter.raw_dir(mine) / "videos" / f"{adapter.clips()[0][0]}.mp4"
    first.write_bytes(first.read_bytes()[:300])
    with pytest.raises(DatasetError, match=first.name) as err:
        adapter.open(mine, progress=False)
    assert "regenerated" in str(err.value)
    first.unlink()  # the fix the message gives: delete it, it comes back identical
    again = adapter.open(mine, progress=False)
    assert first.is_file()
    for v, arr in arrays(store).items():
        np.testing.assert_array_equal(np.asarray(again.array(v)), arr)


# ----------------------------------------------------------------------------- generation


def test_determinism_same_config_same_metadata_and_features(built, tmp_path):
    adapter, root, store = built
    other = small(workers=1)  # serial this time: the output must not depend on it
    store2 = other.open(tmp_path, progress=False)
    meta1 = (adapter.raw_dir(root) / "metadata.csv").read_text()
    assert (other.raw_dir(tmp_path) / "metadata.csv").read_text() == meta1
    assert store2.path.name == store.path.name and store2.ids == store.ids
    for v, arr in arrays(store).items():
        np.testing.assert_array_equal(np.asarray(store2.array(v)), arr)
    f1, w1 = S.synth_clip(1, 2, SMALL)
    f2, w2 = S.synth_clip(1, 2, SMALL)
    assert np.array_equal(f1, f2) and np.array_equal(w1, w2)
    f3, _ = S.synth_clip(1, 2, S.SynthConfig(num_classes=4, train=3, val=1, test=1, seed=8))
    assert not np.array_equal(f1, f3)


def test_layout_metadata_and_store_views(built):
    adapter, root, store = built
    raw = adapter.raw_dir(root)
    with open(raw / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "class_name", "split"] and len(rows) == N_CLIPS
    assert {r["split"] for r in rows} == set(SPLITS)
    assert all((raw / "videos" / f"{r['id']}.mp4").is_file() for r in rows)
    assert store.path.parent == root / "cache" / "store" and store.path.name.startswith("synth_av-")
    assert store.views["audio"].shape == (64,) and store.views["visual"].shape == (4, 16, 64)
    assert store.array("audio").dtype == np.float16 and store.array("visual").dtype == np.float16
    assert store.array("visual").shape == (N_CLIPS, 4, 16, 64)
    assert np.isfinite(store.array("audio")).all() and np.isfinite(store.array("visual")).all()
    assert store.dataset == "synth_av" and store.meta["pretrained"] is False
    assert store.meta["encoders"]["audio"]["type"] and "random" in store.meta["encoders"]["note"]
    assert store.class_names == adapter.class_names
    table = store.table()
    table.validate("store")
    assert [r["id"] for r in rows] == table.ids


def test_second_open_reads_the_store_without_regenerating(built, monkeypatch):
    adapter, root, store = built
    video = adapter.raw_dir(root) / "videos" / f"{adapter.clips()[0][0]}.mp4"
    stamps = (video.stat().st_mtime_ns, (store.path / "manifest.json").stat().st_mtime_ns)

    def boom(*a, **k):
        raise AssertionError("must not regenerate or re-extract")

    monkeypatch.setattr(S.SynthAV, "generate", boom)
    monkeypatch.setattr(S.SynthAV, "_extract", boom)
    again = adapter.open(root, progress=False)
    assert again.path == store.path
    assert stamps == (video.stat().st_mtime_ns, (store.path / "manifest.json").stat().st_mtime_ns)


def test_interrupted_generation_is_resumed_and_another_config_regenerates(built, tmp_path):
    adapter, root, _ = built
    raw = adapter.raw_dir(tmp_path)
    shutil.copytree(adapter.raw_dir(root), raw)
    # Simulate a crash mid-generation: no metadata yet, a clip missing, a temp file left.
    (raw / "metadata.csv").unlink()
    ids = [c[0] for c in adapter.clips()]
    (raw / "videos" / f"{ids[-1]}.mp4").unlink()
    (raw / "videos" / f".{ids[-1]}.mp4.123.tmp").write_bytes(b"partial")
    kept = raw / "videos" / f"{ids[0]}.mp4"
    before = kept.stat().st_mtime_ns
    table = adapter.generate(tmp_path, progress=False)
    assert table.ids == ids and (raw / "metadata.csv").is_file()
    assert (raw / "videos" / f"{ids[-1]}.mp4").is_file() and not list((raw / "videos").glob(".*.tmp"))
    assert kept.stat().st_mtime_ns == before  # finished clips are kept, not rewritten
    # A folder stamped with another generator config is never trusted.
    (raw / "generator.json").write_text(json.dumps({"seed": -1}))
    adapter.generate(tmp_path, progress=False)
    assert json.loads((raw / "generator.json").read_text()) == SMALL.to_json()
    assert (raw / "metadata.csv").read_text() == (adapter.raw_dir(root) / "metadata.csv").read_text()


def test_interrupted_extraction_resumes(built, tmp_path, monkeypatch):
    adapter, root, store = built
    shutil.copytree(adapter.raw_dir(root), adapter.raw_dir(tmp_path))  # reuse the clips
    calls = {"n": 0}
    real = S.SynthAV._encode

    def flaky(self, *a):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash")
        return real(self, *a)

    monkeypatch.setattr(S.SynthAV, "_encode", flaky)
    fresh = small(workers=1)
    with pytest.raises(KeyboardInterrupt):
        fresh.open(tmp_path, progress=False)
    partial = fresh.store_path(tmp_path).with_name(fresh.store_path(tmp_path).name + ".partial")
    assert json.loads((partial / "progress.json").read_text()) == {
        "audio": 8,
        "visual": 8,
        "clip_image": 8,
        "waveform": 8,
    }
    assert not fresh.store_path(tmp_path).exists()
    calls["n"] = -100  # no more failures
    resumed = fresh.open(tmp_path, progress=False)
    assert calls["n"] == -100 + (N_CLIPS - 8) // 4  # only the missing batches were computed
    assert not partial.exists()
    for v, arr in arrays(store).items():
        np.testing.assert_array_equal(np.asarray(resumed.array(v)), arr)


# ----------------------------------------------------------------------------- encoders


def test_encoders_deterministic_shapes_and_configs():
    g = torch.Generator().manual_seed(0)
    wave = torch.randn(3, 16000, generator=g) * 0.1
    frames = torch.randint(0, 256, (3, 8, 3, 64, 64), generator=g, dtype=torch.uint8)
    a1, a2, a3 = AudioEncoder(seed=0), AudioEncoder(seed=0), AudioEncoder(seed=1)
    v1, v2, v3 = VisualEncoder(seed=0), VisualEncoder(seed=0), VisualEncoder(seed=1)
    assert torch.equal(a1(wave), a2(wave)) and not torch.equal(a1(wave), a3(wave))
    assert torch.equal(v1(frames), v2(frames)) and not torch.equal(v1(frames), v3(frames))
    assert a1(wave).shape == (3, 64)
    tokens = v1(frames)
    assert tokens.shape == (3, 4, 16, 64) and v1.grid(8, 64, 64) == (4, 16, 64)
    assert torch.allclose(tokens.mean(-1), torch.zeros(3, 4, 16), atol=1e-5)  # unit LayerNorm
    torch.testing.assert_close(v1(frames[:1]), tokens[:1])  # batching does not change a clip
    torch.testing.assert_close(a1(wave[:1]), a1(wave)[:1])
    torch.testing.assert_close(a1(wave * 4), a1(wave), atol=1e-3, rtol=1e-3)  # gain invariant
    for enc in (a1, v1):
        cfg = enc.config()
        assert json.loads(json.dumps(cfg)) == cfg and cfg["seed"] == 0 and cfg["pretrained"] is False
    assert a1.config() != a3.config()
    with pytest.raises(ValueError):
        v1(frames[:, :7])
