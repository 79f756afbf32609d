"""iCaRL as adapted by the AV-CIL reference (iCaRL/train_incremental_icarl.py).

Train set = new-class data + exemplars. Loss = CE over all seen classes + sigmoid
distillation of the old-class logits against the previous model. Exemplars: herding on
L2-normalised fused features, M // seen_classes per class. Classifier: NME (nearest mean of
exemplar features; herding and means recomputed before every val/test prediction, as the
reference does every epoch) or FC (the softmax head; exemplars chosen once after the step).
"""
import torch
import torch.nn.functional as F

from benchmarks.avalanche_layer import StoreTemplate
from methods.common.losses import sigmoid_distillation


class ICaRL(StoreTemplate):
    exemplar_selection = "herding"

    def loss_fn(self, out, y):
        logits = out["logits"].float()
        loss = F.cross_entropy(logits, y)
        if self.step_index > 0:
            old_classes = self.step_bounds[0]
            with torch.no_grad():
                old_logits = self.old_model(self.mb_x)["logits"]
            loss = loss + self.cfg["distillation_weight"] * sigmoid_distillation(logits[:, :old_classes], old_logits[:, :old_classes])
        return loss

    def prepare_prediction(self):
        if self.cfg["classifier"] != "nme":
            return
        self.select_memory()
        rows, targets = self.memory_tensors()
        feats = self.features_of(rows)
        targets = targets.to(feats.device)
        means = torch.zeros(self.seen_classes, feats.shape[1], device=feats.device)
        means.index_add_(0, targets, feats)
        # Mean of normalised exemplar features, not re-normalised (reference).
        self.class_means = means / torch.bincount(targets, minlength=self.seen_classes).clamp(min=1)[:, None]

    @torch.no_grad()
    def predict_batch(self, views):
        if self.cfg["classifier"] != "nme":
            return super().predict_batch(views)
        with self.autocast():
            f = self.model(views)["features"].float()
        return torch.cdist(F.normalize(f, dim=1), self.class_means).argmin(1)
