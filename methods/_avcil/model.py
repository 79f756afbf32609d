"""The AV-CIL network (Pian et al., ICCV 2023), shared by the AV-CIL-family methods.

Reference: weiguoPian/AV-CIL_ICCV2023 `model/audio_visual_model_incremental.py`
(../shared/reference/av_cil.md section 3.1). Dimensions are read from the data instead of
the reference's hard-coded 768 / 8 x 196.

- audio:        f_a = ReLU(W_a a)                       -> classifier
- visual:       f_v = ReLU(W_v mean_{t,k} V_{t,k})      -> classifier
- audio-visual: audio-guided channel-wise attention over the visual token grid
      a' = tanh(W_aa a),  v'_{t,k} = tanh(W_av V_{t,k})
      alpha_{t,.,d} = softmax_k(v'_{t,k,d} a'_d)          (spatial, over the P tokens)
      u_{t,d} = sum_k alpha_{t,k,d} v'_{t,k,d}
      beta_{.,d} = softmax_t(u_{t,d} a'_d)                (temporal, over the T slots)
      v~_d = sum_t beta_{t,d} sum_k alpha_{t,k,d} V_{t,k,d}   (pooled from the RAW tokens)
      f = ReLU(W_a a) + ReLU(W_v v~)                      -> classifier
The classifier is a linear layer that grows as classes arrive, keeping old rows.

Where the FLOPs go (audio-visual, per clip, T x P tokens of width D, hidden H = D): the two projections of every
visual token, W_av V (attention) and, in the backward pass, its weight gradient: 2 x 2 T P D^2 (7.4 GFLOP for
8 x 196 x 768); W_v, W_a, W_aa and the classifier act once per clip (~4 D^2). Everything else is elementwise over
the (T, P, D) grid (tanh, the channel-wise softmax, two weighted sums: memory traffic, not FLOPs). The
elementwise chain is `channel_attention_pool`, a plain function so that `use_compiled_attention` can hand it to
`torch.compile` (fusing it into a few kernels) without touching the eager numbers (README of benchmarks/tools).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from datasets.base import MODALITIES


def channel_attention_pool(a_proj: torch.Tensor, v_proj: torch.Tensor, visual: torch.Tensor):
    """The audio-guided channel-wise attention and pooling after the two projections (module docstring):
    a_proj = W_aa audio (B, D), v_proj = W_av V (B, T, P, D), visual = the raw tokens V.
    Returns spatial alpha (B, T, P, D), temporal beta (B, T, D) and the pooled visual v~ (B, D)."""
    a, v = torch.tanh(a_proj), torch.tanh(v_proj)
    spatial = torch.softmax(v * a[:, None, None, :], dim=2)
    attended = (spatial * v).sum(2)  # (B, T, D)
    temporal = torch.softmax(attended * a[:, None, :], dim=1)
    pooled = (temporal * (spatial * visual).sum(2)).sum(1)  # from the raw tokens
    return spatial, temporal, pooled


#: the implementation AVCILNet calls (eager by default; `use_compiled_attention` swaps in a compiled one)
_attention_pool = channel_attention_pool
_compiled: dict = {}  # compiled versions by torch.compile options, so switching back and forth compiles once


def use_compiled_attention(enabled: bool = True, **compile_kwargs) -> None:
    """Run `channel_attention_pool` through `torch.compile` (dynamic batch size) in every AVCILNet, or back to
    eager. Opt-in: compiled kernels fuse and reorder the elementwise sums, so results move in the last bits;
    eager is what the records are made with (benchmarks/tools/speed.py --compile measures the difference)."""
    global _attention_pool
    if not enabled:
        _attention_pool = channel_attention_pool
        return
    key = tuple(sorted(compile_kwargs.items()))
    if key not in _compiled:
        _compiled[key] = torch.compile(channel_attention_pool, dynamic=True, **compile_kwargs)
    _attention_pool = _compiled[key]


def compiled_attention() -> bool:
    """Whether AVCILNet currently runs the compiled attention chain."""
    return _attention_pool is not channel_attention_pool


class AVCILNet(nn.Module):
    def __init__(self, modality: str, audio_dim: int, visual_dim: int, num_classes: int, hidden_dim: int | None = None):
        super().__init__()
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        self.modality = modality
        hidden = hidden_dim or visual_dim  # the reference uses 768 for every width
        self.feature_dim = hidden
        if modality in ("audio", "audio-visual"):
            self.audio_proj = nn.Linear(audio_dim, hidden)
        if modality in ("visual", "audio-visual"):
            self.visual_proj = nn.Linear(visual_dim, hidden)
        if modality == "audio-visual":
            self.attn_audio_proj = nn.Linear(audio_dim, visual_dim)
            self.attn_visual_proj = nn.Linear(visual_dim, visual_dim)
        self.classifier = nn.Linear(hidden, num_classes)

    @property
    def num_classes(self) -> int:
        return self.classifier.out_features

    def expand_classifier(self, num_classes: int) -> None:
        """Grow to `num_classes` outputs; old rows and biases are copied, new rows default-initialised."""
        old = self.classifier
        if num_classes == old.out_features:
            return
        if num_classes < old.out_features:
            raise ValueError(f"cannot shrink the classifier from {old.out_features} to {num_classes}")
        new = nn.Linear(old.in_features, num_classes).to(old.weight.device)
        with torch.no_grad():
            new.weight[: old.out_features] = old.weight
            new.bias[: old.out_features] = old.bias
        self.classifier = new

    def attention(self, audio: torch.Tensor, visual: torch.Tensor):
        """Spatial (B,T,P,D) and temporal (B,T,D) attention weights, audio-guided and channel-wise, and the
        visual tokens pooled with them (B,D)."""
        # W_av over every visual token (B, T, P, D): the run's FLOPs; the rest is elementwise
        return _attention_pool(self.attn_audio_proj(audio), self.attn_visual_proj(visual), visual)

    def forward(self, views: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.modality == "audio":
            f = out["audio_features"] = F.relu(self.audio_proj(views["audio"]))
        elif self.modality == "visual":
            visual = views["visual"]
            pooled = visual.reshape(visual.shape[0], -1, visual.shape[-1]).mean(1)
            f = out["visual_features"] = F.relu(self.visual_proj(pooled))
        else:
            audio, visual = views["audio"], views["visual"]
            spatial, temporal, pooled = self.attention(audio, visual)
            out["spatial_attention"], out["temporal_attention"], out["pooled_visual"] = spatial, temporal, pooled
            out["audio_features"] = F.relu(self.audio_proj(audio))
            out["visual_features"] = F.relu(self.visual_proj(pooled))
            f = out["audio_features"] + out["visual_features"]
        out["features"] = f
        out["logits"] = self.classifier(f)
        return out


def build_model(modality: str, store, num_classes: int, cfg: dict | None = None) -> AVCILNet:
    """The network for a store's views: audio (D_a,), visual (T, P, D_v). `cfg["hidden_dim"]`
    overrides the fused width (default: the visual token dim, as the reference's 768)."""
    hidden_dim = (cfg or {}).get("hidden_dim")
    audio_dim = store.views["audio"].shape[-1] if "audio" in store.views else 1
    visual_dim = store.views["visual"].shape[-1] if "visual" in store.views else 1
    return AVCILNet(modality, audio_dim, visual_dim, num_classes, hidden_dim)
