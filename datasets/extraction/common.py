"""What both extraction commands share: their common options and checks, the AudioMAE audio pipeline record,
precision, the NaN / float16-range check of encoder outputs and the library versions recorded in a store's meta."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from datasets.adapters.avcil_features import F16_MAX
from datasets.cli import positive_int
from datasets.encoders.audiomae import FBANK_NORMS, AudioMAEConfig
from datasets.errors import ConfigError, DatasetError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Reduced AudioMAE for tests and debugging (`--tiny-encoders`, random weights only).
TINY_AUDIO = AudioMAEConfig(dim=32, depth=2, heads=2)

AUDIO_PIPELINE = {
    "decode": "PyAV (datasets.media.decode_video), channels averaged to mono, scipy resample_poly to audio_rate",
    "fbank": "torchaudio.compliance.kaldi.fbank(htk_compat=True, use_energy=False, window_type='hanning', "
    "num_mel_bins=128, dither=0.0, frame_shift=10) of the mean-subtracted waveform, zero-padded / cropped to "
    "1024 frames",
    "pool": "mean of the patch tokens (CLS excluded), then fc_norm",
}


def check_audio_options(batch: int, audio_rate: int, fbank_norm: str) -> None:
    """The AudioMAE front-end options every extraction command takes, checked up front."""
    if batch <= 0:
        raise ConfigError(f"--batch must be positive, got {batch}")
    if audio_rate <= 0:
        raise ConfigError(f"--audio-rate must be positive, got {audio_rate}")
    if fbank_norm not in FBANK_NORMS:
        raise ConfigError(f"--fbank-norm must be one of {FBANK_NORMS}, got {fbank_norm!r}")


def resolve_precision(device: torch.device, precision: str) -> str:
    """--precision on `device` -> fp32 | bf16 | fp16 (auto: bf16 autocast on CUDA, fp16 without bf16, fp32 on CPU)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
    if device.type != "cuda":
        if precision not in ("auto", "fp32"):
            raise ConfigError(f"--precision {precision} needs a CUDA device; on {device} extraction runs in fp32")
        return "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def check_values(name: str, values: np.ndarray, where: list[str], precision: str) -> None:
    """Encoder outputs of one batch (`where`: what each row is, e.g. "vid 'x'" or "row 5") must be finite and
    fit the float16 store."""
    finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if not finite.all():
        raise DatasetError(
            f"{where[int(np.argmin(finite))]}: the {name} encoder produced NaN/inf under {precision}; "
            "re-run with --precision fp32"
        )
    peak = float(np.abs(values).max(initial=0.0))
    if peak > F16_MAX:
        raise DatasetError(
            f"{name} features reach |x| = {peak:.4g}, beyond the float16 range of the store; check the checkpoint"
        )


def versions() -> dict:
    """The versions of the libraries that compute the features (recorded in the store's meta)."""
    import av
    import torchaudio

    out = {"torch": torch.__version__, "torchaudio": torchaudio.__version__, "av": av.__version__}
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover - pinned in requirements.txt
        pass
    return out


def extraction_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """An extraction command's parser: its description is the first paragraph of the module docstring."""
    return argparse.ArgumentParser(
        prog=prog,
        description=doc.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Interrupted extractions resume when the same command is run again.",
    )


def add_common_options(
    p: argparse.ArgumentParser,
    *,
    store_help: str,
    trust_help: str,
    tiny_help: str,
    audio_rate: tuple[int, str],
    batch: tuple[int, str],
    force_help: str,
) -> None:
    """The options both extraction commands take (AudioMAE audio encoder, device, precision, seed, progress);
    the arguments are what differs between them: help texts and defaults."""
    p.add_argument("--data-root", type=Path, default=Path("data"), help=store_help)
    p.add_argument(
        "--audio-ckpt", type=Path, default=None, metavar="PATH", help="AudioMAE ViT-B AS-2M pretrained.pth (local file)"
    )
    p.add_argument("--trust-pickle", action="store_true", help=trust_help)
    p.add_argument(
        "--random-encoders",
        action="store_true",
        help="no checkpoints: random encoder weights (debugging only; the store is marked pretrained=false)",
    )
    p.add_argument("--tiny-encoders", action="store_true", help=tiny_help)
    p.add_argument("--audio-rate", type=positive_int, default=audio_rate[0], metavar="HZ", help=audio_rate[1])
    p.add_argument(
        "--fbank-norm",
        choices=FBANK_NORMS,
        default="none",
        help="fbank normalisation: none (default, as AV-CIL) or audioset ((x + 4.2677) / (2 * 4.5690), as AudioMAE)",
    )
    p.add_argument("--batch", type=positive_int, default=batch[0], metavar="N", help=batch[1])
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: bf16 autocast on CUDA (fp16 where bf16 is unsupported), fp32 on CPU",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (--random-encoders only)")
    p.add_argument("--force", action="store_true", help=force_help)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
