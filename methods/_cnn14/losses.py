"""Loss terms of the multi-label CIL methods (reference: `main_audioset._train` of
mulimani/CIL-ML-Audio; ../shared/reference/multilabel_audio.md section 5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 2.0, reduction: str = "mean"
) -> torch.Tensor:
    """Output distillation L_OD = T^2 KL(softmax(teacher/T) || softmax(student/T)) over the old classes.

    reduction "mean" (default; the reference's `nn.KLDivLoss()` default): the elementwise KL terms averaged
    over batch x classes, i.e. the batchmean value divided by the number of old classes.
    reduction "batchmean" (ml_indl-persample): the KL divergence per sample, averaged over the batch.
    """
    if reduction not in ("batchmean", "mean"):
        raise ValueError("kd_reduction must be 'batchmean' or 'mean'")
    log_p = F.log_softmax(student_logits.float() / T, dim=1)
    q = F.softmax(teacher_logits.float() / T, dim=1)
    total = F.kl_div(log_p, q, reduction="sum")
    return T * T * total / (log_p.shape[0] if reduction == "batchmean" else log_p.numel())


def feature_cosine(z_student: torch.Tensor, z_teacher: torch.Tensor, mode: str = "batch") -> torch.Tensor:
    """Feature distillation L_FD = 1 - cos(z_teacher, z_student) on the last conv block's output.

    mode "batch" (default; the reference): one cosine between the whole minibatch flattened into one vector.
    mode "per_sample" (ml_indl-persample): the cosine of each sample's flattened map, averaged.
    """
    zs, zt = z_student.float(), z_teacher.float()
    if mode == "per_sample":
        return 1.0 - F.cosine_similarity(zs.flatten(1), zt.flatten(1), dim=1).mean()
    if mode == "batch":
        return 1.0 - F.cosine_similarity(zs.flatten(), zt.flatten(), dim=0)
    raise ValueError("fd_mode must be 'per_sample' or 'batch'")


def adaptive_lambda(seen: int, new: int, base: float = 5.0, power: float = 0.66) -> float:
    """CCIL's adaptive distillation weight lambda_t = base * (seen / new) ** power,
    seen = all classes after phase t (35 at phase 1): 18.06, 19.72, 21.32, 22.85 for phases 1-4."""
    return base * (seen / new) ** power
