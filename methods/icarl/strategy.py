"""iCaRL as adapted by the AV-CIL reference (iCaRL/train_incremental_icarl.py).

Train set = new-class data + exemplars. Loss = CE over all seen classes + sigmoid
distillation of the old-class logits against the previous model (config `distillation`:
"single-sigmoid", the default, or "reference", the reference's double sigmoid; README). Exemplars: herding on
L2-normalised fused features, M // seen_classes per class. Classifier: NME (nearest mean of
exemplar features; herding and means recomputed before every val/test prediction, as the
reference does every epoch) or FC (the softmax head; exemplars chosen once after the step).
"""

import torch
import torch.nn.functional as F

from benchmarks.suites.single_label import StoreTemplate
from methods._avcil.losses import ICARL_DISTILLATIONS, icarl_distillation


class ICaRL(StoreTemplate):
    exemplar_selection = "herding"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.cfg["distillation"] not in ICARL_DISTILLATIONS:  # fail before training, not at step 1
            raise ValueError(
                f"icarl distillation must be one of {tuple(ICARL_DISTILLATIONS)}, got {self.cfg['distillation']!r}"
            )

    def loss_fn(self, out, y):
        logits = out["logits"].float()
        loss = F.cross_entropy(logits, y)
        if self.step_index > 0:
            old_classes = self.step_bounds[0]
            with torch.no_grad():
                old_logits = self.old_model(self.mb_x)["logits"]
            loss = loss + self.cfg["distillation_weight"] * icarl_distillation(
                logits[:, :old_classes], old_logits[:, :old_classes], self.cfg["distillation"]
            )
        return loss
