"""Streaming LDA on the frozen features: a classifier head with no trained parameter.

The features are the store's frozen encoder outputs, pooled and fused without any learned layer by the
training-free baselines' pooling (`methods._frozen.model.FrozenPooling`, config `visual_pooling`, `view_norm`):
audio vector, mean-pooled visual tokens, or both concatenated, each L2-normalised by default, so neither modality
dominates the shared covariance by its scale. The LDA statistics (class means, counts, shared covariance, number
of updates) are buffers or frozen tensors of the module, so step checkpoints keep them like any state dict.
"""

from __future__ import annotations

import torch
from torch import nn

from methods._clstrategies.losses import slda_update, slda_weights
from methods._frozen.model import FrozenPooling, frozen_pooling


class StreamingLDAHead(nn.Module):
    """Deep SLDA (Hayes & Kanan, CVPRW 2020) over the pooled frozen features; scores = x W + b
    (`losses.slda_weights`)."""

    def __init__(self, pooling: FrozenPooling, num_classes: int, shrinkage: float):
        super().__init__()
        self.pooling, self.feature_dim, self.shrinkage = pooling, pooling.feature_dim, shrinkage
        feature_dim = self.feature_dim
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
        n = self.updates.to(features.dtype)  # a device tensor: no host read per batch
        means, counts, sigma = slda_update(features, y, self.means.data, self.counts, self.sigma, n)
        self.means.data.copy_(means)
        self.counts.copy_(counts)
        self.sigma.copy_(sigma)
        self.updates += len(y)
        self._classifier = None

    def pooled(self, views: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.pooling(views)

    def forward(self, views: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        f = self.pooled(views)
        if self._classifier is None:
            self._classifier = slda_weights(self.means.detach(), self.sigma, self.shrinkage)
        W, b = self._classifier
        return {"features": f, "logits": f @ W + b}


def build_slda(modality: str, store, num_classes: int, cfg: dict) -> StreamingLDAHead:
    """model_builder of the slda row."""
    pooling = frozen_pooling(modality, store, cfg["visual_pooling"], cfg["view_norm"])
    return StreamingLDAHead(pooling, num_classes, cfg["slda_shrinkage"])
