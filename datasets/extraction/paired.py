"""Frozen-encoder features for paired image + audio datasets (ImageNet-ESC, miniARIC, paired folders).

The AV-CIL family (fine-tuning, LwF, iCaRL, SS-IL, AFC, AV-CIL, CIGN on features) reads the views
`audio` (Da,) and `visual` (T, P, Dv). A paired dataset's raw store (`datasets.adapters.paired_folder`) holds
CLIP-normalised images and, in its clip bank, waveforms; this command computes the two feature
views once, with the encoders of the AV-CIL setting on the audio side and CLIP on the image side:

    python -m datasets.extraction.paired --dataset imagenet_esc19 --audio-ckpt pretrained.pth \\
        --clip-ckpt ViT-B-16.pt --trust-pickle [--data-root data] [--batch 32] [--device auto] [--force]
        [--random-encoders [--tiny-encoders]] [--audio-rate 16000] [--fbank-norm none|audioset]

Per image row (the raw store's rows, table unchanged):
  audio   the image's canonical clip (`AudioPairing(raw).eval_clip_rows`, the pairing every method
          evaluates with) from the clip bank, float16 -> float32, resampled to `--audio-rate`
          (16 kHz, AudioMAE's pretraining rate; 11430 reproduces the AV-CIL video extraction exactly)
          -> the AV-CIL audio front end and encoder of `datasets.extraction.videos` (kaldi fbank 1024 x 128,
          `--fbank-norm`, AudioMAE ViT-B/16 AS-2M, mean of the 512 patch tokens then fc_norm)
          -> (768,). Each distinct clip is encoded once (many images share a clip in ImageNet-ESC)
          and its vector written to every image row paired with it.
  visual  the stored image (3, 224, 224), already CLIP's eval transform -> CLIP ViT-B/16 image
          tower (open_clip `ViT-B-16-quickgelu` loaded from the OpenAI TorchScript `ViT-B-16.pt`)
          -> the 196 patch tokens after the last transformer block AND the final LayerNorm
          `ln_post` (open_clip's `output_tokens`), before the projection `proj`; CLS token
          dropped -> (1, 196, 768): T = 1 frame, P = 14 x 14 patches row-major.
          Why after ln_post: it matches the video side of the AV-CIL setting (VideoMAE's
          last_hidden_state, after its final LayerNorm) and tames CLIP's residual stream, which
          carries a few channels two orders of magnitude larger than the rest; why before `proj`:
          the AV-CIL network reads 768-d tokens and `proj` is trained only for the CLS token.

Output: `<data_root>/cache/store/<name>-features-<hash>` (hash over the raw store's fingerprint,
the encoder configs, the checkpoint sha256s, the audio rate, fbank normalisation and version). Its
table equals the raw store's; besides `audio` and `visual` it exposes every raw view (the image view,
`audio_clip`, `waveform` for a self-paired store) as *linked* views (`datasets.store`: the manifest
names the raw store's arrays, nothing is copied), and copies the meta MCIL-style methods read
(`audio_bank` rewritten to resolve from the new location, `pairing`, `sample_rate`, `clip_samples`,
`image_size`, `image_mean`, `image_std`, `prompt_template`, `class_prompt_names`), so one store
serves every method. Written with StoreWriter in row batches: an interrupted run resumes from the
last written batch when the same command is run again; nothing half-written is ever published.

Adapters find it with `datasets.paired_stores.features_store_path(adapter, data_root, raw)` (see its
docstring). Weights come only from the given local files, read by `datasets.weights`: the AudioMAE
`pretrained.pth` with torch.load(weights_only=True) (`datasets.encoders.audiomae`), the CLIP TorchScript
file through `torch.jit.load` (`datasets.encoders.clip`; a TorchScript archive, never unpickled as Python
objects); `--random-encoders` uses random weights instead (debugging only; the store is marked pretrained=false).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from datasets.cli import run_command
from datasets.encoders.audiomae import AudioMAEConfig, AudioMAEEncoder, fbank, load_audiomae_checkpoint
from datasets.encoders.clip import CLIP_MODEL, ClipConfig, build_clip, load_openai_clip
from datasets.errors import ConfigError, DatasetError, WeightsError
from datasets.extraction.common import (
    AUDIO_PIPELINE,
    TINY_AUDIO,
    add_common_options,
    check_audio_options,
    check_values,
    extraction_parser,
    resolve_precision,
    versions,
)
from datasets.io import config_hash, pick_device
from datasets.paired_stores import (
    FEATURE_VIEWS,
    STORE_INFIX,
    image_view,
    raw_store_of,
    store_dir,
)
from datasets.pairing import AudioPairing
from datasets.store import FeatureStore, StoreWriter, ViewSpec
from datasets.weights import checkpoint_record

log = logging.getLogger(__name__)

FEATURES_VERSION = 1  # bump whenever the extraction changes the features
AUDIOMAE_RATE = 16000
# Raw-store meta that the methods reading raw views need, copied as is (audio_bank is rewritten).
RAW_META_KEYS = (
    "pairing",
    "sample_rate",
    "clip_samples",
    "image_size",
    "image_mean",
    "image_std",
    "prompt_template",
    "class_prompt_names",
)


# ----------------------------------------------------------------------------- encoders


class PairedEncoders:
    """AudioMAE (bank clips) + CLIP image tower (stored images) on one device."""

    def __init__(
        self,
        audio_cfg: AudioMAEConfig,
        clip_cfg: ClipConfig,
        device: torch.device,
        precision: str,
        audio_rate: int,
        fbank_norm: str,
        audio_ckpt: Path | None = None,
        clip_ckpt: Path | None = None,
        seed: int = 0,
    ):
        self.audio_cfg, self.clip_cfg, self.device, self.precision = audio_cfg, clip_cfg, device, precision
        self.audio_rate, self.fbank_norm = int(audio_rate), fbank_norm
        self.audio = AudioMAEEncoder(audio_cfg, seed=seed)
        if audio_ckpt is not None:
            load_audiomae_checkpoint(self.audio, audio_ckpt)
        clip = build_clip(clip_cfg, seed=seed + 1)
        if clip_ckpt is not None:
            load_openai_clip(clip, clip_ckpt)
        self.visual = clip.visual  # the text tower is only needed to check the checkpoint
        self.visual.output_tokens = True
        del clip
        self.audio.to(device).eval()
        self.visual.to(device).eval()
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    def fbanks(self, waves: np.ndarray, rate: int) -> np.ndarray:
        """Bank waveforms (B, L) at `rate` -> (B, frames, mels) float32 fbanks, on the CPU (device-independent)."""
        from datasets.media import mix_resample

        out = []
        with torch.inference_mode():
            for w in np.asarray(waves, dtype=np.float32):
                w = mix_resample(w, int(rate), self.audio_rate)
                out.append(
                    fbank(w, self.audio_rate, self.fbank_norm, self.audio_cfg.frames, self.audio_cfg.mels).numpy()
                )
        return np.stack(out)

    def _autocast(self):
        return torch.autocast(
            device_type=self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None
        )

    @torch.inference_mode()
    def encode_audio(self, fbanks: np.ndarray) -> np.ndarray:
        """(B, frames, mels) -> (B, Da) float32."""
        x = torch.from_numpy(np.ascontiguousarray(fbanks)).to(self.device)
        with self._autocast():
            return self.audio(x).float().cpu().numpy()

    @torch.inference_mode()
    def encode_visual(self, images: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) CLIP-normalised -> (B, 1, P, Dv) float32 patch tokens (after ln_post, before proj, no CLS)."""
        x = images.to(self.device, dtype=torch.float32)
        with self._autocast():
            _, tokens = self.visual(x)
        return tokens.float().cpu().numpy()[:, None]


# ----------------------------------------------------------------------------- extraction


def _ckpt_record(path: Path | None) -> dict | None:
    if path is None:
        return None
    record = checkpoint_record(Path(path))
    return {**record, "sha256_prefix": record["sha256"][:16]}


def _resolve_adapter(dataset):
    if isinstance(dataset, str):
        from datasets import get_adapter

        return get_adapter(dataset)
    return dataset


def extract_paired_features(
    dataset,
    data_root: Path = Path("data"),
    audio_ckpt: Path | None = None,
    clip_ckpt: Path | None = None,
    *,
    trust_pickle: bool = False,
    random_encoders: bool = False,
    tiny_encoders: bool = False,
    batch: int = 32,
    device: str = "auto",
    precision: str = "auto",
    audio_rate: int = AUDIOMAE_RATE,
    fbank_norm: str = "none",
    force: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> FeatureStore:
    """Write (or find) the features store of the paired dataset `dataset` (a registered name or an adapter).

    See the module docstring. Returns the features store. `tiny_encoders` (tests and debugging)
    shrinks both encoders and needs `random_encoders`.
    """
    from tqdm import tqdm

    data_root = Path(data_root)
    check_audio_options(batch, audio_rate, fbank_norm)
    if random_encoders and (audio_ckpt is not None or clip_ckpt is not None):
        raise ConfigError(
            "--random-encoders and --audio-ckpt/--clip-ckpt exclude each other: give the checkpoints, or neither"
        )
    if not random_encoders and (audio_ckpt is None or clip_ckpt is None):
        raise ConfigError(
            "refusing to extract without pretrained encoders: pass --audio-ckpt (AudioMAE ViT-B AS-2M pretrained.pth, "
            "from the AudioMAE repository) and --clip-ckpt (OpenAI's ViT-B-16.pt TorchScript file). Nothing is "
            "downloaded. --random-encoders extracts with random weights instead (debugging only: the store is marked "
            "pretrained=false)"
        )
    if tiny_encoders and not random_encoders:
        raise ConfigError(
            "--tiny-encoders is for tests and needs --random-encoders (no checkpoint fits the reduced encoders)"
        )
    if audio_ckpt is not None and not Path(audio_ckpt).is_file():
        raise WeightsError(
            f"{audio_ckpt}: AudioMAE checkpoint not found; pass the path of the downloaded pretrained.pth"
        )
    if clip_ckpt is not None and not Path(clip_ckpt).is_file():
        raise WeightsError(f"{clip_ckpt}: CLIP checkpoint not found; pass the path of OpenAI's ViT-B-16.pt")
    if audio_ckpt is not None and not trust_pickle:
        raise ConfigError(
            f"refusing to read {audio_ckpt} without --trust-pickle: the AudioMAE checkpoint is a pickle-based torch "
            "file. It is read with torch.load(weights_only=True) (tensors and argparse.Namespace only), as "
            "datasets.extraction.videos does; only use the file from a trusted source (the AudioMAE authors' "
            "release), then pass --trust-pickle"
        )

    adapter = _resolve_adapter(dataset)
    status = adapter.availability(data_root)
    if not status.present:
        raise DatasetError(status.message)
    raw = raw_store_of(adapter.open(data_root, progress=progress))
    img_view = image_view(raw)
    pairing = AudioPairing(raw)
    bank = pairing.bank
    n = len(raw)
    clips = np.asarray(pairing.eval_clip_rows(np.arange(n)), dtype=np.int64)
    bank_rate = int(bank.meta.get("sample_rate") or raw.meta.get("sample_rate") or 44100)
    size = int(raw.views[img_view].shape[-1])

    acfg = TINY_AUDIO if tiny_encoders else AudioMAEConfig()
    ccfg = ClipConfig.tiny(size) if tiny_encoders else ClipConfig()
    if size != ccfg.image_size:
        raise DatasetError(
            f"{raw.path}: images are {size} x {size} px but the CLIP ViT-B/16 tower takes {ccfg.image_size}; "
            f"rebuild the raw store with image_size {ccfg.image_size}"
        )
    dev = pick_device(device)
    prec = resolve_precision(dev, precision)
    ckpts = {"audio": _ckpt_record(audio_ckpt), "visual": _ckpt_record(clip_ckpt)}
    t, p = ccfg.grid
    views = [ViewSpec("audio", (acfg.dim,)), ViewSpec("visual", (t, p, ccfg.width))]
    pooling = {
        "audio": "mean of the AudioMAE patch tokens (CLS excluded), then fc_norm (as datasets.extraction.videos)",
        "visual": "none: CLIP patch tokens after the last block and ln_post, before proj; CLS token dropped",
    }
    grid = {
        "T": t,
        "P": p,
        "token_order": "row-major patch grid (token = row * W + col)",
        "frames": "1 (the still image)",
    }
    key_spec = {
        "raw": raw.fingerprint,
        "image_view": img_view,
        "encoder_configs": {"audio": acfg.to_json(), "visual": ccfg.to_json()},
        "checkpoints": {k: None if v is None else v["sha256"] for k, v in ckpts.items()},
        "audio_rate": int(audio_rate),
        "fbank_norm": fbank_norm,
        "pooling": pooling,
        "grid": grid,
        "precision": prec,
        "version": FEATURES_VERSION,
        "seed": seed if random_encoders else None,
    }
    key = config_hash(key_spec)
    final = store_dir(data_root) / f"{adapter.name}{STORE_INFIX}{key}"
    if (final / "manifest.json").is_file() and not force:
        log.info(
            "%s: features already extracted with these settings at %s; nothing to do (--force extracts again)",
            adapter.title,
            final,
        )
        return FeatureStore(final)

    meta = {
        "dataset": adapter.name,
        "title": getattr(adapter, "title", adapter.name),
        "source": "paired_features",
        "features_of": Path(os.path.relpath(raw.path.resolve(), final.resolve())).as_posix(),
        "raw_store": raw.path.name,
        "raw_fingerprint": raw.fingerprint,
        "pretrained": not random_encoders,
        "encoders": {
            "audio": "AudioMAE ViT-B/16 AS-2M pretrained.pth"
            if not random_encoders
            else f"AudioMAE ViT architecture{' (tiny)' if tiny_encoders else ''}, RANDOM weights (seed {seed})",
            "visual": f"CLIP ViT-B/16 image tower (OpenAI ViT-B-16.pt, open_clip {CLIP_MODEL})"
            if not random_encoders
            else f"CLIP ViT image tower{' (tiny)' if tiny_encoders else ''}, RANDOM weights (seed {seed + 1})",
        },
        "encoder_configs": {"audio": acfg.to_json(), "visual": ccfg.to_json()},
        "checkpoints": ckpts,
        "audio_rate": int(audio_rate),
        "fbank_norm": fbank_norm,
        "audio_pipeline": {
            "clip": "the image's canonical bank clip (AudioPairing.eval_clip_rows: seed 0, epoch 0)",
            "decode": f"bank waveform (float16, {bank_rate} Hz) to float32, scipy resample_poly to audio_rate",
            **{k: v for k, v in AUDIO_PIPELINE.items() if k != "decode"},
        },
        "visual_pipeline": {
            "input": f"the raw store's `{img_view}` view as stored (CLIP eval transform: bicubic resize, centre crop, "
            "CLIP mean/std)",
            "output": "open_clip VisionTransformer output_tokens: ln_post(last block)[:, 1:], no proj",
        },
        "pooling": pooling,
        "visual_grid": grid,
        "precision": prec,
        "features_version": FEATURES_VERSION,
        "distinct_clips": int(len(np.unique(clips))),
    }
    if random_encoders:
        meta["random_seed"] = seed
    for k in RAW_META_KEYS:
        if k in raw.meta:
            meta[k] = raw.meta[k]
    if "audio_bank" in raw.meta:  # AudioPairing resolves it against the store's parent directory
        bank_name = raw.meta["audio_bank"]
        meta["audio_bank"] = (
            bank_name
            if bank_name == "self"
            else Path(os.path.relpath((raw.path.parent / bank_name).resolve(), final.parent.resolve())).as_posix()
        )
    meta["raw_meta"] = {k: v for k, v in raw.meta.items() if k not in meta}
    links = {name: (raw, name) for name in raw.views if name not in FEATURE_VIEWS}

    writer = StoreWriter(final, raw.table(), views, meta, str(raw.path), links=links)
    log.info(
        "%s: %d images, %d distinct clips from %s, audio %d -> %d Hz, fbank norm %s, %s %s, batch %d -> %s",
        adapter.title,
        n,
        meta["distinct_clips"],
        bank.path.name,
        bank_rate,
        audio_rate,
        fbank_norm,
        dev,
        prec,
        batch,
        final,
    )
    encoders = PairedEncoders(acfg, ccfg, dev, prec, audio_rate, fbank_norm, audio_ckpt, clip_ckpt, seed)

    # Audio: the distinct clips in order of first use, in fixed chunks of `batch`, so a resumed run
    # encodes exactly the batches an uninterrupted one does; vectors of clips whose rows are already
    # written are taken back from the store instead of being encoded again.
    uniq, first = np.unique(clips, return_index=True)
    order = uniq[np.argsort(first, kind="stable")]
    chunk_of = {int(c): i // batch for i, c in enumerate(order)}
    cache: dict[int, np.ndarray] = {}
    written = writer.written("audio")
    for r in range(len(written)):
        cache.setdefault(int(clips[r]), np.array(written[r]))
    encoded = 0

    def audio_rows(rows: np.ndarray) -> np.ndarray:
        nonlocal encoded
        for chunk in sorted({chunk_of[int(c)] for c in rows if int(c) not in cache}):
            members = order[chunk * batch : (chunk + 1) * batch]
            waves = bank.gather("waveform", members, dtype=torch.float32).numpy()
            values = encoders.encode_audio(encoders.fbanks(waves, bank_rate))
            check_values("audio", values, [f"row {int(m)}" for m in members], prec)
            for c, v in zip(members.tolist(), values.astype(np.float16)):
                cache.setdefault(int(c), v)
            encoded += len(members)
        return np.stack([cache[int(c)] for c in rows])

    start = min(writer.filled.values())
    start -= start % batch  # batches stay aligned, so a resumed run computes the same batches
    t0 = time.time()
    bar = tqdm(total=n, initial=start, desc=f"{adapter.title}: features", unit="image", disable=not progress)
    try:
        for lo in range(start, n, batch):
            hi = min(n, lo + batch)
            out = {}
            if writer.filled["audio"] < hi:
                out["audio"] = audio_rows(clips[lo:hi])
            if writer.filled["visual"] < hi:
                images = raw.gather(img_view, np.arange(lo, hi), dtype=torch.float32)
                out["visual"] = encoders.encode_visual(images)
                check_values("visual", out["visual"], [f"row {r}" for r in range(lo, hi)], prec)
            for name, values in out.items():
                skip = writer.filled[name] - lo  # rows of this batch already written before an interruption
                writer.write(name, lo + skip, values[skip:])
            bar.update(hi - lo)
    finally:
        bar.close()
    writer.add_meta(
        device=str(dev),
        versions=versions(),
        extract_seconds_last_run=round(time.time() - t0, 1),
        clips_encoded_last_run=encoded,
        checkpoint_paths={
            "audio": None if audio_ckpt is None else str(Path(audio_ckpt).resolve()),
            "visual": None if clip_ckpt is None else str(Path(clip_ckpt).resolve()),
        },
    )
    store = writer.finalize()
    log.info(
        "%s: wrote %d rows (audio %s, visual %s) -> %s",
        adapter.title,
        len(store),
        store.views["audio"].shape,
        store.views["visual"].shape,
        final,
    )
    return store


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = extraction_parser("python -m datasets.extraction.paired", __doc__)
    p.add_argument(
        "--dataset", required=True, help="a registered paired dataset, e.g. imagenet_esc19, imagenet_esc27, mini_aric"
    )
    p.add_argument(
        "--paired-folder",
        default=None,
        metavar="PATH[=NAME]",
        help="register a user's paired image+audio folder first (as run_all.py --paired-folder), then extract it",
    )
    p.add_argument(
        "--clip-ckpt", type=Path, default=None, metavar="PATH", help="OpenAI CLIP ViT-B-16.pt (TorchScript, local file)"
    )
    add_common_options(
        p,
        store_help="the stores live under <data-root>/cache/store (default: data)",
        trust_help="required with --audio-ckpt: confirm the AudioMAE checkpoint (a pickle-based torch file) is from a "
        "trusted source",
        tiny_help="test/debug only, with --random-encoders: 2-layer reduced encoders",
        audio_rate=(
            AUDIOMAE_RATE,
            "audio rate before the fbank (default 16000, AudioMAE's; 11430 as the AV-CIL video extraction)",
        ),
        batch=(32, "images (and clips) per encoder batch (default 32)"),
        force_help="extract again even if a store with these settings exists",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        if args.paired_folder:
            from datasets.adapters.paired_folder import register_paired_folder

            path, _, name = args.paired_folder.partition("=")
            register_paired_folder(Path(path), name or None)
        extract_paired_features(
            args.dataset,
            args.data_root,
            args.audio_ckpt,
            args.clip_ckpt,
            trust_pickle=args.trust_pickle,
            random_encoders=args.random_encoders,
            tiny_encoders=args.tiny_encoders,
            batch=args.batch,
            device=args.device,
            precision=args.precision,
            audio_rate=args.audio_rate,
            fbank_norm=args.fbank_norm,
            force=args.force,
            seed=args.seed,
            progress=not args.no_progress,
        )

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
