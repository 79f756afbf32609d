"""FeCAM (Goswami et al., NeurIPS 2023): per-class Mahalanobis distance on the frozen features, with covariance
shrinkage and correlation normalisation; no training. The configuration is the reference's frozen pretrained-ViT
one (FeCAM_vit_cifar100.py): L2-normalised features, one shrinkage with gamma_1 = 1, gamma_2 = 0, no Tukey transform.

For class c with training features x_i (L2-normalised), mean mu_c and unbiased covariance S_c:
    S'_c = S_c + gamma_1 mean(diag S_c) I + gamma_2 mean(offdiag S_c) (1 - I)     (shrinkage)
    R_c  = S'_c / (sd sd^T),  sd = sqrt(diag S'_c)                                 (correlation normalisation)
    d_c(x) = (x - mu_c)^T pinv(R_c) (x - mu_c);   prediction = argmin_c d_c(x)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from methods._frozen.model import AnalyticModel, frozen_parameter, frozen_pooling, grown
from methods._frozen.template import TrainingFreeTemplate


def shrink_covariance(cov: torch.Tensor, gamma_diag: float, gamma_offdiag: float) -> torch.Tensor:
    """S + gamma_1 V_1 I + gamma_2 V_2 (1 - I): V_1 the mean variance, V_2 the mean of the nonzero off-diagonal
    entries (FeCAM_vit_cifar100.py:29-39, models/fecam.py `shrink_cov`)."""
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    off = cov * (1 - eye)
    nonzero = off != 0
    off_mean = off.sum() / nonzero.sum().clamp_min(1)
    return cov + gamma_diag * torch.diagonal(cov).mean() * eye + gamma_offdiag * off_mean * (1 - eye)


def correlation_normalise(cov: torch.Tensor) -> torch.Tensor:
    """S / (sd sd^T), sd = sqrt(diag S): the correlation matrix (FeCAM_vit_cifar100.py:41-48 `normalize_cov`)."""
    sd = torch.sqrt(torch.diagonal(cov))
    return cov / (sd[:, None] * sd[None, :])


def class_precision(x: torch.Tensor, gamma_diag: float, gamma_offdiag: float) -> torch.Tensor:
    """pinv of the shrunk, normalised covariance of one class's features (rows of x), in float64. A class with a
    single clip has no covariance: the identity (the reference's Euclidean fallback, models/base.py `_mahalanobis`)."""
    x = x.double()
    if len(x) < 2:
        return torch.eye(x.shape[1], dtype=torch.float64, device=x.device)
    cov = torch.cov(x.T)  # unbiased (N - 1), as np.cov in the reference
    return torch.linalg.pinv(correlation_normalise(shrink_covariance(cov, gamma_diag, gamma_offdiag)), hermitian=True)


def mahalanobis(x: torch.Tensor, means: torch.Tensor, precisions: torch.Tensor) -> torch.Tensor:
    """(B, C): d_c(x_b) = (x_b - mu_c)^T P_c (x_b - mu_c)."""
    diff = x[:, None, :] - means[None]  # (B, C, D)
    return (torch.einsum("bcd,cde->bce", diff, precisions) * diff).sum(-1)


class FeCAMHead(nn.Module):
    """scores = -Mahalanobis distance to each class; the class means (C, D) count as the model's parameters, the
    precision matrices (C, D, D) are buffers."""

    def __init__(self, feature_dim: int, num_classes: int):
        super().__init__()
        self.means = frozen_parameter(torch.zeros(num_classes, feature_dim))
        self.register_buffer("precisions", torch.zeros(num_classes, feature_dim, feature_dim))

    @property
    def num_classes(self) -> int:
        return self.means.shape[0]

    def expand(self, num_classes: int) -> None:
        self.means = frozen_parameter(grown(self.means.data, num_classes))
        self.precisions = grown(self.precisions, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -mahalanobis(F.normalize(x, dim=1), self.means, self.precisions)


def build_model(modality: str, store, num_classes: int, cfg: dict) -> AnalyticModel:
    pooling = frozen_pooling(modality, store, cfg["visual_pooling"], cfg["view_norm"])
    return AnalyticModel(pooling, FeCAMHead(pooling.feature_dim, num_classes))


class FeCAM(TrainingFreeTemplate):
    def fit_step(self, features, targets):
        x = F.normalize(features, dim=1)  # the reference normalises every feature (FeCAM_vit_cifar100.py:75, 97)
        head = self.model.head
        with torch.no_grad():
            for c in range(*self.step_bounds):
                xc = x[targets == c]
                head.means[c] = xc.mean(0)
                head.precisions[c] = class_precision(xc, self.cfg["shrink_diag"], self.cfg["shrink_offdiag"]).float()
