"""Loss terms shared by several methods. Each is tested on hand-checkable tensors."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def taskwise_kd(logits: torch.Tensor, old_logits: torch.Tensor, bounds: list[tuple[int, int]], T: float = 2.0) -> torch.Tensor:
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
