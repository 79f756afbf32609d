"""RanPAC (McDonnell et al., NeurIPS 2023): a fixed random projection with ReLU of the frozen features, the Gram
matrix G and the class-prototype matrix Q accumulated over steps, and the ridge classifier W = (G + lambda I)^-1 Q,
lambda chosen on the val split at every step. Nothing is trained (the optional first-step PETL adaptation of the
paper is left out: there is no backbone here to adapt; README).

With h(x) = ReLU(x W_rand) (W_rand: D x M, entries N(0, 1)), after step t (all its training clips i):
    G += sum_i h_i h_i^T    (M x M)        Q += sum_i h_i y_i^T    (M x C, y_i one-hot)
    scores(x) = h(x)^T W,   W = (G + lambda I)^-1 Q
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from methods._frozen.model import AnalyticModel, frozen_parameter, frozen_pooling, grown
from methods._frozen.template import TrainingFreeTemplate


def ridge_grid(low: int, high: int) -> torch.Tensor:
    """10^low, ..., 10^high (the reference's grid is 10^-8 .. 10^8, RanPAC.py:139)."""
    return 10.0 ** torch.arange(low, high + 1, dtype=torch.float64)


def ridge_weights(gram: torch.Tensor, q: torch.Tensor, ridge: float) -> torch.Tensor:
    """W = (G + lambda I)^-1 Q (RanPAC.py:125). G + lambda I is symmetric positive definite for lambda > 0, so a
    Cholesky solve (half the work of the reference's LU `torch.linalg.solve`); LU where rounding makes the
    factorisation fail (lambda tiny against a rank-deficient G)."""
    a = gram + ridge * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    factor, info = torch.linalg.cholesky_ex(a)
    return torch.cholesky_solve(q, factor) if int(info) == 0 else torch.linalg.solve(a, q)


def select_ridge(
    gram: torch.Tensor, q: torch.Tensor, h_val: torch.Tensor, y_val: torch.Tensor, ridges: torch.Tensor
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(index of the chosen lambda, its W, the val MSE of every lambda): the lambda whose scores h_val W have the
    smallest mean squared error against the one-hot val targets (the reference's criterion, RanPAC.py:138-150);
    ties go to the smallest lambda (np.argmin's first minimum, as the reference)."""
    best, best_w, losses = 0, None, []
    for i, ridge in enumerate(ridges.tolist()):
        w = ridge_weights(gram, q, ridge)
        losses.append(F.mse_loss(h_val @ w, y_val))
        if losses[-1] < losses[best] or best_w is None:
            best, best_w = i, w
    return best, best_w, torch.stack(losses)


class RanPACHead(nn.Module):
    """scores(x) = ReLU(x W_rand) W. G and Q are float64 buffers (sums over every step's clips); W is stored as the
    (C, M) classifier weight (the reference's `fc.weight`, inc_net.py:34-38)."""

    def __init__(self, feature_dim: int, num_classes: int, rp_dim: int):
        super().__init__()
        self.register_buffer("projection", torch.randn(feature_dim, rp_dim))  # W_rand, N(0, 1): RanPAC.py:254
        self.register_buffer("gram", torch.zeros(rp_dim, rp_dim, dtype=torch.float64))
        self.register_buffer("prototypes", torch.zeros(rp_dim, num_classes, dtype=torch.float64))  # Q
        self.weight = frozen_parameter(torch.zeros(num_classes, rp_dim))

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def expand(self, num_classes: int) -> None:
        self.prototypes = grown(self.prototypes, num_classes, dim=1)
        self.weight = frozen_parameter(grown(self.weight.data, num_classes))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x @ self.projection)

    def accumulate(self, x: torch.Tensor, y: torch.Tensor) -> None:
        h = self.project(x).double()
        self.gram += h.T @ h
        self.prototypes += h.T @ F.one_hot(y, self.num_classes).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(x) @ self.weight.T


def build_model(modality: str, store, num_classes: int, cfg: dict) -> AnalyticModel:
    pooling = frozen_pooling(modality, store, cfg["visual_pooling"], cfg["view_norm"])
    # W_rand is drawn from the global generator, which the runner seeds with the cell's seed before building
    return AnalyticModel(pooling, RanPACHead(pooling.feature_dim, num_classes, cfg["rp_dim"]))


class RanPAC(TrainingFreeTemplate):
    def fit_step(self, features, targets):
        head = self.model.head
        head.accumulate(features, targets)
        # lambda: the grid value with the smallest MSE on the val clips of every seen class (the reference's
        # criterion, RanPAC.py:138-150, on the harness's val split instead of 20 % of the current step's train data)
        rows, val_targets = self.stream.seen("val", self.step_index)
        h_val = head.project(self.pooled_features(rows)).double()
        y_val = F.one_hot(val_targets.to(h_val.device), head.num_classes).double()
        ridges = ridge_grid(self.cfg["ridge_log10_min"], self.cfg["ridge_log10_max"])
        best, weights, losses = select_ridge(head.gram, head.prototypes, h_val, y_val, ridges)
        head.weight.data = weights.T.float()
        self.report = {"ridge": float(ridges[best]), "ridge_val_mse": float(losses[best])}
