"""Built-in light encoders: fixed random weights from a seed, no training, no download.

They let the default benchmark run end to end from raw media on any machine. They are
not pretrained models; what they preserve is the information in the input (spectral
envelope, pitch, colour, texture, local motion), which is enough for a procedurally
generated dataset whose classes are defined by such cues. Weights come from a
`torch.Generator` seeded with `seed`, so the same config always gives the same
features, and `config()` (JSON) is what identifies them in a store key.

AudioEncoder:  waveform (B, S) -> log-mel -> per-clip mean removal (gain invariance)
               -> random projection + GELU per frame -> mean & std over time
               -> random projection to `audio_dim` -> (B, audio_dim)
VisualEncoder: frames (B, F, 3, H, W) -> tubelets of 2 frames x 16 x 16 (as VideoMAE)
               -> random linear projection + GELU + LayerNorm without affine
               -> token grid (B, T=F/2, P=(H/16)(W/16), visual_dim)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchaudio


def _gaussian(shape, generator: torch.Generator, scale: float) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, dtype=torch.float32) * scale


class AudioEncoder(torch.nn.Module):
    """Log-mel front-end followed by a fixed random two-layer projection, pooled over time."""

    def __init__(
        self,
        audio_dim: int = 64,
        sample_rate: int = 16000,
        n_fft: int = 512,
        hop_length: int = 160,
        n_mels: int = 64,
        f_min: float = 30.0,
        f_max: float | None = None,
        hidden: int = 256,
        seed: int = 0,
    ):
        super().__init__()
        self.audio_dim, self.sample_rate, self.n_fft, self.hop_length = audio_dim, sample_rate, n_fft, hop_length
        self.n_mels, self.f_min, self.f_max, self.hidden, self.seed = (
            n_mels,
            f_min,
            f_max or sample_rate / 2,
            hidden,
            seed,
        )
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=n_fft,
            hop_length=hop_length,
            n_mels=n_mels,
            f_min=f_min,
            f_max=self.f_max,
            power=2.0,
        )
        g = torch.Generator().manual_seed(seed)
        # Log-mel values have a spread of a few nats; 1/sqrt(fan_in) keeps GELU in its curved range.
        self.register_buffer("w1", _gaussian((n_mels, hidden), g, 1.0 / math.sqrt(n_mels)))
        self.register_buffer("b1", _gaussian((hidden,), g, 0.5))
        self.register_buffer("w2", _gaussian((2 * hidden, audio_dim), g, 1.0 / math.sqrt(2 * hidden)))
        self.eval()

    def config(self) -> dict:
        return {
            "type": "random-logmel-projection",
            "audio_dim": self.audio_dim,
            "seed": self.seed,
            "front_end": {
                "kind": "log-mel",
                "sample_rate": self.sample_rate,
                "n_fft": self.n_fft,
                "hop_length": self.hop_length,
                "n_mels": self.n_mels,
                "f_min": self.f_min,
                "f_max": self.f_max,
                "log": "ln(x + 1e-6)",
                "norm": "per-clip mean removed",
            },
            "hidden": self.hidden,
            "pool": "mean+std over frames, then linear to audio_dim",
            "pretrained": False,
        }

    @torch.no_grad()
    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, S) float waveform -> (B, audio_dim)."""
        if wave.dim() == 1:
            wave = wave[None]
        logmel = torch.log(self.mel(wave.float()) + 1e-6)  # (B, n_mels, frames)
        logmel = logmel - logmel.mean(dim=(1, 2), keepdim=True)  # recording gain is a nuisance
        h = F.gelu(logmel.transpose(1, 2) @ self.w1 + self.b1)  # (B, frames, hidden)
        pooled = torch.cat([h.mean(dim=1), h.std(dim=1)], dim=1)
        return pooled @ self.w2


class VisualEncoder(torch.nn.Module):
    """VideoMAE-shaped token grid from a fixed random tubelet embedding."""

    # ImageNet statistics, as VideoMAE's preprocessing uses.
    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(self, visual_dim: int = 64, patch: int = 16, tubelet: int = 2, seed: int = 0):
        super().__init__()
        self.visual_dim, self.patch, self.tubelet, self.seed = visual_dim, patch, tubelet, seed
        fan_in = tubelet * 3 * patch * patch
        g = torch.Generator().manual_seed(seed + 1_000_003)  # never the audio stream of numbers
        # A gain of 2 over 1/sqrt(fan_in) makes flat and textured patches land in different GELU regimes.
        self.register_buffer("w", _gaussian((fan_in, visual_dim), g, 2.0 / math.sqrt(fan_in)))
        self.register_buffer("b", _gaussian((visual_dim,), g, 0.5))
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.STD).view(1, 1, 3, 1, 1))
        self.eval()

    def config(self) -> dict:
        return {
            "type": "random-tubelet-projection",
            "visual_dim": self.visual_dim,
            "seed": self.seed,
            "front_end": {"kind": "rgb/255, ImageNet mean/std", "patch": self.patch, "tubelet": self.tubelet},
            "activation": "gelu",
            "norm": "layernorm (unit, no affine)",
            "pretrained": False,
        }

    def grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Token grid shape (T, P, D) for clips of `frames` x `height` x `width`."""
        return frames // self.tubelet, (height // self.patch) * (width // self.patch), self.visual_dim

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, F, 3, H, W) uint8 or [0, 1] float -> (B, F/2, (H/16)(W/16), visual_dim).

        F must be a multiple of the tubelet length and H, W multiples of the patch size
        (resize/sample upstream); a silent crop would hide a preprocessing mistake.
        """
        if frames.dim() == 4:
            frames = frames[None]
        b, f, c, h, w = frames.shape
        p, k = self.patch, self.tubelet
        if c != 3 or f % k or h % p or w % p:
            raise ValueError(
                f"frames {tuple(frames.shape)}: need (B, F, 3, H, W) with F % {k} == 0 and H, W % {p} == 0"
            )
        x = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
        x = (x - self.mean) / self.std
        # (B, T, k, 3, H/p, p, W/p, p) -> (B, T, H/p, W/p, k, 3, p, p) -> (B, T, P, k*3*p*p)
        x = x.view(b, f // k, k, 3, h // p, p, w // p, p).permute(0, 1, 4, 6, 2, 3, 5, 7)
        x = x.reshape(b, f // k, (h // p) * (w // p), k * 3 * p * p)
        tokens = F.gelu(x @ self.w + self.b)
        return F.layer_norm(tokens, (self.visual_dim,))
