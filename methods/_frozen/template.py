"""The training-free template of the analytic baselines (simplecil, ranpac, fecam).

A step is one pass: the pooled frozen features of the step's training clips (new classes only: these methods keep
no exemplars) go to `fit_step`, which updates the head's statistics in closed form. There is no epoch, no
optimizer, no teacher and no model selection over epochs; everything else is the single-label suite's: the
runner's per-step test evaluation into R, the step checkpoints (the head's tensors are in the model's state dict)
and the cost columns.

`history` gets one entry per step with `best_val_epoch = 1`, the one statistics pass standing for the one epoch
(the record's `best_val_epoch` is then 1 at every step), and `val_acc = None` (no epoch was selected on val).
"""

from __future__ import annotations

import math

import torch

from benchmarks.suites.single_label import StoreTemplate


class TrainingFreeTemplate(StoreTemplate):
    """Subclasses implement `fit_step(features, targets)`; the head predicts (argmax of the model's logits)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.report: dict = {}  # what `fit_step` wants kept in the record for this step (step_report)

    @property
    def selects_on_val(self) -> bool:
        return False  # one pass per step: there are no epochs to choose from

    def make_train_dataloader(self, **kwargs):
        self.dataloader = []  # no minibatches: `fit_step` sees the step's features at once

    def model_adaptation(self, model=None):
        """Grow the head to the seen classes; no teacher is kept (nothing is trained)."""
        self.model.expand_classifier(self.seen_classes)
        return self.model.to(self.device)

    def make_optimizer(self, **kwargs):
        pass  # nothing is trained: the template's placeholder optimizer is never stepped

    def _train_exp(self, experience, eval_streams=None, **kwargs):
        self.report = {}
        features = self.pooled_features(self.train_rows)
        self.fit_step(features, self.train_targets.to(features.device))
        self.epoch = 1
        self.best = {"acc": -math.inf, "epoch": 1, "state": None}  # the one pass is "epoch 1"; nothing to restore
        self.bar.update()

    @torch.no_grad()
    def pooled_features(self, rows: torch.Tensor) -> torch.Tensor:
        """(len(rows), D) pooled frozen features, extracted in chunks of eval_batch_size."""
        chunks = [self.model.pooling(views) for _, views in self.eval_batches(rows)]
        return torch.cat(chunks) if chunks else torch.empty(0, self.model.feature_dim, device=self.device)

    def fit_step(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        """Update the head from the current step's training features (targets: class positions)."""
        raise NotImplementedError

    def step_report(self) -> dict:
        return dict(self.report)
