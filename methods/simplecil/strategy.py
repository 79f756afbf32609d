"""SimpleCIL (Zhou et al., IJCV 2024, "Revisiting class-incremental learning with pre-trained models"): the
prototype (mean) of each class's frozen features, and a cosine classifier over the prototypes; no training."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from methods._frozen.model import AnalyticModel, class_means, frozen_parameter, frozen_pooling, grown
from methods._frozen.template import TrainingFreeTemplate


class PrototypeHead(nn.Module):
    """scores_c(x) = cos(x, p_c), p_c = mean of class c's training features (RevisitingCIL `CosineLinear` with the
    prototypes as weights, sigma = 1)."""

    def __init__(self, feature_dim: int, num_classes: int):
        super().__init__()
        self.weight = frozen_parameter(torch.zeros(num_classes, feature_dim))

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def expand(self, num_classes: int) -> None:
        self.weight = frozen_parameter(grown(self.weight.data, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).T


def build_model(modality: str, store, num_classes: int, cfg: dict) -> AnalyticModel:
    pooling = frozen_pooling(modality, store, cfg["visual_pooling"], cfg["view_norm"])
    return AnalyticModel(pooling, PrototypeHead(pooling.feature_dim, num_classes))


class SimpleCIL(TrainingFreeTemplate):
    def fit_step(self, features, targets):
        lo, hi = self.step_bounds
        with torch.no_grad():  # old classes' prototypes are never touched (their data is gone)
            self.model.head.weight[lo:hi] = class_means(features, targets, range(lo, hi))
