"""Log-mel front-end of the multi-label audio suite (Mulimani & Mesaros, CIL-ML-Audio).

Reference (`data/dataset_txt.MelData`, `lib/utils/config.py`; ../shared/reference/multilabel_audio.md
section 3): read the wav, resample to 32 kHz, pad with zeros or truncate to 10 s, then
`torchaudio.transforms.MelSpectrogram(n_fft=1024, win_length=1024, hop_length=320, f_min=20,
f_max=14000, n_mels=64)` with torchaudio's defaults (Hann window, center=True with reflect padding,
power 2, HTK mel scale, no filter-bank normalisation), transposed to time x mel, and the natural
log of (mel + float32 eps). A 10 s clip gives 1 + 320000 // 320 = 1001 frames x 64 mels.

Reading goes through soundfile (torchaudio.load needs torchcodec from torchaudio 2.9 on);
resampling is `torchaudio.functional.resample` (the same sinc interpolation torchaudio's
`Resample` transform applies), so the features match the reference's torchaudio pipeline. A
multi-channel file is averaged to mono (the reference's handling of stereo files is not stated;
AudioSet and FSD50K wavs are mono).

The embedded synthetic dataset uses the same front-end with shorter clips (see
datasets/adapters/synth_tags.py); `LogMelConfig.seconds` is the only field it changes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from datasets.media import read_samples

EPS = float(torch.finfo(torch.float32).eps)


@dataclass(frozen=True)
class LogMelConfig:
    sample_rate: int = 32000
    seconds: float = 10.0
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 320
    n_mels: int = 64
    f_min: float = 20.0
    f_max: float = 14000.0
    version: int = 1  # bump when the computation changes its output

    @property
    def samples(self) -> int:
        return int(round(self.seconds * self.sample_rate))

    @property
    def frames(self) -> int:
        """center=True: one frame per hop plus one."""
        return 1 + self.samples // self.hop_length

    @property
    def shape(self) -> tuple[int, int]:
        return (self.frames, self.n_mels)

    def to_json(self) -> dict:
        return {
            **asdict(self),
            "mel_scale": "htk",
            "norm": None,
            "power": 2.0,
            "center": True,
            "pad_mode": "reflect",
            "window": "hann",
            "log": "natural log(mel + float32 eps)",
            "layout": "time x mel",
        }


class LogMel(torch.nn.Module):
    """(B, samples) float waveforms -> (B, frames, n_mels) natural-log mel power."""

    def __init__(self, cfg: LogMelConfig = LogMelConfig()):
        super().__init__()
        import torchaudio

        self.cfg = cfg
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate,
            n_fft=cfg.n_fft,
            win_length=cfg.win_length,
            hop_length=cfg.hop_length,
            f_min=cfg.f_min,
            f_max=cfg.f_max,
            n_mels=cfg.n_mels,
            power=2.0,
            center=True,
            pad_mode="reflect",
            norm=None,
            mel_scale="htk",
        )

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = self.mel(wave.float())  # (B, n_mels, frames)
        return torch.log(spec + EPS).transpose(-1, -2).contiguous()


def pad_or_truncate(wave: np.ndarray, n: int) -> np.ndarray:
    return wave[:n] if len(wave) >= n else np.pad(wave, (0, n - len(wave)))


def load_wave(path: Path, cfg: LogMelConfig, where: str = "") -> np.ndarray:
    """Mono float32 waveform of exactly `cfg.samples` samples at `cfg.sample_rate`.

    Any unreadable input raises a DatasetError naming the file (and `where`, e.g. the phase
    file and line that listed it) and the fix.
    """
    data, rate = read_samples(
        path,
        "replace it with a good copy (or point --audio-root at the folder that holds it), "
        "or set skip_bad: true in the dataset's dataset.yaml to skip it",
        where,
    )
    mono = data.mean(axis=1)
    if rate != cfg.sample_rate:
        import torchaudio.functional as AF

        mono = AF.resample(torch.from_numpy(np.ascontiguousarray(mono)), int(rate), cfg.sample_rate).numpy()
    return np.ascontiguousarray(pad_or_truncate(mono, cfg.samples), dtype=np.float32)


@torch.no_grad()
def logmel_of_waves(waves: np.ndarray, front: LogMel, device="cpu") -> torch.Tensor:
    """(B, samples) -> (B, frames, n_mels) float32 on the CPU."""
    front = front.to(device)
    return front(torch.as_tensor(waves, device=device)).cpu()
