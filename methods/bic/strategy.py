"""BiC (Wu et al., CVPR 2019) as avalanche's `BiCPlugin` (`training/plugins/bic.py`), with its bugs fixed.

Memory budget M, class-balanced (q = M // seen classes per class, store rows), split 9:1 as the paper does:
v = max(1, round(bic_val_fraction * q)) rows per class are a held-out validation memory for the bias layer (the
new classes' v rows are taken out of their training data at the start of the step, bic.py:132-173), the other
q - v per class are training exemplars (random), mixed into the new data as in the paper.

Stage 1 (every step): (1 - lambda) CE over all seen classes + lambda * distillation of the old classes' logits
(`methods/_clstrategies/losses.py:bic_distillation`, T = `bic_temperature`), lambda = old / seen classes; the
teacher is the previous step's model, its logits corrected by the previous bias layer from step 2 on (bic.py:309-350).
Stage 2 (from step 1, after the best-val model is restored): a new bias layer alpha * z + beta on the step's new
classes (avalanche's `BiasLayer`), trained on the frozen model's logits of the validation memory for
`bic_stage2_epochs` epochs, SGD lr `bic_stage2_lr` momentum 0.9, steps x0.1 at epochs 50/100/150, CE +
0.1 * beta^2 / 2 (bic.py:352-447). Predictions apply the last bias layer (bic.py:219-230).
"""

import torch
import torch.nn.functional as F
from avalanche.models.bic_model import BiasLayer

from benchmarks.core.memory import random_exemplars
from benchmarks.core.template import step_seed
from methods._clstrategies.losses import bias_l2, bic_distillation, bic_stage1_loss
from methods._clstrategies.templates import CLStoreTemplate

STAGE2_MILESTONES = (50, 100, 150)  # bic.py:383-385


class BiC(CLStoreTemplate):
    exemplar_selection = "random"

    def __init__(self, **kwargs):
        self.val_memory: dict[int, torch.Tensor] = {}  # class -> held-out rows for the bias layer
        self.bias_layer: BiasLayer | None = None
        self.bias_active = False  # the bias layer corrects predictions outside stage 1
        super().__init__(**kwargs)

    # ------------------------------------------------------------------ memory split
    def val_quota(self) -> int:
        return max(1, round(self.cfg["bic_val_fraction"] * self.per_class_quota()))

    def training_rows(self):
        self.bias_active = False
        v = self.val_quota()
        for c in list(self.val_memory):
            self.val_memory[c] = self.val_memory[c][:v]
        rows, targets = self.stream.step("train", self.step_index)
        held = torch.zeros(len(rows), dtype=torch.bool)
        generator = torch.Generator().manual_seed(step_seed(self.seed, self.step_index, salt=5))
        for c in range(*self.step_bounds):
            idx = torch.nonzero(targets == c).squeeze(1)
            pick = idx[random_exemplars(len(idx), v, generator)]
            self.val_memory[c] = rows[pick]
            held[pick] = True
        self.new_rows, self.new_targets = rows[~held], targets[~held]
        if self.memory:
            mem_rows, mem_targets = self.memory_tensors()
            return torch.cat([self.new_rows, mem_rows]), torch.cat([self.new_targets, mem_targets])
        return self.new_rows, self.new_targets

    def per_class_train_quota(self) -> int:
        m = self.per_class_quota() - self.val_quota()
        if m < 1:
            raise ValueError(
                f"bic: memory {self.cfg['memory']} leaves {self.per_class_quota()} exemplar(s) per class over "
                f"{self.seen_classes} classes; the 9:1 train/validation split needs at least 2 per class"
            )
        return m

    def select_memory(self) -> None:
        """Training exemplars: q - v random rows per class, from the rows not held out."""
        m = self.per_class_train_quota()
        for c in list(self.memory):
            self.memory[c] = self.memory[c][:m]
        generator = torch.Generator().manual_seed(step_seed(self.seed, self.step_index, salt=3))
        for c in range(*self.step_bounds):
            idx = torch.nonzero(self.new_targets == c).squeeze(1)
            self.memory[c] = self.new_rows[idx[random_exemplars(len(idx), m, generator)]]

    # ------------------------------------------------------------------ stage 1
    def loss_fn(self, out, y):
        logits = out["logits"].float()
        ce = F.cross_entropy(logits, y)
        if self.step_index == 0:
            return ce
        old = self.step_bounds[0]
        with torch.no_grad():
            old_logits = self.old_model(self.mb_x)["logits"].float()
            if self.bias_layer is not None:  # the previous step's correction of its new classes (bic.py:320-333)
                old_logits = self.bias_layer(old_logits)
        distill = bic_distillation(logits[:, :old], old_logits[:, :old], self.cfg["bic_temperature"])
        return bic_stage1_loss(ce, distill, old, self.seen_classes)

    # ------------------------------------------------------------------ stage 2
    def after_step(self):
        super().after_step()
        if self.step_index > 0:
            self.train_bias_layer()
        self.bias_active = True

    def train_bias_layer(self) -> None:
        classes = sorted(self.val_memory)
        rows = torch.cat([self.val_memory[c] for c in classes])
        targets = torch.cat([torch.full((len(self.val_memory[c]),), c) for c in classes]).to(self.device)
        logits = self.features_of(rows, key="logits", normalize=False).detach()  # the frozen model, eval mode
        layer = BiasLayer(range(*self.step_bounds)).to(self.device)
        optimizer = torch.optim.SGD(layer.parameters(), lr=self.cfg["bic_stage2_lr"], momentum=0.9)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(STAGE2_MILESTONES), gamma=0.1)
        generator = torch.Generator().manual_seed(step_seed(self.seed, self.step_index, salt=6))
        for _ in range(self.cfg["bic_stage2_epochs"]):
            order = torch.randperm(len(rows), generator=generator).to(self.device)
            for b in range(0, len(rows), self.train_mb_size):
                idx = order[b : b + self.train_mb_size]
                loss = F.cross_entropy(layer(logits[idx]), targets[idx]) + bias_l2(layer.beta)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            scheduler.step()
        layer.eval()
        for p in layer.parameters():
            p.requires_grad_(False)
        self.bias_layer = layer

    @torch.no_grad()
    def predict_batch(self, views):
        with self.autocast():
            logits = self.model(views)["logits"][:, : self.seen_classes].float()
        if self.bias_active and self.bias_layer is not None:
            logits = self.bias_layer(logits)
        return logits.argmax(1)

    def step_report(self) -> dict:
        if self.bias_layer is None:
            return {}
        return {"bias_alpha": float(self.bias_layer.alpha), "bias_beta": float(self.bias_layer.beta)}

    # ------------------------------------------------------------------ checkpoints
    def extra_state(self) -> dict:
        state = {**super().extra_state(), "val_memory": {str(c): r for c, r in self.val_memory.items()}}
        if self.bias_layer is not None:
            state["bias"] = {k: v.detach().cpu() for k, v in self.bias_layer.state_dict().items()}
        return state

    def load_extra_state(self, extra: dict) -> None:
        super().load_extra_state(extra)
        self.val_memory = {int(c): r for c, r in extra.get("val_memory", {}).items()}
        if "bias" in extra:
            self.bias_layer = BiasLayer(extra["bias"]["clss"].tolist()).to(self.device)
            self.bias_layer.load_state_dict(extra["bias"])
            self.bias_layer.requires_grad_(False)
        self.bias_active = True
