"""AAVFM: the adaptive audio-visual fusion module (masking threshold + dynamic fusion).

Inputs are the L2-normalised image feature v and projected audio feature a (B, D).

Masking threshold ("Calculate r" -> "Modality Feature Selection" in the reference figure):
r_b is the Pearson correlation of v_b and a_b across the D feature dimensions. Audio is
masked out (f = v, the figure's bypass) where the correlation is below tau:
- `gate: batch` (released code, `code` mode): one decision per batch on mean_b r_b >= tau (0.8);
- `gate: sample` (`paper` mode): one decision per sample, r_b >= tau.

Dynamic fusion ("Weighted Concatenation" -> "Cross-Attention" -> "MLP"). The released branch
is shape-broken (a (B, 512) query against a (B, 1024) key, attention across batch samples,
then Linear(2048, 512) on a 1024-d concat) and never runs because r ~ 0 < 0.8 there
(reference 3.5). The construction used here, in both modes (documented deviation):
1. two modality tokens X = [w_v v, w_a a] (B, 2, D), learnable scalars w_v = w_a = 1 at init;
2. cross-attention with the image as the query over the two tokens, per sample:
   alpha = softmax(v X^T / sqrt(D)) (B, 2), c = alpha X (B, D);
3. MLP on the concatenation [v ; c] (2D -> D -> D, ReLU) added to v as a residual, with
   the last layer zero-initialised, so fusion starts as the identity on v and learns to
   mix audio in; the output is L2-normalised.
The reference MLP's BatchNorm layers are left out: with per-sample gating a BN would see a
data-dependent subset of the batch, and the residual form keeps fused and unfused outputs
on one scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pearson_r(v: torch.Tensor, a: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-sample Pearson correlation across features: (B, D), (B, D) -> (B,)."""
    vc = v - v.mean(dim=1, keepdim=True)
    ac = a - a.mean(dim=1, keepdim=True)
    return (vc * ac).sum(1) / (vc.norm(dim=1) * ac.norm(dim=1)).clamp_min(eps)


class AdaptiveFusion(nn.Module):
    def __init__(self, dim: int, tau: float, gate: str = "sample"):
        super().__init__()
        if gate not in ("sample", "batch"):
            raise ValueError(f"fusion gate must be 'sample' or 'batch', got {gate!r}")
        self.dim, self.tau, self.gate = dim, float(tau), gate
        self.w_v = nn.Parameter(torch.ones(()))
        self.w_a = nn.Parameter(torch.ones(()))
        self.mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def fire_mask(self, v: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(r (B,), mask (B,) bool: where the fusion branch is used)."""
        r = pearson_r(v.float(), a.float())
        if self.gate == "batch":
            return r, (r.mean() >= self.tau).expand_as(r)
        return r, r >= self.tau

    def fuse(self, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The dynamic-fusion branch for every sample (B, D)."""
        tokens = torch.stack([self.w_v * v, self.w_a * a], dim=1)  # (B, 2, D)
        alpha = torch.softmax(torch.einsum("bd,bmd->bm", v, tokens) / self.dim**0.5, dim=1)
        context = torch.einsum("bm,bmd->bd", alpha, tokens)
        return F.normalize(v + self.mlp(torch.cat([v, context], dim=1)), dim=1)

    def forward(self, v: torch.Tensor, a: torch.Tensor, force: bool | None = None) -> tuple[torch.Tensor, dict]:
        """(f (B, D) L2-normalised, {"r": (B,), "fired": (B,) bool}). `force` (tests, diagnostics):
        True runs the branch for every sample, False masks audio for every sample."""
        r, mask = self.fire_mask(v, a)
        if force is not None:
            mask = torch.full_like(mask, bool(force))
        if not bool(mask.any()):
            return F.normalize(v, dim=1), {"r": r, "fired": mask}
        f = torch.where(mask[:, None], self.fuse(v, a).to(v.dtype), F.normalize(v, dim=1))
        return f, {"r": r, "fired": mask}
