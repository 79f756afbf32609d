"""Frozen-encoder features for paired image + audio stores (datasets.extraction.paired), linked store views
(datasets.store), `available_views` in the grid, and the MCIL raw views of the video extraction.

Fixtures: a tiny raw paired store + clip bank written directly with StoreWriter (3 classes, 32 px
CLIP-normalised images, 0.5 s clips at 44.1 kHz, "class" pairing with several images per clip),
behind a minimal adapter that finds its features store the way the paired adapters do.
Encoders run reduced with random weights (`tiny_encoders`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from datasets import paired_stores as ps
from datasets.base import Availability, DatasetAdapter, ProtocolSpec, SampleTable
from datasets.encoders import clip as clip_enc
from datasets.errors import ConfigError, DatasetError, WeightsError
from datasets.extraction import paired as pf
from datasets.media import CLIP_MEAN, CLIP_STD
from datasets.pairing import AudioPairing
from datasets.store import FeatureStore, StoreWriter, ViewSpec

S, RATE, CLIP = 32, 44100, 22050
CLASSES = ["dog_bark", "rain", "siren"]
BATCH = 8


def write_raw(data_root: Path) -> Path:
    """Bank (train 2 + test 1 clips per class) and image store (train 4, val 2, test 2 per class); returns the image
    store path."""
    rng = np.random.default_rng(0)
    folder = data_root / "cache" / "store"
    ids, labels, splits = [], [], []
    for c in range(len(CLASSES)):
        for split, k in (("train", 2), ("test", 1)):
            for i in range(k):
                ids.append(f"{CLASSES[c]}/{split}/clip{i}.wav")
                labels.append(c)
                splits.append(split)
    bank_table = SampleTable(ids, np.array(labels), np.array(splits), list(CLASSES))
    t = np.arange(CLIP) / RATE
    waves = np.stack(
        [0.4 * np.sin(2 * np.pi * (150 + 90 * i) * t) + 0.05 * rng.standard_normal(CLIP) for i in range(len(ids))]
    )
    w = StoreWriter(
        folder / "tiny_paired-bank-0",
        bank_table,
        [ViewSpec("waveform", (CLIP,))],
        {"dataset": "tiny_paired:audio_bank", "sample_rate": RATE, "clip_samples": CLIP},
        "bank",
        required_splits=("train", "test"),
    )
    w.write("waveform", 0, waves)
    w.finalize()
    ids, labels, splits = [], [], []
    for c in range(len(CLASSES)):
        for split, k in (("train", 4), ("val", 2), ("test", 2)):
            for i in range(k):
                ids.append(f"{CLASSES[c]}/{split}/img{i}.jpg")
                labels.append(c)
                splits.append(split)
    table = SampleTable(ids, np.array(labels), np.array(splits), list(CLASSES))
    images = rng.standard_normal((len(ids), 3, S, S)).astype(np.float32)
    meta = {
        "dataset": "tiny_paired",
        "audio_bank": "tiny_paired-bank-0",
        "pairing": "class",
        "sample_rate": RATE,
        "clip_samples": CLIP,
        "image_size": S,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "prompt_template": "a photo of a {}.",
        "class_prompt_names": [c.replace("_", " ") for c in CLASSES],
        "skipped": [],
        "pretrained": None,
    }
    w = StoreWriter(folder / "tiny_paired-0", table, [ViewSpec(ps.RAW_IMAGE_VIEW, (3, S, S))], meta, "images")
    w.write(ps.RAW_IMAGE_VIEW, 0, images)
    return w.finalize().path


class TinyPaired(DatasetAdapter):
    """A paired adapter over a prebuilt raw store; `open` / `available_views` as the paired adapters do it."""

    name, title, suites = "tiny_paired", "Tiny paired", ("audio-visual",)
    modalities = ("audio", "visual", "audio-visual")
    views = (ps.RAW_IMAGE_VIEW, "waveform")

    def availability(self, data_root):
        return Availability(True, "present")

    def open(self, data_root, progress=True):
        raw = FeatureStore(Path(data_root) / "cache" / "store" / "tiny_paired-0")
        features = ps.features_store_path(self, data_root, raw)
        return FeatureStore(features) if features else raw

    def available_views(self, data_root):
        return self.views + (ps.FEATURE_VIEWS if ps.features_store_path(self, data_root) else ())

    def missing_views_hint(self, data_root, lacking):
        return f"extract them with `{ps.extraction_command(self, data_root)}`" if lacking <= {"audio", "visual"} else ""

    def protocols(self):
        return [ProtocolSpec("1x3", (1, 1, 1), 6)]


def run(data_root: Path, **kw):
    opts = dict(random_encoders=True, tiny_encoders=True, batch=BATCH, device="cpu", progress=False)
    opts.update(kw)
    return pf.extract_paired_features(TinyPaired(), data_root, **opts)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """One extraction, counting the clips the audio encoder sees."""
    root = tmp_path_factory.mktemp("pf")
    raw_path = write_raw(root)
    seen = []
    original = pf.PairedEncoders.encode_audio

    def counting(self, fbanks):
        seen.append(len(fbanks))
        return original(self, fbanks)

    pf.PairedEncoders.encode_audio = counting
    try:
        store = run(root)
    finally:
        pf.PairedEncoders.encode_audio = original
    return {"root": root, "raw": FeatureStore(raw_path), "store": store, "audio_calls": seen}


def arrays(store) -> dict:
    return {v: np.asarray(store.array(v)) for v in ("audio", "visual")}


# ----------------------------------------------------------------------------- extraction


def test_features_store_shapes_links_and_meta(extracted):
    store, raw = extracted["store"], extracted["raw"]
    assert store.path.parent == extracted["root"] / "cache" / "store" and store.path.name.startswith(
        "tiny_paired-features-"
    )
    assert store.views["audio"].shape == (pf.TINY_AUDIO.dim,) and store.views["visual"].shape == (1, (S // 16) ** 2, 64)
    assert store.table().digest() == raw.table().digest()
    assert set(store.views) == {"audio", "visual", ps.RAW_IMAGE_VIEW}
    assert store.links == {ps.RAW_IMAGE_VIEW: (raw.path, ps.RAW_IMAGE_VIEW)}
    assert not (store.path / "views" / f"{ps.RAW_IMAGE_VIEW}.npy").exists()  # linked, not copied
    np.testing.assert_array_equal(store.array(ps.RAW_IMAGE_VIEW), raw.array(ps.RAW_IMAGE_VIEW))
    torch.testing.assert_close(store.gather(ps.RAW_IMAGE_VIEW, [5, 1]), raw.gather(ps.RAW_IMAGE_VIEW, [5, 1]))
    for k in pf.RAW_META_KEYS:
        assert store.meta[k] == raw.meta[k]
    meta = store.meta
    assert meta["pretrained"] is False and meta["checkpoints"] == {"audio": None, "visual": None}
    assert (
        meta["raw_fingerprint"] == raw.fingerprint
        and meta["visual_grid"]["T"] == 1
        and "ln_post" in meta["pooling"]["visual"]
    )
    # the copied audio_bank still resolves: the features store pairs exactly as the raw store
    a, b = AudioPairing(store), AudioPairing(raw)
    assert a.bank.path.resolve() == b.bank.path.resolve()
    np.testing.assert_array_equal(a.eval_clip_rows(np.arange(len(raw))), b.eval_clip_rows(np.arange(len(raw))))
    assert np.isfinite(arrays(store)["visual"]).all() and np.abs(arrays(store)["audio"]).max() > 0


def test_each_distinct_clip_is_encoded_once_and_shared_by_its_images(extracted):
    store, raw = extracted["store"], extracted["raw"]
    clips = AudioPairing(raw).eval_clip_rows(np.arange(len(raw)))
    distinct = len(np.unique(clips))
    assert distinct < len(raw)  # several images per clip
    assert sum(extracted["audio_calls"]) == distinct == store.meta["distinct_clips"]
    audio = arrays(store)["audio"]
    for c in np.unique(clips):
        rows = np.flatnonzero(clips == c)
        assert (audio[rows] == audio[rows[0]]).all()
    assert len({audio[np.flatnonzero(clips == c)[0]].tobytes() for c in np.unique(clips)}) == distinct


def test_features_match_a_direct_encoding(extracted):
    store, raw = extracted["store"], extracted["raw"]
    enc = pf.PairedEncoders(
        pf.TINY_AUDIO, clip_enc.ClipConfig.tiny(S), torch.device("cpu"), "fp32", 16000, "none", seed=0
    )
    pairing = AudioPairing(raw)
    clip = int(pairing.eval_clip_rows(np.array([7]))[0])
    wave = pairing.bank.gather("waveform", [clip], dtype=torch.float32).numpy()
    expected = enc.encode_audio(enc.fbanks(wave, RATE))[0]
    np.testing.assert_allclose(store.array("audio")[7].astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    images = raw.gather(ps.RAW_IMAGE_VIEW, [3, 4], dtype=torch.float32)
    with torch.no_grad():  # the patch tokens: ln_post over the last block's output, CLS dropped, no projection
        v = enc.visual
        x = v.ln_post(v.transformer(v._embeds(images)))[:, 1:]
    np.testing.assert_allclose(store.array("visual")[3:5, 0].astype(np.float32), x.numpy(), rtol=2e-3, atol=2e-3)


def test_adapter_finds_the_store_and_a_second_run_reuses_it(extracted, monkeypatch):
    root, store = extracted["root"], extracted["store"]
    adapter = TinyPaired()
    assert ps.features_store_path(adapter, root) == store.path
    assert ps.features_store_path(adapter, root, extracted["raw"]) == store.path
    assert adapter.open(root).path == store.path  # open() now returns the features store
    assert set(adapter.available_views(root)) == {ps.RAW_IMAGE_VIEW, "waveform", "audio", "visual"}
    monkeypatch.setattr(pf.PairedEncoders, "encode_audio", lambda *a: pytest.fail("encoded again"))
    assert (
        run(root).path == store.path
    )  # opened through the features store: traced back to the raw store, nothing to do

    # a newer `<name>-<hash>` raw store (the folder was edited): without `raw`, its features are looked for, and do
    # not exist
    newer = _plain(root / "cache" / "store" / "tiny_paired-0123456789abcdef", _table())
    try:
        assert ps.features_store_path(adapter, root) is None
        assert ps.features_store_path(adapter, root, extracted["raw"]) == store.path
    finally:
        shutil.rmtree(newer.path)


def test_interrupted_extraction_resumes_to_the_same_store(extracted, tmp_path, monkeypatch):
    write_raw(tmp_path)
    calls = []

    def failing(self, images):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return original(self, images)

    original = pf.PairedEncoders.encode_visual
    monkeypatch.setattr(pf.PairedEncoders, "encode_visual", failing)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path)
    name = extracted["store"].path.name
    partial = tmp_path / "cache" / "store" / f"{name}.partial"
    assert json.loads((partial / "progress.json").read_text()) == {"audio": BATCH, "visual": BATCH}
    assert not (tmp_path / "cache" / "store" / name).exists()
    monkeypatch.setattr(pf.PairedEncoders, "encode_visual", original)
    resumed = run(tmp_path)
    assert resumed.path.name == name and not partial.exists()
    for view, values in arrays(extracted["store"]).items():
        np.testing.assert_array_equal(arrays(resumed)[view], values)


def test_argument_errors():
    with pytest.raises(ConfigError, match="exclude each other"):
        pf.extract_paired_features(TinyPaired(), "x", clip_ckpt=Path("c.pt"), random_encoders=True)
    with pytest.raises(ConfigError, match="refusing to extract without pretrained encoders"):
        pf.extract_paired_features(TinyPaired(), "x")
    with pytest.raises(ConfigError, match="needs --random-encoders"):
        pf.extract_paired_features(TinyPaired(), "x", tiny_encoders=True, audio_ckpt=Path("a"), clip_ckpt=Path("c"))


def test_extraction_command_names_the_dataset():
    cmd = ps.extraction_command(TinyPaired(), "data")
    assert (
        cmd.startswith("python -m datasets.extraction.paired --dataset tiny_paired --audio-ckpt ")
        and "--clip-ckpt" in cmd
    )


# ----------------------------------------------------------------------------- grid


def test_grid_skips_feature_methods_until_the_features_exist(tmp_path, monkeypatch):
    import benchmarks.run.grid as grid_module
    import benchmarks.suites as suites

    write_raw(tmp_path)
    adapter = TinyPaired()
    monkeypatch.setattr(grid_module, "dataset_registry", lambda: {adapter.name: adapter})
    suite = suites.get_suite("audio-visual")
    grid = grid_module.build_grid(suite, tmp_path, methods=["fine_tuning"], seeds=(0,))
    cells, missing, skipped = grid.cells, grid.missing, grid.not_applicable
    assert cells == [] and not missing
    assert any(
        "fine_tuning (audio) does not run on Tiny paired" in s
        and "python -m datasets.extraction.paired --dataset tiny_paired" in s
        for s in skipped
    ), skipped
    run(tmp_path)
    grid = grid_module.build_grid(suite, tmp_path, methods=["fine_tuning"], seeds=(0,))
    cells, skipped = grid.cells, grid.not_applicable
    assert {c.modality for c in cells} == {"audio", "visual", "audio-visual"} and not skipped


# ----------------------------------------------------------------------------- linked views


def _table(ids=("a", "b", "c", "d", "e", "f")):
    return SampleTable(list(ids), np.arange(len(ids)) % 2, ["train", "train", "val", "val", "test", "test"], ["x", "y"])


def _plain(path: Path, table: SampleTable, value: float = 1.0) -> FeatureStore:
    w = StoreWriter(path, table, [ViewSpec("raw", (2,), "float32")], {"dataset": "t"}, "t")
    w.write("raw", 0, value * np.arange(12, dtype=np.float32).reshape(6, 2))
    return w.finalize()


def test_linked_views_read_the_target_and_resolve_chains(tmp_path):
    raw = _plain(tmp_path / "raw", _table())
    plain_fp = raw.fingerprint
    w = StoreWriter(
        tmp_path / "mid", _table(), [ViewSpec("feat", (1,))], {"dataset": "t"}, "t", links={"raw": (raw.path, "raw")}
    )
    w.write("feat", 0, np.ones((6, 1)))
    mid = w.finalize()
    manifest = json.loads((mid.path / "manifest.json").read_text())
    assert manifest["views"]["raw"]["link"]["store"] == "../raw" and manifest["views"]["raw"]["shape"] == [2]
    np.testing.assert_array_equal(mid.array("raw"), raw.array("raw"))
    # a link to a linked view points at the array's owner; a store without links keeps its fingerprint
    w = StoreWriter(tmp_path / "sub" / "top", _table(), [], {"dataset": "t"}, "t", links={"r": (mid, "raw")})
    top = w.finalize()
    assert top.links["r"] == (raw.path, "raw")
    np.testing.assert_array_equal(top.gather("r", [4, 0]).numpy(), raw.array("raw")[[4, 0]])
    assert _plain(tmp_path / "raw2", _table()).fingerprint == plain_fp


def test_linked_view_table_mismatch_and_missing_target_are_clear_errors(tmp_path):
    raw = _plain(tmp_path / "raw", _table())
    with pytest.raises(DatasetError, match="different sample tables"):
        StoreWriter(
            tmp_path / "bad",
            _table(("a", "b", "c", "d", "e", "z")),
            [],
            {"dataset": "t"},
            "t",
            links={"raw": (raw.path, "raw")},
        )
    derived = StoreWriter(
        tmp_path / "der", _table(), [], {"dataset": "t"}, "t", links={"raw": (raw.path, "raw")}
    ).finalize()
    _plain(tmp_path / "raw", _table(("a", "b", "c", "d", "e", "z")))  # the raw store is rebuilt over another table
    with pytest.raises(DatasetError) as e:
        FeatureStore(derived.path)
    assert (
        str(derived.path) in str(e.value)
        and str(tmp_path / "raw") in str(e.value)
        and "derive it again" in str(e.value)
    )
    shutil.rmtree(tmp_path / "raw")
    with pytest.raises(DatasetError, match="missing or incomplete"):
        FeatureStore(derived.path)


# ----------------------------------------------------------------------------- CLIP checkpoint


class _Holder(nn.Module):
    pass


def save_fake_openai(path: Path, sd: dict) -> Path:
    """A TorchScript archive whose state dict has exactly `sd`'s names (as OpenAI's ViT-B-16.pt), fp16 floats."""
    root = _Holder()
    for key, value in sd.items():
        *parents, leaf = key.split(".")
        module = root
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, _Holder())
            module = getattr(module, part)
        module.register_buffer(leaf, value.half() if value.is_floating_point() else value)
    torch.jit.save(torch.jit.script(root), str(path))
    return path


def openai_like(cfg: clip_enc.ClipConfig, seed: int) -> dict:
    sd = dict(clip_enc.build_clip(cfg, seed=seed).state_dict())
    sd.update(
        input_resolution=torch.tensor(cfg.image_size),
        context_length=torch.tensor(cfg.context_length),
        vocab_size=torch.tensor(cfg.vocab_size),
    )
    return sd


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # the fake checkpoint is TorchScript, as OpenAI's
def test_fake_openai_torchscript_checkpoint_loads_strictly(tmp_path):
    cfg = clip_enc.ClipConfig.tiny(S)
    sd = openai_like(cfg, seed=5)
    path = save_fake_openai(tmp_path / "ViT-B-16.pt", sd)
    model = clip_enc.build_clip(cfg, seed=0)
    clip_enc.load_openai_clip(model, path)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, sd[key].half().float() if sd[key].is_floating_point() else sd[key], msg=key)
    with pytest.raises(WeightsError, match=r"unexpected \['visual\.extra_head\.weight'\]"):
        extra = {**sd, "visual.extra_head.weight": torch.ones(2)}
        clip_enc.load_openai_clip(clip_enc.build_clip(cfg), save_fake_openai(tmp_path / "extra.pt", extra))
    without = {k: v for k, v in sd.items() if k != "visual.ln_post.bias"}
    with pytest.raises(WeightsError, match=r"missing \['visual\.ln_post\.bias'\]"):
        clip_enc.load_openai_clip(clip_enc.build_clip(cfg), save_fake_openai(tmp_path / "missing.pt", without))
    wrong = {**sd, "visual.proj": torch.zeros(3, 3)}
    with pytest.raises(WeightsError, match="does not fit"):
        clip_enc.load_openai_clip(clip_enc.build_clip(cfg), save_fake_openai(tmp_path / "shape.pt", wrong))
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(WeightsError, match="not a TorchScript archive"):
        clip_enc.load_openai_clip(clip_enc.build_clip(cfg), tmp_path / "junk.pt")


# ----------------------------------------------------------------------------- --mcil-views
# (datasets.extraction.videos)


def _grey_videos(videos: Path, vids: list[str]) -> None:
    """2 s clips, 20 frames at 10 fps, frame k uniform grey 10 * k (lossless), a 2 s tone at 16 kHz."""
    from datasets import media

    t = np.arange(32000) / 16000
    frames = np.stack([np.full((64, 80, 3), 10 * k, dtype=np.uint8) for k in range(20)])
    for i, v in enumerate(vids):
        audio = (0.3 * np.sin(2 * np.pi * (300 + 50 * i) * t)).astype(np.float32)
        media.write_clip(videos / f"{v}.mp4", frames, 10, audio, 16000, lossless=True)


@pytest.fixture(scope="module")
def mcil_extracted(tmp_path_factory):
    from datasets.base import SPLITS
    from datasets.extraction import videos as ex
    from tests.datasets.test_avcil_features import make_source

    root = tmp_path_factory.mktemp("mcil")
    fx = make_source(root / "src")
    vids = [v for s in SPLITS for c in sorted(fx["cid"][s]) for v in sorted(fx["cid"][s][c])]
    _grey_videos(root / "videos", vids)
    opts = dict(
        videos=root / "videos",
        dicts=root / "src",
        trust_pickle=True,
        random_encoders=True,
        batch=8,
        workers=0,
        progress=False,
        audio_config=ex.TINY_AUDIO,
        video_config=ex.TINY_VIDEO,
    )
    with_views = ex.extract_features("ave", root / "with", mcil_views=True, **opts)
    without = ex.extract_features("ave", root / "without", **opts)
    return with_views, without


def test_mcil_views_shapes_meta_and_unchanged_features(mcil_extracted):
    from datasets.extraction import videos as ex

    store, plain = mcil_extracted
    assert store.views["clip_image"] == ViewSpec("clip_image", (3, 224, 224)) and store.views["waveform"] == ViewSpec(
        "waveform", (220500,)
    )
    assert set(plain.views) == {"audio", "visual"}
    for view in ("audio", "visual"):  # the flag adds views, it does not change the features
        np.testing.assert_array_equal(np.asarray(store.array(view)), np.asarray(plain.array(view)))
    meta = store.meta
    assert (meta["audio_bank"], meta["pairing"], meta["sample_rate"], meta["clip_samples"], meta["image_size"]) == (
        "self",
        "self",
        44100,
        220500,
        224,
    )
    assert (
        meta["image_mean"] == list(CLIP_MEAN)
        and meta["image_std"] == list(CLIP_STD)
        and meta["prompt_template"] == "a video of {}."
    )
    assert meta["class_prompt_names"] == [c.replace("_", " ") for c in store.class_names]
    assert ex.MCIL_SAMPLES * 2 + 3 * 224 * 224 * 2 == 742056  # the documented ~0.74 MB per clip
    pairing = AudioPairing(store)  # each row is its own clip
    assert pairing.bank is store and pairing.eval_clip_rows(np.arange(4)).tolist() == [0, 1, 2, 3]


def test_mcil_image_is_the_middle_frame_and_waveform_the_centred_clip(mcil_extracted):
    store, _ = mcil_extracted
    mean, std = np.asarray(CLIP_MEAN)[:, None, None], np.asarray(CLIP_STD)[:, None, None]
    pixels = np.asarray(store.array("clip_image")[:3], dtype=np.float32) * std + mean
    np.testing.assert_allclose(pixels * 255, 100, atol=2.5)  # 20 frames decoded at 10 fps: frame 10, grey 100
    wave = np.asarray(store.array("waveform")[0], dtype=np.float32)
    pad = (220500 - 88200) // 2  # 2 s at 44.1 kHz, centred in 5 s
    assert not wave[: pad - 2000].any() and not wave[-(pad - 2000) :].any()
    body = wave[pad + 4000 : pad + 84000]
    spectrum = np.abs(np.fft.rfft(body))
    freq = np.fft.rfftfreq(len(body), 1 / 44100)[np.argmax(spectrum)]
    assert abs(freq - 300) < 3 and 0.2 < np.abs(body).max() <= 1.0


def test_mcil_image_resize_and_centre_crop():
    from datasets.extraction import videos as ex

    frame = np.zeros((100, 300, 3), dtype=np.uint8)
    frame[:, 120:180] = 255  # resized to 224 x 672: columns 268.8..403.2, i.e. 44.8..179.2 of the centre crop 224..448
    x = ex.mcil_image(frame) * np.asarray(CLIP_STD)[:, None, None] + np.asarray(CLIP_MEAN)[:, None, None]
    assert x.shape == (3, 224, 224)
    assert x[:, :, 52:172].min() > 0.97 and x[:, :, :37].max() < 0.03 and x[:, :, 187:].max() < 0.03
    np.testing.assert_allclose(x[:, :, :112], x[:, :, ::-1][:, :, :112], atol=0.02)  # centred: symmetric
    tall = ex.mcil_image(np.full((500, 224, 3), 128, dtype=np.uint8))
    assert tall.shape == (3, 224, 224)
