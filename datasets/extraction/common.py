"""What both extraction commands share: option checks, the AudioMAE audio pipeline record, precision,
the NaN / float16-range check of encoder outputs and the library versions recorded in a store's meta."""

from __future__ import annotations

import numpy as np
import torch

from datasets.adapters.avcil_features import F16_MAX
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
