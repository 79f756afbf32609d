"""Loss terms shared by several methods. Each is tested on hand-checkable tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def taskwise_kd(
    logits: torch.Tensor, old_logits: torch.Tensor, bounds: list[tuple[int, int]], T: float = 2.0
) -> torch.Tensor:
    """Sum over old steps j of KL(softmax(z_old[:, j]/T) || softmax(z[:, j]/T)) * T^2, batch-mean.

    The softmax runs inside each old step's logit block, as in the AV-CIL LwF/SS-IL code
    (`F.kl_div(log_softmax(z/T), softmax(z_old/T), reduction='batchmean') * T**2` per block).
    """
    total = logits.new_zeros(())
    for lo, hi in bounds:
        log_p = F.log_softmax(logits[:, lo:hi].float() / T, dim=1)
        q = F.softmax(old_logits[:, lo:hi].float() / T, dim=1)
        total = total + F.kl_div(log_p, q, reduction="batchmean") * T * T
    return total


def sigmoid_distillation(logits_old_classes: torch.Tensor, old_logits: torch.Tensor) -> torch.Tensor:
    """iCaRL distillation: BCE between sigmoid(new logits) and the targets sigmoid(old logits).

    Mean over samples and old classes. The AV-CIL reference feeds sigmoid(z) into
    BCE-with-logits (a double sigmoid); this is the intended single-sigmoid form.
    """
    return F.binary_cross_entropy_with_logits(logits_old_classes.float(), torch.sigmoid(old_logits.float()))


def double_sigmoid_distillation(logits_old_classes: torch.Tensor, old_logits: torch.Tensor) -> torch.Tensor:
    """The AV-CIL reference's iCaRL distillation, reproduced exactly (`iCaRL/train_incremental_icarl.py:55-62`):
    `F.binary_cross_entropy_with_logits(torch.sigmoid(z[:, :old]), torch.sigmoid(z_old))`.

    With p = sigmoid(sigmoid(z)) (BCE-with-logits applies a second sigmoid) and q = sigmoid(z_old):
    loss = mean over samples and old classes of -(q log p + (1 - q) log(1 - p)). Since sigmoid(z) lies in (0, 1),
    p lies in (1/2, 0.731): a reference bug (methods/icarl/README.md); selectable with `distillation: reference`.
    """
    return F.binary_cross_entropy_with_logits(
        torch.sigmoid(logits_old_classes.float()), torch.sigmoid(old_logits.float())
    )


#: iCaRL's `distillation` config values: the harness's fixed form (default) and the reference's double sigmoid
ICARL_DISTILLATIONS = {"single-sigmoid": sigmoid_distillation, "reference": double_sigmoid_distillation}


def icarl_distillation(
    logits_old_classes: torch.Tensor, old_logits: torch.Tensor, form: str = "single-sigmoid"
) -> torch.Tensor:
    """iCaRL's distillation in the form named by the config's `distillation` (`ICARL_DISTILLATIONS`)."""
    if form not in ICARL_DISTILLATIONS:
        raise ValueError(f"icarl distillation must be one of {tuple(ICARL_DISTILLATIONS)}, got {form!r}")
    return ICARL_DISTILLATIONS[form](logits_old_classes, old_logits)


# ---------------------------------------------------------------------------------------------
# SS-IL (methods/ssil) and AV-CIL (methods/av_cil) terms. Section references are to
# ../shared/reference/av_cil.md; line numbers to weiguoPian/AV-CIL_ICCV2023 at 6dd105d.


def separated_softmax_ce(logits: torch.Tensor, y: torch.Tensor, is_old: torch.Tensor, old_classes: int) -> torch.Tensor:
    """SS-IL separated-softmax cross-entropy (Ahn et al., ICCV 2021; av_cil.md 3.6 and 3.8,
    `SSIL/train_incremental_ssil.py:165-171`, `ours/train_incremental_ours.py:198-204`).

    With o = old_classes and h = logits.shape[1] (the seen classes; columns o..h-1 are the
    current step's), per sample i:
        current  (is_old[i] false): l_i = -log softmax(z_i[o:h])[y_i - o]   (labels shifted by o)
        exemplar (is_old[i] true):  l_i = -log softmax(z_i[:o])[y_i]
    loss = (1/N) sum_i l_i = (n_cur * CE_cur + n_ex * CE_ex) / (n_cur + n_ex),
    i.e. the sample-count-weighted average of the two batch means, as the reference combines
    them. Current labels must lie in [o, h) and exemplar labels in [0, o) (checked without a
    host sync). With o = 0 it is plain CE over all logits.
    """
    z = logits.float()
    hi = z.shape[1]
    if old_classes <= 0:
        return F.cross_entropy(z, y)
    valid = torch.where(is_old, y < old_classes, (y >= old_classes) & (y < hi))
    torch._assert_async(
        valid.all(), "separated_softmax_ce: current labels must be new classes and exemplar labels old classes"
    )
    new_target = (y - old_classes).clamp(0, hi - old_classes - 1)
    nll_new = -F.log_softmax(z[:, old_classes:], dim=1).gather(1, new_target[:, None]).squeeze(1)
    nll_old = -F.log_softmax(z[:, :old_classes], dim=1).gather(1, y.clamp(0, old_classes - 1)[:, None]).squeeze(1)
    return torch.where(is_old, nll_old, nll_new).mean()


def _audio_visual_similarity(f_a: torch.Tensor, f_v: torch.Tensor, tau: float) -> torch.Tensor:
    """S_ij = <f_a,i / |f_a,i|, f_v,j / |f_v,j|> / tau, in fp32 even under autocast (a bf16 matmul
    would round S = cos / 0.05, up to 20, to steps of 0.125)."""
    with torch.autocast(device_type=f_a.device.type, enabled=False):
        return F.normalize(f_a.float(), dim=1) @ F.normalize(f_v.float(), dim=1).T / tau


def instance_infonce(f_a: torch.Tensor, f_v: torch.Tensor, tau: float) -> torch.Tensor:
    """AV-CIL instance-aware audio-to-visual similarity L_I (D-AVSC; av_cil.md 3.8,
    `ours/train_incremental_ours.py:43-50, 173-174`).

    S = norm(f_a) norm(f_v)^T / tau (N x N over the whole batch); the matching visual of each
    audio is the positive:  L_I = -(1/N) sum_i log softmax_j(S_i)[i]  (CE with the diagonal as
    target, rows = audio, so audio-to-visual only).
    """
    s = _audio_visual_similarity(f_a, f_v, tau)
    return F.cross_entropy(s, torch.arange(len(s), device=s.device))


def class_infonce(
    f_a: torch.Tensor, f_v: torch.Tensor, y: torch.Tensor, tau: float, normalization: str = "released"
) -> torch.Tensor:
    """AV-CIL class-aware audio-to-visual similarity L_C (D-AVSC; av_cil.md 3.8,
    `ours/train_incremental_ours.py:52-69, 176-178`).

    S as in `instance_infonce` (with tau_C), positives M_ij = [y_i = y_j] over the batch
    (the diagonal is always positive), log p_ij = log softmax_j(S_i):
      "released": L_C = -(1/N^2) sum_i sum_j M_ij log p_ij   (the released code: a mean over
                  all N x N entries; the released lambda_C was tuned with it)
      "paper":    L_C = -(1/N) sum_i (1/|P(i)|) sum_{j in P(i)} log p_ij,  P(i) = {j: y_j = y_i}
                  (the paper's Eq. (7), per the comment in the released function)
    """
    s = _audio_visual_similarity(f_a, f_v, tau)
    log_p = F.log_softmax(s, dim=1)
    positives = (y[:, None] == y[None, :]).float()
    if normalization == "released":
        return -(positives * log_p).sum() / (len(s) ** 2)
    if normalization == "paper":
        return -((positives * log_p).sum(1) / positives.sum(1)).mean()
    raise ValueError(f"class_infonce normalization must be 'released' or 'paper', got {normalization!r}")


def attention_kl_sum(
    new_attention: torch.Tensor, old_attention: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """AV-CIL visual attention distillation (VAD; av_cil.md 3.8, `ours/train_incremental_ours.py:180-194`):
    sum over every attention distribution of KL(old || new), divided by the number of samples.

    Inputs are attention probabilities, batch first, e.g. spatial alpha (B, T, P, D)
    (distributions over P) or temporal beta (B, T, D) (distributions over T). The reference
    transposes to put the distribution axis last, flattens to (-1, P) and calls
    `F.kl_div(log new, old, reduction='sum') / B_e`; a KL *sum* does not depend on the layout,
    so here it is sum_elements old * (log old - log new) per sample. `mask` (B,) bool selects
    the rows that count (the exemplars): loss = sum_{i in mask} KL_i / |mask| (0 if empty),
    computed without indexing, so without a host sync.

    Log-probabilities: log(p) of the fp32 probabilities, clamped at the smallest normal fp32
    as a guard only. In the AV-CIL network every attention score is a product of two tanh
    outputs, so it lies in [-1, 1] and every weight is >= e^-2 / (length of its axis)
    (>= 6.9e-4 for 196 positions): far from underflow, and d log p / dp = 1/p stays bounded,
    so log(softmax) is as accurate as log_softmax here.
    """
    q = old_attention.float()
    log_p = torch.log(new_attention.float().clamp_min(torch.finfo(torch.float32).tiny))
    per_sample = (torch.xlogy(q, q) - q * log_p).flatten(1).sum(1)
    if mask is None:
        return per_sample.sum() / max(len(per_sample), 1)
    weights = mask.to(per_sample.dtype)
    return (per_sample * weights).sum() / weights.sum().clamp_min(1.0)
