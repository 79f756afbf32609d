"""Learning without Forgetting as in the AV-CIL reference: new-logit CE + task-wise KD, no exemplars."""

import torch
import torch.nn.functional as F

from benchmarks.suites.single_label import StoreTemplate
from methods._avcil.losses import taskwise_kd


class LwF(StoreTemplate):
    def loss_fn(self, out, y):
        if self.step_index == 0:
            return F.cross_entropy(
                out["logits"].float(), y
            )  # the reference's step-0 branch (crashes there; intended: plain CE)
        lo, hi = self.step_bounds
        ce = F.cross_entropy(out["logits"][:, lo:hi].float(), y - lo)  # softmax over the new classes only
        with torch.no_grad():
            old_logits = self.old_model(self.mb_x)["logits"]
        bounds = [self.stream.protocol.step_bounds(j) for j in range(self.step_index)]
        return ce + self.cfg["kd_weight"] * taskwise_kd(out["logits"], old_logits, bounds, T=self.cfg["kd_temperature"])
