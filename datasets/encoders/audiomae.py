"""AudioMAE ViT-B/16 audio encoder (written here, on plain torch) and its kaldi-fbank front end.

Used by `datasets.extraction.videos` to compute the AV-CIL audio feature from a clip's waveform:

    waveform (mono, `sample_rate`)  -> subtract its mean
      -> kaldi fbank: 128 mel bins, 25 ms hanning window, 10 ms shift, htk_compat, no energy, no dither
      -> zero-pad / crop to 1024 frames -> optional AudioSet normalisation ((x + 4.27) / (2 * 4.57))
      -> (1, 1024, 128) -> 16x16 patches, stride 16 -> 64 x 8 = 512 tokens (time-major)
      -> + CLS token, + fixed 2-D sin-cos positional embedding (MAE convention)
      -> 12 pre-norm transformer blocks -> mean of the 512 patch tokens (CLS excluded) -> fc_norm
      -> one 768-d vector per clip

The official AudioMAE `pretrained.pth` (ViT-B, AS-2M, self-supervised) is a masked-autoencoder
checkpoint: it holds the encoder (same parameter names as here), the encoder's final `norm`, the
decoder and `mask_token`, but no `fc_norm`. The AV-CIL code loads it with `strict=False`, so its
`fc_norm` keeps the default LayerNorm initialisation (weight 1, bias 0) and `norm`/decoder are
ignored. `load_audiomae_checkpoint` does the same, but logs the missing and unexpected key lists
and refuses anything beyond exactly that pattern (datasets.weights reads and checks the file).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datasets.weights import check_keys, load_report, read_state_dict, summarise_keys

log = logging.getLogger(__name__)

AUDIOSET_MEAN = -4.2677393  # AST/AudioMAE AudioSet fbank statistics (the AV-CIL code does not normalise)
AUDIOSET_STD = 4.5689974
FBANK_NORMS = ("none", "audioset")
FBANK_OPTIONS = {"htk_compat": True, "use_energy": False, "window_type": "hanning", "dither": 0.0, "frame_shift": 10.0}
WINDOW_SECONDS = 0.025  # kaldi default frame_length (25 ms): the shortest waveform that yields one frame

# Key patterns of the official MAE-style checkpoint that are expected NOT to match this encoder.
EXPECTED_MISSING = ("fc_norm.", "head.")  # fc_norm stays at its default init, as in AV-CIL; no head here
EXPECTED_UNEXPECTED = ("norm.", "decoder_", "mask_token")


@dataclass(frozen=True)
class AudioMAEConfig:
    """Architecture. The defaults are AudioMAE ViT-B/16 over a 1024 x 128 fbank; smaller values are for tests."""

    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    patch: int = 16
    frames: int = 1024  # fbank frames (10 ms each) after pad/crop
    mels: int = 128
    eps: float = 1e-6  # LayerNorm eps of the blocks and fc_norm

    def __post_init__(self) -> None:
        if self.dim % self.heads or self.dim % 4 or self.frames % self.patch or self.mels % self.patch:
            raise ValueError(f"AudioMAEConfig: dim must divide by heads and 4, frames and mels by patch: {self}")

    @property
    def grid(self) -> tuple[int, int]:
        """(time patches, frequency patches): (64, 8) for the default."""
        return self.frames // self.patch, self.mels // self.patch

    def to_json(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- front end


def fbank(wave, sample_rate: int, norm: str = "none", frames: int = 1024, mels: int = 128) -> torch.Tensor:
    """Mono waveform (S,) -> (frames, mels) float32 log-mel fbank, as the AV-CIL extraction computes it."""
    import torchaudio.compliance.kaldi as kaldi

    if norm not in FBANK_NORMS:
        raise ValueError(f"fbank norm must be one of {FBANK_NORMS}, got {norm!r}")
    w = torch.as_tensor(np.asarray(wave, dtype=np.float32)).reshape(1, -1)
    if w.shape[1] < int(WINDOW_SECONDS * sample_rate):
        raise ValueError(f"audio has {w.shape[1]} samples, shorter than one 25 ms fbank window at {sample_rate} Hz")
    w = w - w.mean()
    x = kaldi.fbank(w, sample_frequency=float(sample_rate), num_mel_bins=mels, **FBANK_OPTIONS)
    x = F.pad(x, (0, 0, 0, frames - len(x))) if len(x) < frames else x[:frames]
    if norm == "audioset":
        x = (x - AUDIOSET_MEAN) / (2 * AUDIOSET_STD)
    return x.contiguous()


# ----------------------------------------------------------------------------- encoder


def sincos_pos_embed(dim: int, rows: int, cols: int) -> torch.Tensor:
    """(1 + rows * cols, dim) fixed positional table, MAE convention, tokens row-major.

    Row 0 is the CLS position (zeros). For a patch at (r, c) the first dim/2 channels encode the
    column c and the last dim/2 the row r; each half is [sin | cos] of the coordinate times
    dim/4 geometric frequencies 10000^(-k / (dim/4)).
    """

    def axis(pos: torch.Tensor, width: int) -> torch.Tensor:
        freq = 10000.0 ** (-torch.arange(width // 2, dtype=torch.float64) / (width / 2))
        angle = pos.to(torch.float64)[:, None] * freq[None, :]
        return torch.cat([angle.sin(), angle.cos()], dim=1)

    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    table = torch.cat([axis(c.flatten(), dim // 2), axis(r.flatten(), dim // 2)], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), table]).float()


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    """Pre-norm transformer block; parameter names as in timm's ViT (and so in the checkpoint)."""

    def __init__(self, cfg: AudioMAEConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.attn = _Attention(cfg.dim, cfg.heads)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.mlp = _Mlp(cfg.dim, int(cfg.dim * cfg.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, cfg: AudioMAEConfig):
        super().__init__()
        self.proj = nn.Conv2d(1, cfg.dim, kernel_size=cfg.patch, stride=cfg.patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, frames, mels) -> (B, tokens, dim), time-major
        return self.proj(x).flatten(2).transpose(1, 2)


class AudioMAEEncoder(nn.Module):
    """fbank (B, frames, mels) -> (B, dim): mean of the patch tokens after the last block, then fc_norm."""

    def __init__(self, cfg: AudioMAEConfig = AudioMAEConfig(), seed: int = 0):
        super().__init__()
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):  # random weights depend on the seed only
            torch.manual_seed(seed)
            self.patch_embed = _PatchEmbed(cfg)
            self.cls_token = nn.Parameter(torch.randn(1, 1, cfg.dim) * 0.02)
            self.pos_embed = nn.Parameter(sincos_pos_embed(cfg.dim, *cfg.grid)[None], requires_grad=False)
            self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.depth))
            self.fc_norm = nn.LayerNorm(cfg.dim, eps=cfg.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1) if x.dim() == 3 else x
        tokens = self.patch_embed(x) + self.pos_embed[:, 1:]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(len(tokens), -1, -1)
        h = torch.cat([cls, tokens], dim=1)
        for block in self.blocks:
            h = block(h)
        return self.fc_norm(h[:, 1:].mean(dim=1))


# ----------------------------------------------------------------------------- checkpoint


def load_audiomae_checkpoint(model: AudioMAEEncoder, path: Path) -> dict:
    """Load the official AudioMAE `pretrained.pth` into `model`; log and check the key lists.

    Accepted: missing `fc_norm.*` (and `head.*`), unexpected `norm.*`, `decoder_*`, `mask_token`.
    Anything else is a WeightsError naming the keys. Returns the load report (datasets.weights.load_report).
    """
    path = Path(path)
    sd = read_state_dict(path, "AudioMAE")
    missing, unexpected = check_keys(
        model.state_dict(),
        sd,
        path,
        "the AudioMAE ViT encoder this extraction builds",
        "expected only missing fc_norm.* and unexpected norm.*, decoder_*, mask_token: pass the official AudioMAE "
        "ViT-B AS-2M pretrained.pth",
        allow_missing=lambda k: k.startswith(EXPECTED_MISSING),
        allow_unexpected=lambda k: k.startswith(EXPECTED_UNEXPECTED),
    )
    if "pos_embed" in sd:  # the checkpoint's table is used (as AV-CIL does); it should be the fixed sin-cos one
        diff = float((sd["pos_embed"].float() - sincos_pos_embed(model.cfg.dim, *model.cfg.grid)[None]).abs().max())
        log.info("AudioMAE pos_embed: max |checkpoint - fixed 2-D sin-cos table| = %.2g", diff)
    model.load_state_dict(sd, strict=False)
    log.info(
        "AudioMAE checkpoint %s:\n  missing keys (%d, left at their initialisation): %s\n"
        "  unexpected keys (%d, ignored): %s",
        path,
        len(missing),
        summarise_keys(missing),
        len(unexpected),
        summarise_keys(unexpected),
    )
    return load_report(path, len(sd) - len(unexpected), missing, unexpected)
