"""AFC's loss terms as adapted by the AV-CIL reference (../shared/reference/av_cil.md section 3.7).

- `lsc_similarity`: PODNet's local similarity classifier: s_{c,k}(x) = -||x/|x| - p_{c,k}/|p_{c,k}|||^2
  (= -(2 - 2 cos) in [-4, 0]), pooled over a class's K proxies by softmax attention:
  s_c = sum_k softmax_k(s_{c,.})_k s_{c,k}   (`model/layers.py` `stable_cosine_distance`, `reduce_proxies`).
- `nca_loss`: PODNet's NCA on the class similarities (`AFC/train_incremental_afc.py:43-63`).
- `importance_weights` and `feature_distillation`: the per-sample, per-modality importance-weighted
  feature distillation (`AFC/train_incremental_afc.py:334-360`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NCA_MARGIN_MODES = ("intended", "reference")


def reduce_proxies(similarities: torch.Tensor, proxies_per_class: int) -> torch.Tensor:
    """(B, C*K) proxy similarities, class-major -> (B, C): sum_k softmax_k(s_k) * s_k."""
    per_class = similarities.reshape(similarities.shape[0], -1, proxies_per_class)
    return (torch.softmax(per_class, dim=-1) * per_class).sum(-1)


def lsc_similarity(x: torch.Tensor, proxies: torch.Tensor, proxies_per_class: int) -> torch.Tensor:
    """Class similarities (B, C) of features x (B, D) to proxies (C*K, D), rows class-major."""
    xn, pn = F.normalize(x, dim=-1), F.normalize(proxies.to(x.dtype), dim=-1)
    # squared Euclidean distance by expansion, clamped at 0 against rounding (as the reference)
    d2 = (xn.pow(2).sum(1, keepdim=True) + pn.pow(2).sum(1)[None, :] - 2 * xn @ pn.t()).clamp(min=0)
    return reduce_proxies(-d2, proxies_per_class)


def nca_loss(
    similarities: torch.Tensor, targets: torch.Tensor, scale, margin: float = 0.6, mode: str = "intended"
) -> torch.Tensor:
    """PODNet's NCA loss, batch mean.

    z_j = scale * (s_j - margin * [j == y])            mode "intended" (margin on the target only)
    z_j = scale * (s_j - margin)                        mode "reference" (the reference: on every class,
                                                        which the shift below cancels: a no-op margin)
    z   = z - max_j z_j                                 (stability shift, not detached, as the reference)
    loss = -z_y + log( exp(0) + sum_{j != y} exp(z_j) )

    The positive is "excluded" from the denominator as the reference (and PODNet's code) do: its
    shifted logit is zeroed, so it contributes exp(0) = 1 there. When the target is the arg max this
    equals softmax cross-entropy on z; otherwise the positive's term exp(z_y) is replaced by 1 > exp(z_y).
    """
    if mode not in NCA_MARGIN_MODES:
        raise ValueError(f"nca_margin_mode must be one of {NCA_MARGIN_MODES}, got {mode!r}")
    s = similarities.float()
    idx = torch.arange(len(s), device=s.device)
    if mode == "intended":
        s = s - margin * F.one_hot(targets, s.shape[1]).to(s.dtype)
    else:
        s = s - margin
    z = scale * s
    z = z - z.max(1, keepdim=True).values
    positive = z[idx, targets]
    denominator = z.clone()
    denominator[idx, targets] = 0.0
    return (torch.logsumexp(denominator, dim=1) - positive).mean()


def importance_weights(grads: list[torch.Tensor], eps: float = 1e-12) -> torch.Tensor:
    """Per-sample gradient norms ||dL_old / d f_m||_2 of each modality feature m, normalised to
    sum to 1 per sample: (B, M). (eps guards an all-zero row, which the reference would turn to NaN.)"""
    norms = torch.stack([g.float().flatten(1).norm(dim=1) for g in grads], dim=1)
    return norms / norms.sum(1, keepdim=True).clamp(min=eps)


def feature_distillation(
    student: list[torch.Tensor], teacher: list[torch.Tensor], weights: torch.Tensor | None = None
) -> torch.Tensor:
    """sum_m mean_i( w_{i,m} * || f_m/|f_m| - f_m^old/|f_m^old| ||_2 ), teacher detached.

    With `weights` None every w is 1 (the single-modality case: one feature, unweighted mean)."""
    total = student[0].new_zeros((), dtype=torch.float32)
    for m, (f, f_old) in enumerate(zip(student, teacher)):
        dist = (F.normalize(f.float(), dim=1) - F.normalize(f_old.detach().float(), dim=1)).norm(dim=1)
        total = total + (dist if weights is None else weights[:, m] * dist).mean()
    return total
