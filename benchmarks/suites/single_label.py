"""The single-label suite kind (`audio-visual`): its template and its per-step evaluation.

`StoreTemplate` (on `benchmarks.core.template.HarnessTemplate`) is the base of every single-label
method:
- the train set of a step is whatever the method says (`training_rows`): new-class rows,
  plus exemplar ids from `self.memory`, or all seen rows for the upper bound;
- exemplar memories hold store rows, not copies of data (selection: benchmarks.core.memory);
- model selection: after every epoch, accuracy on the val split of all seen classes; the
  best state is restored at the end of the step. Ties follow the method's reference
  (`selection_ties`): `first` keeps the first best epoch (strictly greater: the AV-CIL family,
  `if val_top1 > best_val_res` in AV-CIL_ICCV2023's train_incremental_*.py), `last` the last one
  (>=: CIGN, `if av_acc >= best_avacc` in stoneMo/CIGN train.py:248).

`SingleLabel` evaluates the selected model (and the last-epoch model) of each step on the test
split of all seen classes into the accuracy matrix R (benchmarks.metrics.accuracy).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from benchmarks.core.memory import herding, random_exemplars
from benchmarks.core.protocols import Protocol
from benchmarks.core.streams import CILStream, build_stream
from benchmarks.core.template import HarnessTemplate, IndexBatches, ResidentViews, step_seed
from benchmarks.metrics import accuracy
from benchmarks.suites.kind import SuiteKind, fmt
from datasets.base import MODALITY_VIEWS
from datasets.errors import ConfigError

#: `selection_ties` values: keep the first (strictly greater) or the last (>=) of the epochs with the best val accuracy
SELECTION_TIES = ("first", "last")


class StoreTemplate(HarnessTemplate):
    """Base strategy of the single-label methods. Subclasses override `loss_fn(out, y)`, and optionally
    `training_rows`, `model_adaptation_step`, `prepare_prediction`, `predict_batch`, `after_step`."""

    memory: dict[int, torch.Tensor]  # class position -> exemplar store rows, in priority order

    #: how exemplars are chosen after each step: None (no memory), "herding" or "random"
    exemplar_selection: str | None = None

    def __init__(self, **kwargs):
        self.memory = {}
        super().__init__(**kwargs)

    def default_views(self, modality: str) -> tuple[str, ...]:
        return MODALITY_VIEWS[modality]

    # ------------------------------------------------------------------ step set-up
    @property
    def seen_classes(self) -> int:
        return self.stream.protocol.seen_classes(self.step_index)

    @property
    def separate_exemplar_batches(self) -> bool:
        """SS-IL-style batching: each current-data batch is joined by an exemplar batch (see IndexBatches)."""
        return self.cfg.get("exemplar_batching", "mixed") == "separate"

    def training_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Train set of the current step: new-class rows plus exemplars when the method has memory."""
        rows, targets = self.stream.step("train", self.step_index)
        if self.memory and not self.separate_exemplar_batches:
            mem_rows, mem_targets = self.memory_tensors()
            rows, targets = torch.cat([rows, mem_rows]), torch.cat([targets, mem_targets])
        return rows, targets

    def memory_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        classes = sorted(self.memory)
        rows = [self.memory[c] for c in classes]
        targets = [torch.full((len(r),), c, dtype=torch.long) for c, r in zip(classes, rows)]
        if not rows:
            return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
        return torch.cat(rows), torch.cat(targets)

    def train_dataset_adaptation(self, **kwargs):
        super().train_dataset_adaptation(**kwargs)  # keeps avalanche's bookkeeping of the experience
        self.step_index = self.experience.current_experience
        torch.manual_seed(step_seed(self.seed, self.step_index))
        self.rng = np.random.default_rng(step_seed(self.seed, self.step_index, salt=1))
        self.train_rows, self.train_targets = self.training_rows()

    def make_train_dataloader(self, shuffle=True, **kwargs):
        generator = torch.Generator().manual_seed(step_seed(self.seed, self.step_index, salt=2))
        self.resident = self.eval_resident = None  # the previous step's copies go before the new ones arrive
        resident_rows = self.train_rows
        exemplars = None
        if self.separate_exemplar_batches and self.memory:
            mem_rows, mem_targets = self.memory_tensors()
            resident_rows = torch.cat([self.train_rows, mem_rows])
            size = min(self.cfg["exemplar_batch_size"], len(mem_rows))
            exemplars = IndexBatches(mem_rows, mem_targets, size, True, True, generator, self.device)
        self.resident = ResidentViews(self.store, self.views, resident_rows, self.device)
        if self.selects_on_val:  # evaluated after every epoch: resident too, so no epoch reads the store
            val_rows, _ = self.stream.seen("val", self.step_index)
            if not self.resident.covers(val_rows):
                self.eval_resident = ResidentViews(self.store, self.views, val_rows, self.device)
        self.dataloader = IndexBatches(
            self.train_rows,
            self.train_targets,
            self.train_mb_size,
            shuffle,
            self.cfg.get("drop_last", True),
            generator,
            self.device,
            exemplars,
        )

    def model_adaptation(self, model=None):
        """Keep the previous step's model as the teacher, then grow the classifier."""
        self.keep_teacher()
        self.model_adaptation_step()
        return self.model.to(self.device)

    def model_adaptation_step(self):
        """Default: expand the classifier to the seen classes, keeping old rows (reference)."""
        self.model.expand_classifier(self.seen_classes)

    def make_optimizer(self, **kwargs):
        """A fresh Adam at every step, as the reference re-creates it after reloading the model."""
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=self.cfg["lr"], weight_decay=self.cfg["weight_decay"]
        )

    # ------------------------------------------------------------------ minibatch
    def _unpack_minibatch(self):
        rows, targets, task, is_exemplar = self.mbatch
        self.mb_rows, self.mb_is_exemplar = rows, is_exemplar
        self.mbatch = [self.resident.gather(rows), targets, task]

    def criterion(self):
        with self.autocast():
            return self.loss_fn(self.mb_output, self.mb_y)

    def loss_fn(self, out, y) -> torch.Tensor:
        """Plain CE over all seen-class logits. Methods override."""
        return torch.nn.functional.cross_entropy(out["logits"].float(), y)

    # ------------------------------------------------------------------ epochs and selection
    def _before_training_exp(self, **kwargs):
        super()._before_training_exp(**kwargs)
        _ = self.selection_ties  # a bad value stops the step before it trains
        self.best = {"acc": -math.inf, "epoch": -1, "state": None}

    @property
    def selects_on_val(self) -> bool:
        """`model_selection: best-val` (default, the AV-CIL family), `last` (keep the last epoch's model) or
        `training-free` (methods/_frozen: one statistics pass, nothing to select)."""
        return self.cfg.get("model_selection", "best-val") == "best-val"

    @property
    def selection_ties(self) -> str:
        """Which of several epochs with the best val accuracy is kept: `first` (default; strictly greater, as the
        AV-CIL family's `val_top1 > best_val_res`) or `last` (>=, as CIGN's `av_acc >= best_avacc`)."""
        ties = self.cfg.get("selection_ties", "first")
        if ties not in SELECTION_TIES:
            raise ConfigError(f"selection_ties must be one of {', '.join(SELECTION_TIES)}, got {ties!r}")
        return ties

    def is_new_best(self, val_acc: float) -> bool:
        """Whether this epoch's val accuracy replaces the kept model (the method's tie rule)."""
        best = self.best["acc"]
        return val_acc >= best if self.selection_ties == "last" else val_acc > best

    def _after_training_epoch(self, **kwargs):
        super()._after_training_epoch(**kwargs)
        self.epoch += 1
        if not self.selects_on_val:  # no validation pass at all
            self.bar.set_postfix(loss=f"{float(self.epoch_loss) / max(1, self.epoch_batches):.3f}")
            self.bar.update()
            return
        val_acc = self.evaluate_split("val")
        if self.is_new_best(val_acc):  # ties: the method's reference rule (`selection_ties`)
            self.best = {
                "acc": val_acc,
                "epoch": self.epoch,
                "state": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            }
        self.bar.set_postfix(
            loss=f"{float(self.epoch_loss) / max(1, self.epoch_batches):.3f}",
            val=f"{val_acc:.1f}",
            best=f"{self.best['acc']:.1f}@{self.best['epoch']}",
        )
        self.bar.update()

    def _after_training_exp(self, **kwargs):
        self.bar.close()
        self.eval_resident = None
        # the last-epoch model, for comparison (None: it is the selected model, so the runner reuses its test pass)
        self.last_epoch_test = self.predict_split("test") if self.selects_on_val else None
        if self.best["state"] is not None:
            self.model.load_state_dict(self.best["state"])
        self.history.append(
            {"best_val_epoch": self.best["epoch"], "val_acc": self.best["acc"] if self.selects_on_val else None}
        )
        self.best = None
        self.after_step()  # e.g. herding, on the still-resident training views
        self.resident = None
        super()._after_training_exp(**kwargs)

    def after_step(self):
        """Hook after the best model is restored. Default: refresh the exemplar memory."""
        if self.exemplar_selection:
            self.select_memory()

    def per_class_quota(self) -> int:
        """M // seen classes: the reference's quota after step t (= M // (t k) while training step t+1)."""
        quota = self.cfg["memory"] // self.seen_classes
        if quota < 1:
            raise ValueError(
                f"memory {self.cfg['memory']} is smaller than the {self.seen_classes} seen classes: need >= 1 "
                "exemplar per class"
            )
        return quota

    def select_memory(self) -> None:
        """Choose the new classes' exemplars (herding on normalised features, or random) and
        truncate the old classes' lists to the new quota; memories hold store rows."""
        m = self.per_class_quota()
        for c in list(self.memory):
            self.memory[c] = self.memory[c][:m]
        rows, targets = self.stream.step("train", self.step_index)
        feats = self.features_of(rows) if self.exemplar_selection == "herding" else None
        generator = torch.Generator().manual_seed(step_seed(self.seed, self.step_index, salt=3))
        for c in range(*self.step_bounds):
            idx = torch.nonzero(targets == c).squeeze(1)
            if self.exemplar_selection == "herding":  # on the features' device
                chosen = herding(feats[idx.to(feats.device)], m).cpu()
            else:
                chosen = random_exemplars(len(idx), m, generator)
            self.memory[c] = rows[idx[chosen]]

    # ------------------------------------------------------------------ prediction
    @property
    def nme(self) -> bool:
        """Nearest-mean-of-exemplars classifier (config `classifier: nme`, iCaRL/AFC variants)."""
        return self.cfg.get("classifier") == "nme"

    def prepare_prediction(self):
        """Hook before predicting a split. NME: re-select the exemplars with the current model and
        take each class's mean of L2-normalised exemplar features, not re-normalised (reference
        iCaRL/AFC), before every validation (each epoch) and test prediction."""
        if not self.nme:
            return
        self.select_memory()
        rows, targets = self.memory_tensors()
        feats = self.features_of(rows)
        targets = targets.to(feats.device)
        means = torch.zeros(self.seen_classes, feats.shape[1], device=feats.device)
        means.index_add_(0, targets, feats)
        self.class_means = means / torch.bincount(targets, minlength=self.seen_classes).clamp(min=1)[:, None]

    @torch.no_grad()
    def predict_batch(self, views: dict[str, torch.Tensor]) -> torch.Tensor:
        """Argmax over the seen classes' logits, or (NME) the nearest class mean in L2 distance."""
        with self.autocast():
            out = self.model(views)
        if self.nme:
            return torch.cdist(torch.nn.functional.normalize(out["features"].float(), dim=1), self.class_means).argmin(
                1
            )
        return out["logits"][:, : self.seen_classes].float().argmax(1)

    @torch.no_grad()
    def predict_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Predictions (host tensor) of store rows; the batches stay on the device, one copy back at the end."""
        preds = [self.predict_batch(views) for _, views in self.eval_batches(rows)]
        return torch.cat(preds).cpu() if preds else torch.empty(0, dtype=torch.long)

    @torch.no_grad()
    def features_of(
        self, rows: torch.Tensor, model=None, key: str = "features", normalize: bool = True
    ) -> torch.Tensor:
        """Model features of store rows (L2-normalised by default), in eval mode, in chunks."""
        model = model or self.model
        out = []
        for _, views in self.eval_batches(rows, model):  # resident views when they hold the rows
            with self.autocast():
                f = model(views)[key].float()
            out.append(torch.nn.functional.normalize(f, dim=1) if normalize else f)
        return torch.cat(out) if out else torch.empty(0, model.feature_dim, device=self.device)

    def predict_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(predictions, targets) on the seen classes of a split."""
        rows, targets = self.stream.seen(split, self.step_index)
        self.prepare_prediction()
        return self.predict_rows(rows), targets

    def evaluate_split(self, split: str) -> float:
        pred, targets = self.predict_split(split)
        return float(100.0 * (pred == targets).float().mean())

    # ------------------------------------------------------------------ checkpoints
    def resume_state(self) -> dict:
        """Everything needed to continue after the current step: tensors and numbers only."""
        mem_rows, mem_targets = self.memory_tensors()
        return {
            "step_index": self.step_index,
            "num_classes": self.model.num_classes,
            "model": self.model_state(),
            "memory_rows": mem_rows,
            "memory_targets": mem_targets,
            "history": self.history,
            "extra": self.extra_state(),
        }

    def load_resume_state(self, state: dict) -> None:
        self.step_index = int(state["step_index"])
        self.model.expand_classifier(int(state["num_classes"]))
        self.load_model_state(state["model"])
        self.model.to(self.device)
        rows, targets = state["memory_rows"], state["memory_targets"]
        self.memory = {int(c): rows[targets == c] for c in torch.unique(targets).tolist()}
        self.history = list(state["history"])
        self.load_extra_state(state["extra"])

    def model_state(self) -> dict:
        """The model tensors a step checkpoint keeps (default: the whole state dict)."""
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def load_model_state(self, state: dict) -> None:
        self.model.load_state_dict(state)

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, extra: dict) -> None:
        pass


class SingleLabel(SuiteKind):
    name = "single-label"

    def build_stream(self, adapter, store, data_root: Path, protocol: str) -> CILStream:
        for spec in adapter.protocols():
            if spec.name == protocol:
                return build_stream(store, Protocol.from_spec(spec, len(store.class_names)))
        raise ConfigError(
            f"dataset {adapter.name} has no protocol {protocol!r}; it has "
            f"{', '.join(p.name for p in adapter.protocols())}"
        )

    def adjust_config(self, cfg: dict, stream, overrides: dict) -> None:
        cfg.setdefault("memory", stream.protocol.memory)

    def new_rows(self) -> dict:
        return {"R": [], "A": [], "R_last": [], "A_last": [], "counts": [], "reports": []}

    def evaluate_step(self, strategy, stream, t: int, rows: dict) -> None:
        step_of = torch.tensor(stream.protocol.step_of_position())
        test = strategy.predict_split("test")
        rows["reports"].append(strategy.step_report())
        for suffix, (pred, targets) in (("", test), ("_last", strategy.last_epoch_test or test)):
            row, acc, counts = accuracy.accuracy_matrix_from_predictions(
                pred.numpy(), targets.numpy(), step_of[targets].numpy(), t
            )
            rows["R" + suffix].append(row)
            rows["A" + suffix].append(acc)
        rows["counts"] = counts

    def results(self, strategy, stream, cfg: dict, rows: dict, run) -> dict:
        return {
            "selection": cfg.get("model_selection", "best-val"),
            "R": rows["R"],
            "A": rows["A"],
            "test_counts": rows["counts"],
            "metrics": accuracy.summarize(rows["R"], rows["A"]),
            **({"step_reports": rows["reports"]} if any(rows["reports"]) else {}),
            **({"method_metrics": mm} if (mm := strategy.method_metrics(rows)) else {}),
            "last_epoch": {
                "R": rows["R_last"],
                "A": rows["A_last"],
                "metrics": accuracy.summarize(rows["R_last"], rows["A_last"]),
            },
            "best_val_epoch": [h["best_val_epoch"] for h in strategy.history],
            "val_acc": [h["val_acc"] for h in strategy.history],
        }

    def summary_line(self, record: dict) -> str:
        m = record["results"]["metrics"]
        return f"avg inc acc {m['avg_inc_acc']:.2f}  last {m['last_acc']:.2f}  forgetting {fmt(m['avg_forgetting'])}"


SINGLE_LABEL = SingleLabel()
