"""Feature extraction from raw videos (datasets.extraction.videos, datasets.encoders.audiomae,
datasets.encoders.videomae).

Fixtures: the AV-CIL dict files of tests/datasets/test_avcil_features.py (3 classes, 21 vids) and one
tiny real MP4 per vid (H.264 + AAC, 2 s, 80 x 96 px, 10 fps), written with datasets.media.
Encoders run reduced (random weights, 2 layers, width 32, 64 px frames); checkpoint loading is
checked on fake state dicts with the real key layout.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import datasets
from datasets import media
from datasets.adapters import avcil_features as av
from datasets.base import SPLITS
from datasets.encoders.audiomae import (
    AUDIOSET_MEAN,
    AUDIOSET_STD,
    AudioMAEConfig,
    AudioMAEEncoder,
    fbank,
    load_audiomae_checkpoint,
    sincos_pos_embed,
)
from datasets.encoders.videomae import (
    VideoMAEEncoder,
    VideoMAESpec,
    load_videomae_weights,
    pixel_values,
    resize_crop,
    tokens_to_grid,
)
from datasets.errors import DatasetError, WeightsError
from datasets.extraction import videos as ex
from datasets.store import StoreWriter
from tests.datasets.test_avcil_features import make_source

T_TINY, P_TINY = ex.TINY_VIDEO.grid  # (8, 16)


def write_videos(videos: Path, vids: list[str]) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(32000) / 16000
    for i, v in enumerate(vids):
        frames = rng.integers(0, 255, size=(20, 80, 96, 3), dtype=np.uint8)
        audio = 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t) + 0.05 * rng.standard_normal(len(t))
        media.write_clip(videos / f"{v}.mp4", frames, 10, audio.astype(np.float32), 16000)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    fx = make_source(root / "src")
    vids = [v for s in SPLITS for c in sorted(fx["cid"][s]) for v in sorted(fx["cid"][s][c])]
    write_videos(root / "videos", vids)
    return {"root": root, "src": root / "src", "videos": root / "videos", "fx": fx, "vids": vids}


def extract(data_root: Path, raw: dict, **kw):
    opts = dict(
        videos=raw["videos"],
        dicts=raw["src"],
        trust_pickle=True,
        random_encoders=True,
        batch=4,
        workers=0,
        progress=False,
        audio_config=ex.TINY_AUDIO,
        video_config=ex.TINY_VIDEO,
    )
    opts.update(kw)
    return ex.extract_features("ave", data_root, **opts)


@pytest.fixture(scope="module")
def baseline(raw, tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    return root, extract(root, raw)


def arrays(store) -> dict:
    return {v: np.asarray(store.array(v)) for v in ("audio", "visual")}


# ----------------------------------------------------------------------------- pieces


def test_frame_indices_match_the_reference_formula():
    assert ex.frame_indices(100) == [0, 7, 13, 20, 27, 33, 40, 47, 53, 60, 67, 73, 80, 87, 93, 99]
    for n in range(8, 300):  # the reference: JPEG files numbered from 1: 1, 1 + int((i + 1) * n / 15 + 0.5), n
        ref = [1] + [1 + int((i + 1) * (n / 15) + 0.5) for i in range(14)] + [n]
        assert ex.frame_indices(n) == [r - 1 for r in ref]
    for n in range(1, 8):  # too short for the reference: clamped, still 16 monotone indices
        idx = ex.frame_indices(n)
        assert len(idx) == 16 and idx[0] == 0 and idx[-1] == n - 1 and idx == sorted(idx) and max(idx) < n


def test_prepared_clip_frames_follow_the_indices_and_fbank_shape(tmp_path):
    n = 25  # 2.5 s at 10 fps; frame k is uniform grey 8 * k
    frames = np.stack([np.full((64, 80, 3), 8 * k, dtype=np.uint8) for k in range(n)])
    audio = (0.2 * np.sin(2 * np.pi * 440 * np.arange(40000) / 16000)).astype(np.float32)
    media.write_clip(tmp_path / "c.mp4", frames, 10, audio, 16000, lossless=True)
    prep = ex._Prep(fps=10, audio_rate=11430, fbank_norm="none", size=64, frames=1024, mels=128, fix="fix it")
    fb, picked, reason = ex._prepare_clip(("c", str(tmp_path / "c.mp4"), prep))
    assert reason is None and fb.shape == (1024, 128) and fb.dtype == np.float32
    assert picked.shape == (16, 64, 64, 3) and picked.dtype == np.uint8
    levels = picked.reshape(16, -1).mean(axis=1) / 8
    np.testing.assert_allclose(levels, ex.frame_indices(n), atol=0.3)
    assert (fb[260:] == 0).all() and (fb[:240] != 0).any()  # ~2.5 s of 10 ms frames, then zero padding
    _, _, reason = ex._prepare_clip(("gone", None, ex._Prep(10, 11430, "none", 64, 1024, 128, "fix it", str(tmp_path))))
    assert reason == f"{tmp_path / 'gone.mp4'}: missing (no gone.<ext> in the videos folder); fix it"


def test_fbank_pad_crop_and_normalisation():
    rng = np.random.default_rng(0)
    long = rng.standard_normal(11430 * 12).astype(np.float32) * 0.1
    x = fbank(long, 11430)
    assert x.shape == (1024, 128) and x.dtype == torch.float32 and (x[-1] != 0).any()  # 12 s: cropped
    short = fbank(long[:11430], 11430)
    assert short.shape == (1024, 128) and (short[200:] == 0).all()  # 1 s: ~98 frames, zero-padded
    np.testing.assert_allclose(
        fbank(long, 11430, norm="audioset"), (x - AUDIOSET_MEAN) / (2 * AUDIOSET_STD), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(fbank(long + 0.5, 11430), x, atol=1e-3)  # the waveform mean is removed first
    with pytest.raises(ValueError, match="shorter than one 25 ms"):
        fbank(long[:100], 11430)


def test_audiomae_shapes_and_positional_table():
    full = AudioMAEConfig()
    assert full.grid == (64, 8) and full.grid[0] * full.grid[1] == 512
    table = sincos_pos_embed(768, 64, 8)
    assert table.shape == (513, 768) and (table[0] == 0).all()
    # first half encodes the frequency column, second half the time row (MAE convention)
    assert torch.equal(table[1 + 0 * 8 + 3, :384], table[1 + 5 * 8 + 3, :384])
    assert torch.equal(table[1 + 5 * 8 + 0, 384:], table[1 + 5 * 8 + 7, 384:])
    enc = AudioMAEEncoder(ex.TINY_AUDIO).eval()
    with torch.no_grad():
        out = enc(torch.randn(3, 1024, 128))
    assert out.shape == (3, 32)
    assert torch.equal(
        AudioMAEEncoder(ex.TINY_AUDIO).state_dict()["blocks.0.attn.qkv.weight"],
        enc.state_dict()["blocks.0.attn.qkv.weight"],
    )


def test_audiomae_equals_timm_vit_with_global_average_pool():
    """The in-house encoder is timm's ViT (which the AV-CIL code subclasses) with global_pool='avg' + fc_norm."""
    from timm.models.vision_transformer import VisionTransformer

    mine = AudioMAEEncoder(ex.TINY_AUDIO, seed=1).eval()
    with torch.no_grad():
        for p in mine.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # non-trivial norms and biases
    ref = VisionTransformer(
        img_size=(1024, 128),
        patch_size=16,
        in_chans=1,
        embed_dim=32,
        depth=2,
        num_heads=2,
        mlp_ratio=4,
        qkv_bias=True,
        global_pool="avg",
        fc_norm=True,
        num_classes=0,
    ).eval()
    ref.load_state_dict(mine.state_dict(), strict=True)  # same parameter names, nothing left over
    x = torch.randn(2, 1024, 128)
    with torch.no_grad():
        torch.testing.assert_close(mine(x), ref(x[:, None]), rtol=1e-5, atol=1e-5)


def fake_audiomae_checkpoint(path: Path, extra: dict | None = None, drop: str | None = None) -> dict:
    """An MAE-style checkpoint with the official key layout: encoder + norm + decoder + mask_token, no fc_norm."""
    cfg = ex.TINY_AUDIO
    sd = {
        k: torch.randn_like(v)
        for k, v in AudioMAEEncoder(cfg, seed=5).state_dict().items()
        if not k.startswith("fc_norm.")
    }
    sd.update(
        {
            "norm.weight": torch.ones(cfg.dim),
            "norm.bias": torch.zeros(cfg.dim),
            "mask_token": torch.zeros(1, 1, 16),
            "decoder_embed.weight": torch.zeros(16, cfg.dim),
            "decoder_pos_embed": torch.zeros(1, 513, 16),
            "decoder_blocks.0.attn.qkv.weight": torch.zeros(48, 16),
            "decoder_blocks.1.attn.qkv.weight": torch.zeros(48, 16),
            "decoder_norm.weight": torch.ones(16),
            "decoder_pred.weight": torch.zeros(256, 16),
        }
    )
    sd.update(extra or {})
    if drop:
        del sd[drop]
    torch.save(
        {"model": sd, "epoch": 32, "args": argparse.Namespace(model="mae_vit_base_patch16", norm_pix_loss=False)}, path
    )
    return sd


def test_audiomae_checkpoint_with_the_real_layout_is_accepted_and_logged(tmp_path, caplog):
    sd = fake_audiomae_checkpoint(tmp_path / "pretrained.pth")
    enc = AudioMAEEncoder(ex.TINY_AUDIO)
    with caplog.at_level(logging.INFO, logger="datasets.encoders.audiomae"):
        report = load_audiomae_checkpoint(enc, tmp_path / "pretrained.pth")
    out = caplog.text
    assert report["file"] == str(tmp_path / "pretrained.pth") and len(report["sha256"]) == 16 and report["loaded"] > 0
    assert report["missing"] == ["fc_norm.bias", "fc_norm.weight"]
    assert {"norm.weight", "norm.bias", "mask_token", "decoder_embed.weight"} <= set(report["unexpected"])
    assert (
        "missing keys (2" in out
        and "fc_norm.bias" in out
        and "decoder_blocks.*.attn.qkv.weight (x2)" in out
        and "mask_token" in out
    )
    own = enc.state_dict()
    for k in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.1.mlp.fc2.bias"):
        assert torch.equal(own[k], sd[k])
    assert torch.equal(own["fc_norm.weight"], torch.ones(32)) and torch.equal(own["fc_norm.bias"], torch.zeros(32))


def test_audiomae_checkpoint_with_other_keys_is_rejected(tmp_path):
    fake_audiomae_checkpoint(tmp_path / "extra.pth", extra={"blocks.0.attn.extra": torch.zeros(3)})
    with pytest.raises(WeightsError, match=r"unexpected \['blocks.0.attn.extra'\]"):
        load_audiomae_checkpoint(AudioMAEEncoder(ex.TINY_AUDIO), tmp_path / "extra.pth")
    fake_audiomae_checkpoint(tmp_path / "drop.pth", drop="blocks.1.mlp.fc1.weight")
    with pytest.raises(WeightsError, match=r"missing \['blocks.1.mlp.fc1.weight'\]"):
        load_audiomae_checkpoint(AudioMAEEncoder(ex.TINY_AUDIO), tmp_path / "drop.pth")
    with pytest.raises(WeightsError, match="does not fit.*shape mismatches"):
        load_audiomae_checkpoint(AudioMAEEncoder(AudioMAEConfig(dim=64, depth=2, heads=2)), tmp_path / "drop.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pth.*download it again"):
        load_audiomae_checkpoint(AudioMAEEncoder(ex.TINY_AUDIO), tmp_path / "junk.pth")


def test_videomae_preprocessing():
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (16, 80, 96, 3), dtype=np.uint8))
    out = resize_crop(frames, 64)
    assert out.shape == (16, 64, 64, 3) and out.dtype == torch.uint8
    assert torch.equal(
        resize_crop(frames[:, :64], 64), frames[:, :64, 16:80]
    )  # short side already 64: centre crop only
    flat = torch.full((2, 90, 120, 3), 77, dtype=torch.uint8)
    assert (resize_crop(flat, 64) == 77).all()  # 90x120 -> 64x85 -> crop
    mean = torch.tensor([0.485, 0.456, 0.406]) * 255
    px = pixel_values(mean.round().to(torch.uint8).view(1, 1, 1, 1, 3).expand(1, 2, 4, 4, 3))
    assert px.shape == (1, 2, 3, 4, 4) and px.abs().max() < 0.01


def test_videomae_preprocessing_matches_the_transformers_processor():
    """VideoMAEImageProcessor configured in code as videomae-base's (no network): same geometry, pixels within 1
    level."""
    from transformers import VideoMAEImageProcessor

    proc = VideoMAEImageProcessor(
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
    )
    rng = np.random.default_rng(1)
    for h, w in ((360, 640), (480, 270)):
        coarse = torch.from_numpy(rng.uniform(0, 255, (16, 3, h // 8, w // 8)).astype(np.float32))
        frames = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear").permute(0, 2, 3, 1)
        frames = (
            (frames + 20 * torch.randn_like(frames)).clamp(0, 255).round().to(torch.uint8)
        )  # smooth content + noise
        ref = proc([list(frames.numpy())], return_tensors="pt")["pixel_values"]
        mine = pixel_values(resize_crop(frames, 224)[None])
        levels = (ref - mine).abs() * torch.tensor([0.229, 0.224, 0.225]).view(1, 1, 3, 1, 1) * 255
        assert ref.shape == mine.shape == (1, 16, 3, 224, 224)
        assert levels.max() < 1.01 and levels.mean() < 0.3


def test_videomae_grid_is_t_major():
    spec = ex.TINY_VIDEO
    enc = VideoMAEEncoder(spec).eval()
    cfg = enc.model.config
    assert (cfg.num_frames, cfg.tubelet_size, cfg.use_mean_pooling, cfg.layer_norm_eps) == (16, 2, False, 1e-12)
    x = torch.randn(2, 16, 3, 64, 64)
    with torch.no_grad():
        grid = enc(x)
        hidden = enc.model(pixel_values=x).last_hidden_state
        assert grid.shape == (2, T_TINY, P_TINY, 32) and hidden.shape == (2, T_TINY * P_TINY, 32)
        assert torch.equal(grid[:, 3, 5], hidden[:, 3 * P_TINY + 5])
        # change frames 2-3 only (the second tubelet): only grid row t = 1 of the patch embeddings moves
        y = x.clone()
        y[:, 2:4] += 1
        diff = (
            (tokens_to_grid(enc.model.embeddings(y, None), spec) - tokens_to_grid(enc.model.embeddings(x, None), spec))
            .abs()
            .amax(dim=(0, 2, 3))
        )
    assert diff[1] > 0 and (diff[[0, 2, 3, 4, 5, 6, 7]] == 0).all()
    assert VideoMAESpec().grid == (8, 196)


def _pretraining_state_dict(legacy: bool) -> tuple[dict, dict]:
    """VideoMAEForPreTraining weights of the tiny spec; `legacy`: q_bias/v_bias as the published checkpoints store
    them."""
    from transformers import VideoMAEForPreTraining

    torch.manual_seed(3)
    cfg = ex.TINY_VIDEO.hf_config()
    (
        cfg.decoder_hidden_size,
        cfg.decoder_num_hidden_layers,
        cfg.decoder_num_attention_heads,
        cfg.decoder_intermediate_size,
    ) = 16, 1, 2, 32
    sd = {k: torch.randn_like(v) for k, v in VideoMAEForPreTraining(cfg).state_dict().items()}
    if legacy:
        for k in [k for k in sd if k.endswith("attention.attention.query.bias")]:
            sd[k.replace("query.bias", "q_bias")] = sd.pop(k)
            sd[k.replace("query.bias", "v_bias")] = sd.pop(k.replace("query", "value"))
            del sd[k.replace("query", "key")]
    return sd, cfg.to_dict()


def test_videomae_weights_from_a_legacy_snapshot_dir_and_a_state_dict_file(tmp_path, caplog):
    from safetensors.torch import save_file

    sd, cfg = _pretraining_state_dict(legacy=True)
    snap = tmp_path / "videomae-base"
    snap.mkdir()
    save_file(sd, str(snap / "model.safetensors"))
    (snap / "config.json").write_text(json.dumps(cfg, default=str))
    enc = VideoMAEEncoder(ex.TINY_VIDEO, seed=9)
    with caplog.at_level(logging.INFO, logger="datasets.encoders.videomae"):
        report = load_videomae_weights(enc, snap)
    out = caplog.text
    assert report["legacy_qv_bias"] and report["missing"] == [] and "legacy q_bias/v_bias converted" in out
    assert (
        all(k.startswith(("decoder.", "encoder_to_decoder.", "mask_token")) for k in report["unexpected"])
        and report["unexpected"]
    )
    own = enc.model.state_dict()
    p = "encoder.layer.1.attention.attention."
    assert torch.equal(own[p + "query.bias"], sd["videomae." + p + "q_bias"]) and torch.equal(
        own[p + "value.bias"], sd["videomae." + p + "v_bias"]
    )
    assert (own[p + "key.bias"] == 0).all() and torch.equal(own["layernorm.weight"], sd["videomae.layernorm.weight"])

    new, _ = _pretraining_state_dict(legacy=False)  # transformers 5 layout, one state-dict file
    torch.save({k[len("videomae.") :]: v for k, v in new.items() if k.startswith("videomae.")}, tmp_path / "w.pth")
    enc2 = VideoMAEEncoder(ex.TINY_VIDEO, seed=9)
    report = load_videomae_weights(enc2, tmp_path / "w.pth")
    assert (report["missing"], report["unexpected"], report["legacy_qv_bias"]) == ([], [], False)
    assert report["file"] == str(tmp_path / "w.pth") and report["loaded"] == len(enc2.model.state_dict())
    assert torch.equal(enc2.model.state_dict()[p + "key.bias"], new["videomae." + p + "key.bias"])

    torch.save({**new, "classifier.weight": torch.zeros(2, 32)}, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match=r"unexpected \['classifier.weight'\]"):
        load_videomae_weights(VideoMAEEncoder(ex.TINY_VIDEO), tmp_path / "extra.pth")
    (snap / "config.json").write_text(json.dumps({**cfg, "use_mean_pooling": True}, default=str))
    with pytest.raises(WeightsError, match="use_mean_pooling"):
        load_videomae_weights(VideoMAEEncoder(ex.TINY_VIDEO), snap)


# ----------------------------------------------------------------------------- extraction


def test_extracted_store_has_the_import_layout(raw, baseline, tmp_path):
    root, store = baseline
    assert store.path == av.store_path(root, "ave") == root / "imported" / "ave"
    assert store.views["audio"].shape == (32,) and store.views["visual"].shape == (T_TINY, P_TINY, 32)
    assert (
        av.main(
            [
                "import",
                "--src",
                str(raw["src"]),
                "--dataset",
                "ave",
                "--data-root",
                str(tmp_path),
                "--trust-pickle",
                "--no-progress",
            ]
        )
        == 0
    )
    imported = datasets.get_adapter("ave").open(tmp_path)
    assert store.ids == imported.ids == raw["vids"]
    assert np.array_equal(store.labels, imported.labels) and np.array_equal(store.splits, imported.splits)
    assert store.class_names == imported.class_names and store.dataset == imported.dataset == "ave"
    assert list(store.views) == list(imported.views) == ["audio", "visual"]
    assert {k: (v.dtype, len(v.shape)) for k, v in store.views.items()} == {
        k: (v.dtype, len(v.shape)) for k, v in imported.views.items()
    }
    assert datasets.get_adapter("ave").open(root).fingerprint == store.fingerprint  # training opens it like an import
    m = store.meta
    assert (
        m["source"] == "extracted"
        and m["pretrained"] is False
        and m["audio_rate"] == 11430
        and m["fbank_norm"] == "none"
    )
    assert (
        m["checkpoints"] == {"audio": None, "visual": None} and m["precision"] == "fp32" and m["excluded_clips"] == []
    )
    assert m["encoder_configs"] == {"audio": ex.TINY_AUDIO.to_json(), "visual": ex.TINY_VIDEO.to_json()}
    assert m["visual_grid"] == {"T": T_TINY, "P": P_TINY, "token_order": "t-major (token = t * P + p)"}
    assert (
        m["source_files"]["category_encode_dict.npy"]["sha256"]
        == imported.meta["source_files"]["category_encode_dict.npy"]["sha256"]
    )
    a = arrays(store)
    assert np.isfinite(a["audio"]).all() and a["audio"].std(axis=0).mean() > 0.01  # clips differ
    report = json.loads((root / "imported" / "ave.extract-report.json").read_text())
    assert report["excluded_count"] == 0 and report["extracted"] == 21
    assert sorted(p.name for p in (root / "imported").iterdir()) == [
        "ave",
        "ave.extract-report.json",
    ]  # no staging left


def test_interrupted_extraction_resumes_to_the_same_store(raw, baseline, tmp_path, monkeypatch):
    original, calls = StoreWriter.write, []

    def killed(self, view, start, values):
        calls.append((view, start))
        if len(calls) == 4:  # batch 0 audio + visual, batch 1 audio written; killed before batch 1 visual
            raise KeyboardInterrupt
        original(self, view, start, values)

    monkeypatch.setattr(StoreWriter, "write", killed)
    with pytest.raises(KeyboardInterrupt):
        extract(tmp_path, raw)
    final = tmp_path / "imported" / "ave"
    partial = tmp_path / "imported" / "ave.extract.partial"
    assert not final.exists() and json.loads((partial / "progress.json").read_text()) == {"audio": 8, "visual": 4}
    calls.clear()
    monkeypatch.setattr(
        StoreWriter,
        "write",
        lambda self, view, start, values: (calls.append((view, start)), original(self, view, start, values)),
    )
    store = extract(tmp_path, raw)
    assert calls[:2] == [("visual", 4), ("audio", 8)]  # continued after the last written rows
    base = arrays(baseline[1])
    for view, values in arrays(store).items():
        np.testing.assert_array_equal(values, base[view])
    assert store.ids == baseline[1].ids and not partial.exists()


def test_existing_store_is_kept_unless_forced(raw, baseline, tmp_path, monkeypatch):
    shutil.copytree(baseline[0] / "imported", tmp_path / "imported")
    monkeypatch.setattr(ex, "Encoders", lambda *a, **k: pytest.fail("re-extracted an identical store"))
    assert extract(tmp_path, raw).fingerprint == baseline[1].fingerprint  # same settings: nothing to do
    with pytest.raises(DatasetError, match="already exists.*--force"):
        extract(tmp_path, raw, fbank_norm="audioset")


def test_corrupt_or_missing_video_fails_naming_the_file(raw, tmp_path):
    videos = tmp_path / "videos"
    shutil.copytree(raw["videos"], videos)
    bad = videos / f"{raw['vids'][2]}.mp4"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(DatasetError, match=str(bad)) as e:
        extract(tmp_path / "data", raw, videos=videos)
    assert "--skip-bad" in str(e.value) and not (tmp_path / "data" / "imported" / "ave").exists()
    gone = videos / f"{raw['vids'][3]}.mp4"
    gone.unlink()
    with pytest.raises(DatasetError, match=f"{gone}: missing"):
        extract(tmp_path / "data", raw, videos=videos)


def test_skip_bad_excludes_the_clips_and_reports_them(raw, baseline, tmp_path):
    videos = tmp_path / "videos"
    shutil.copytree(raw["videos"], videos)
    corrupt, missing = raw["vids"][1], raw["vids"][4]  # train clips of classes 0 and 1
    (videos / f"{corrupt}.mp4").write_bytes(b"\x00not a video" * 300)
    (videos / f"{missing}.mp4").unlink()
    store = extract(tmp_path, raw, videos=videos, skip_bad=True, workers=2)
    assert store.ids == [v for v in raw["vids"] if v not in (corrupt, missing)]
    assert store.meta["excluded_clips"] == sorted([corrupt, missing])
    report = json.loads((tmp_path / "imported" / "ave.extract-report.json").read_text())
    assert report["excluded_count"] == 2 and report["extracted"] == 19 and set(report["excluded"]) == {corrupt, missing}
    assert (
        str(videos / f"{corrupt}.mp4") in report["excluded"][corrupt]["reason"]
        and report["excluded"][corrupt]["split"] == "train"
    )
    assert "missing" in report["excluded"][missing]["reason"]
    assert (
        not (tmp_path / "imported" / "ave.extract").exists()
        and not (tmp_path / "imported" / "ave.extract.partial").exists()
    )
    base, rows = arrays(baseline[1]), [baseline[1].ids.index(v) for v in store.ids]
    for view, values in arrays(store).items():  # decoding in 2 processes gives the same features
        np.testing.assert_allclose(values.astype(np.float32), base[view][rows].astype(np.float32), rtol=2e-3, atol=2e-3)


def test_refusals(raw, tmp_path, capsys):
    common = [
        "--dataset",
        "ave",
        "--data-root",
        str(tmp_path),
        "--videos",
        str(raw["videos"]),
        "--dicts",
        str(raw["src"]),
        "--no-progress",
    ]
    assert ex.main(common + ["--trust-pickle"]) == 2  # a ConfigError: an option is missing
    err = capsys.readouterr().err
    assert "without pretrained encoders" in err and "--audio-ckpt" in err and "--random-encoders" in err
    assert ex.main(common + ["--random-encoders"]) == 2
    assert "execute arbitrary code" in capsys.readouterr().err
    assert ex.main(common + ["--trust-pickle", "--random-encoders", "--audio-ckpt", str(tmp_path / "x.pth")]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert (
        ex.main(common + ["--trust-pickle", "--audio-ckpt", str(tmp_path / "x.pth"), "--visual-ckpt", str(tmp_path)])
        == 1
    )
    assert "x.pth: AudioMAE checkpoint not found" in capsys.readouterr().err
    assert (
        ex.main(
            common
            + ["--trust-pickle", "--tiny-encoders", "--audio-ckpt", str(tmp_path), "--visual-ckpt", str(tmp_path)]
        )
        == 2
    )
    assert "need --random-encoders" in capsys.readouterr().err
    assert ex.main(common + ["--trust-pickle", "--random-encoders", "--precision", "bf16", "--device", "cpu"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "imported").exists()


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        ex.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in (
        "--dataset",
        "--videos",
        "--dicts",
        "--data-root",
        "--audio-ckpt",
        "--visual-ckpt",
        "--trust-pickle",
        "--random-encoders",
        "--audio-rate",
        "--fbank-norm",
        "--batch",
        "--device",
        "--precision",
        "--workers",
        "--skip-bad",
        "--force",
        "--tiny-encoders",
    ):
        assert opt in out
