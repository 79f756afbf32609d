"""The multimodal class-incremental contrastive loss (reference 3.8).

    L = w_ce * L_cwcl + w_mi * L_MI,  L_MI = -MI(f, v) - MI(f, a)        (code: w_ce 0.7, w_mi 0.3)

Logits of a sample are s * <f, T_c> over the current task's class prototypes T_c (task-local
labels; no old-class logits, no exemplars, as the reference trains).

L_cwcl, "similarity-weighted" cross-entropy (the figure's L_WCCL, after CWCL, Srinivasa et al.):
- `code` (`cwcl_as_released`): w_ij = cos(v_i, v_j)/2 + 1/2 multiplies each sample's own CE,
  L = (1/B) sum_i [sum_j w_ij l_i / sum_j w_ij]; the weights cancel and L equals mean CE
  exactly (tested). Kept to reproduce the release.
- `paper` (`cwcl`): the weights enter the target distribution, as CWCL does: sample i's target
  over classes is q_i(c) = sum_j w_ij [y_j = c] / sum_j w_ij, and L = -(1/B) sum_i sum_c q_i(c)
  log p_i(c). A batch-mate j that looks like i in image space is a soft positive for i's
  prediction of y_j. The weight kernel is w_ij = exp((cos(v~_i, v~_j) - 1) / kappa) (w_ii = 1,
  w -> 0 for dissimilar pairs; kappa = `cwcl_kappa`), computed on detached image features
  centred over the batch (v~ = v - mean_b v): the released linear map gives an orthogonal pair
  weight 1/2, and raw CLIP-like features share a large common direction (all pairs cos > 0.5),
  either of which floods the target with the batch's label histogram. With kappa -> 0 (or a
  batch of one class) L is CE.

MI(x, y) is the reference's softmax mutual information (benchmarks.metrics.mcil.softmax_mutual_information).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.metrics.mcil import softmax_mutual_information


def cwcl_as_released(logits: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The released weighting, applied literally; equal to mean CE (the weights cancel)."""
    ce = F.cross_entropy(logits.float(), y, reduction="none")
    vn = F.normalize(v.float(), dim=1)
    w = (vn @ vn.t()) / 2 + 0.5
    return ((w * ce[:, None]).sum(1) / w.sum(1)).mean()


def similarity_weights(v: torch.Tensor, kappa: float) -> torch.Tensor:
    """w_ij = exp((cos(v~_i, v~_j) - 1) / kappa) on batch-centred, detached features v~ = v - mean_b v."""
    v = v.detach().float()
    if len(v) > 1:
        v = v - v.mean(0, keepdim=True)
    vn = F.normalize(v, dim=1)
    w = torch.exp((vn @ vn.t() - 1.0) / kappa)
    return w.fill_diagonal_(1.0)  # a zero centred vector (e.g. a batch of one) is still its own positive


def cwcl(logits: torch.Tensor, y: torch.Tensor, v: torch.Tensor, kappa: float) -> torch.Tensor:
    """Similarity-weighted soft-target cross-entropy (see the module docstring)."""
    w = similarity_weights(v, kappa)
    onehot = F.one_hot(y, logits.shape[1]).float()
    target = (w @ onehot) / w.sum(1, keepdim=True)
    return -(target * torch.log_softmax(logits.float(), dim=1)).sum(1).mean()


def mi_loss(f: torch.Tensor, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """L_MI = -MI(f, v) - MI(f, a) (the figure's L_MI_v and L_MI_a)."""
    return -softmax_mutual_information(f.float(), v.float()) - softmax_mutual_information(f.float(), a.float())


def mcil_loss(logits, y, f, v, a, cfg: dict) -> tuple[torch.Tensor, dict]:
    """Total loss and its parts, by the config's `cwcl` ("released" | "weighted") and weights."""
    if cfg["cwcl"] == "released":
        l_cls = cwcl_as_released(logits, y, v)
    elif cfg["cwcl"] == "weighted":
        l_cls = cwcl(logits, y, v, float(cfg["cwcl_kappa"]))
    else:
        raise ValueError(f"cwcl must be 'released' or 'weighted', got {cfg['cwcl']!r}")
    l_mi = mi_loss(f, v, a)
    total = float(cfg["ce_weight"]) * l_cls + float(cfg["mi_weight"]) * l_mi
    return total, {"cls": l_cls.detach(), "mi": l_mi.detach()}
