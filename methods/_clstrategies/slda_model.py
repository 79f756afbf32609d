"""Streaming LDA on the frozen features: a classifier head with no trained parameter.

The features are the store's frozen encoder outputs, pooled without any learned layer:
- audio: the audio vector (D_a);
- visual: the mean of the visual token grid over time and patches (T, P, D_v) -> (D_v);
- audio-visual: [a / |a| , v / |v|] (D_a + D_v), the two vectors above each L2-normalised then concatenated, so
  neither modality dominates the shared covariance by its scale.
With `slda_normalize: true` (default) the single-modality vectors are L2-normalised too, so the three modalities
see features of the same kind. The LDA statistics (class means, counts, shared covariance, number of updates)
are buffers or frozen tensors of the module, so step checkpoints keep them like any state dict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from datasets.base import MODALITIES
from methods._clstrategies.losses import slda_update, slda_weights


def pooled_features(modality: str, views: dict[str, torch.Tensor], normalize: bool = True) -> torch.Tensor:
    """The frozen feature vector SLDA sees (module docstring)."""
    parts = []
    if modality in ("audio", "audio-visual"):
        parts.append(views["audio"].float())
    if modality in ("visual", "audio-visual"):
        v = views["visual"].float()
        parts.append(v.reshape(v.shape[0], -1, v.shape[-1]).mean(1))
    if normalize or modality == "audio-visual":
        parts = [F.normalize(p, dim=1) for p in parts]
    return torch.cat(parts, dim=1)


class StreamingLDAHead(nn.Module):
    """Deep SLDA (Hayes & Kanan, CVPRW 2020) over `pooled_features`; scores = x W + b (`losses.slda_weights`)."""

    def __init__(self, modality: str, feature_dim: int, num_classes: int, shrinkage: float, normalize: bool = True):
        super().__init__()
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        self.modality, self.feature_dim, self.shrinkage, self.normalize = modality, feature_dim, shrinkage, normalize
        # a frozen parameter, not a buffer: the strategy template builds an optimizer over the model's parameters
        self.means = nn.Parameter(torch.zeros(num_classes, feature_dim), requires_grad=False)
        self.register_buffer("counts", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("sigma", torch.ones(feature_dim, feature_dim))  # avalanche's initial value (never used)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self._classifier = None  # (updates, W, b): Lambda is recomputed only after new updates

    @property
    def num_classes(self) -> int:
        return self.means.shape[0]

    def expand_classifier(self, num_classes: int) -> None:
        grow = num_classes - self.num_classes
        if grow < 0:
            raise ValueError(f"cannot shrink the classifier from {self.num_classes} to {num_classes}")
        if grow:
            with torch.no_grad():
                self.means = nn.Parameter(
                    torch.cat([self.means, self.means.new_zeros(grow, self.feature_dim)]), requires_grad=False
                )
                self.counts = torch.cat([self.counts, self.counts.new_zeros(grow)])
            self._classifier = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._classifier = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def fit(self, features: torch.Tensor, y: torch.Tensor) -> None:
        """One streaming pass over a batch, in its row order."""
        n = int(self.updates)  # one host read per batch
        means, counts, sigma = slda_update(features, y, self.means.data, self.counts, self.sigma, n)
        self.means.data.copy_(means)
        self.counts.copy_(counts)
        self.sigma.copy_(sigma)
        self.updates += len(y)
        self._classifier = None

    def pooled(self, views: dict[str, torch.Tensor]) -> torch.Tensor:
        return pooled_features(self.modality, views, self.normalize)

    def forward(self, views: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        f = self.pooled(views)
        if self._classifier is None:
            self._classifier = slda_weights(self.means.detach(), self.sigma, self.shrinkage)
        W, b = self._classifier
        return {"features": f, "logits": f @ W + b}


def build_slda(modality: str, store, num_classes: int, cfg: dict) -> StreamingLDAHead:
    """model_builder of the slda row: the pooled feature width from the store's views."""
    dim = 0
    if modality in ("audio", "audio-visual"):
        dim += store.views["audio"].shape[-1]
    if modality in ("visual", "audio-visual"):
        dim += store.views["visual"].shape[-1]
    return StreamingLDAHead(modality, dim, num_classes, cfg["slda_shrinkage"], cfg["slda_normalize"])
