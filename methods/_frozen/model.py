"""The analytic baselines' model: the store's frozen feature views, pooled and fused into one vector per clip, and
an analytic head (class prototypes, a ridge classifier, Mahalanobis distances) that the strategy fills in.

Pooling and fusion (config `visual_pooling`, `view_norm`; methods/_frozen/protocol.yaml):
- audio:        x = n(a)                       a: the audio feature vector (D_a,)
- visual:       x = n(pool_{t,k} V_{t,k})      V: the visual token grid (T, P, D_v); pool = mean (or max)
- audio-visual: x = [n(a) ; n(pool V)]         (D_a + D_v,)
with n = L2 normalisation (`view_norm: l2`, default) or the identity (`none`). Normalising each view before the
concatenation gives both modalities the same weight whatever the scale of their encoder's features; the mean over
frames and tokens is the AV-CIL model's visual-only pooling (methods/_avcil/model.py).

Nothing here is trained: the head's tensors are parameters with `requires_grad=False` (so the cost column
`parameters` counts the classifier's size) or buffers, and all of them are in the state dict, which is how a run
resumes after a step (plain tensors, `weights_only=True`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from datasets.base import MODALITIES
from datasets.errors import ConfigError

VISUAL_POOLINGS = ("mean", "max")
VIEW_NORMS = ("l2", "none")


class FrozenPooling(nn.Module):
    """Store views -> one feature vector per clip (no parameters)."""

    def __init__(self, modality: str, audio_dim: int, visual_dim: int, visual_pooling: str, view_norm: str):
        super().__init__()
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        if visual_pooling not in VISUAL_POOLINGS:
            raise ConfigError(f"visual_pooling must be one of {', '.join(VISUAL_POOLINGS)}, got {visual_pooling!r}")
        if view_norm not in VIEW_NORMS:
            raise ConfigError(f"view_norm must be one of {', '.join(VIEW_NORMS)}, got {view_norm!r}")
        self.modality, self.visual_pooling, self.view_norm = modality, visual_pooling, view_norm
        self.feature_dim = {"audio": audio_dim, "visual": visual_dim, "audio-visual": audio_dim + visual_dim}[modality]

    def forward(self, views: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        if self.modality in ("audio", "audio-visual"):
            parts.append(views["audio"].float())
        if self.modality in ("visual", "audio-visual"):
            visual = views["visual"].float()
            tokens = visual.reshape(visual.shape[0], -1, visual.shape[-1])  # (B, T*P, D_v)
            parts.append(tokens.mean(1) if self.visual_pooling == "mean" else tokens.amax(1))
        if self.view_norm == "l2":
            parts = [F.normalize(p, dim=1) for p in parts]
        return torch.cat(parts, dim=1)


def frozen_pooling(modality: str, store, visual_pooling: str, view_norm: str) -> FrozenPooling:
    """The pooling for a store's views: audio (D_a,), visual (..., D_v). The method's model builder passes the
    config's `visual_pooling` and `view_norm` (read there, so the method contract checks them up front)."""
    audio_dim = store.views["audio"].shape[-1] if "audio" in store.views else 0
    visual_dim = store.views["visual"].shape[-1] if "visual" in store.views else 0
    return FrozenPooling(modality, audio_dim, visual_dim, visual_pooling, view_norm)


class AnalyticModel(nn.Module):
    """Frozen pooling + an analytic head: forward(views) -> {"features": x, "logits": head(x)}.

    The head has `num_classes`, `expand(n)` (grow to n classes, keeping what the old classes hold) and
    forward(x) -> scores (higher is more likely; the template predicts their argmax over the seen classes)."""

    def __init__(self, pooling: FrozenPooling, head: nn.Module):
        super().__init__()
        self.pooling, self.head = pooling, head
        self.feature_dim = pooling.feature_dim

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def expand_classifier(self, num_classes: int) -> None:
        if num_classes < self.num_classes:
            raise ValueError(f"cannot shrink the head from {self.num_classes} to {num_classes} classes")
        if num_classes > self.num_classes:
            self.head.expand(num_classes)

    def forward(self, views: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.pooling(views)
        return {"features": x, "logits": self.head(x)}


def grown(t: torch.Tensor, n: int, dim: int = 0) -> torch.Tensor:
    """`t` zero-padded along `dim` to size n (the old entries kept)."""
    pad = list(t.shape)
    pad[dim] = n - t.shape[dim]
    return torch.cat([t, t.new_zeros(pad)], dim=dim)


def frozen_parameter(t: torch.Tensor) -> nn.Parameter:
    """A head tensor that is part of the model's size (the `parameters` cost column) but never trained."""
    return nn.Parameter(t, requires_grad=False)


def class_means(features: torch.Tensor, targets: torch.Tensor, classes: range) -> torch.Tensor:
    """(len(classes), D): the mean feature of each class (every class must have a sample)."""
    return torch.stack([features[targets == c].mean(0) for c in classes])
