"""iCaRL as adapted by the AV-CIL reference (iCaRL/train_incremental_icarl.py).

Train set = new-class data + exemplars. Loss = CE over all seen classes + sigmoid
distillation of the old-class logits against the previous model. Exemplars: herding on
L2-normalised fused features, M // seen_classes per class. Classifier: NME (nearest mean of
exemplar features; herding and means recomputed before every val/test prediction, as the
reference does every epoch) or FC (the softmax head; exemplars chosen once after the step).
"""

import torch
import torch.nn.functional as F

from benchmarks.suites.single_label import StoreTemplate
from methods._avcil.losses import sigmoid_distillation


class ICaRL(StoreTemplate):
    exemplar_selection = "herding"

    def loss_fn(self, out, y):
        logits = out["logits"].float()
        loss = F.cross_entropy(logits, y)
        if self.step_index > 0:
            old_classes = self.step_bounds[0]
            with torch.no_grad():
                old_logits = self.old_model(self.mb_x)["logits"]
            loss = loss + self.cfg["distillation_weight"] * sigmoid_distillation(
                logits[:, :old_classes], old_logits[:, :old_classes]
            )
        return loss
