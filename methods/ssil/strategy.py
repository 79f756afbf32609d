"""SS-IL (Ahn et al., ICCV 2021) as adapted by the AV-CIL reference (SSIL/train_incremental_ssil.py).

Step 0: plain CE. Step t >= 1: every current-data batch is joined by a batch of random
exemplars (cycled, `exemplar_batching: separate`); loss = separated-softmax CE (new-class
logits for current data, old-class logits for exemplars, sample-count-weighted) + task-wise
KD (T = 2, x T^2, summed over the old steps) on current and exemplar samples, teacher = the
previous step's selected model. Exemplars: random, M // seen classes per class.
"""

import torch
import torch.nn.functional as F

from benchmarks.suites.single_label import StoreTemplate
from methods._avcil.losses import separated_softmax_ce, taskwise_kd


class SSIL(StoreTemplate):
    exemplar_selection = "random"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if not self.separate_exemplar_batches:
            raise ValueError(
                f"{type(self).__name__} needs `exemplar_batching: separate` (a current batch joined by an exemplar "
                f"batch); got {self.cfg.get('exemplar_batching')!r}"
            )

    @property
    def old_step_bounds(self) -> list[tuple[int, int]]:
        return [self.stream.protocol.step_bounds(j) for j in range(self.step_index)]

    @torch.no_grad()
    def teacher_output(self) -> dict[str, torch.Tensor]:
        """The previous step's selected model (frozen, eval mode) on the whole mixed batch."""
        return self.old_model(self.mb_x)

    def ssil_terms(self, out, y, old_out) -> tuple[torch.Tensor, torch.Tensor]:
        """(separated-softmax CE, task-wise KD) of a mixed batch; `self.mb_is_exemplar` marks the exemplar rows."""
        ce = separated_softmax_ce(out["logits"], y, self.mb_is_exemplar, self.step_bounds[0])
        kd = taskwise_kd(out["logits"], old_out["logits"], self.old_step_bounds, T=self.cfg["kd_temperature"])
        return ce, kd

    def loss_fn(self, out, y):
        if self.step_index == 0:
            return F.cross_entropy(out["logits"].float(), y)
        ce, kd = self.ssil_terms(out, y, self.teacher_output())
        return ce + self.cfg["kd_weight"] * kd
