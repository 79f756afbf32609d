"""The multi-label suite kind (`run_all.py --suite audio-multilabel`): streams, template, per-phase evaluation.

Streams (../shared/reference/multilabel_audio.md section 13). Avalanche's class-incremental
generators need one class per sample, so the stream is built with `benchmark_from_datasets`
from one dataset per phase: train experience t holds phase t's clips as (store row, 50-dim
multi-hot target, 50-dim label mask); the mask marks the columns the phase's file labels (its
5 new classes, or the 30 base classes at phase 0): old-class presence in a new-phase clip is
unknown, not negative. Test experience t is the cumulative test file of phase t, its mask the
30 + 5t seen columns. The class-timeline attributes (`classes_in_this_experience`,
`previous_classes`, `classes_seen_so_far`, `future_classes`) are attached by hand.

Template (`MultiLabelTemplate`, an avalanche `SupervisedTemplate`): index minibatches over store
rows (the `IndexBatches`/`ResidentViews` of benchmarks.core.template), the previous phase's
model kept frozen as `self.old_model`, the head grown by the new classes, SGD + cosine schedule
per phase, per-phase seeding (a resumed run draws what an uninterrupted one draws). No
validation split and no model selection: the last-epoch model of each phase is evaluated, as
in the reference.

Evaluation (`MultiLabel`, run by benchmarks.run.cell): after each phase, sigmoid scores on the
phase's cumulative test set -> `benchmarks.metrics.multilabel.phase_metrics`; with
`--keep-phase-checkpoints` each phase's model is also kept as `<record>.phases/phase<t>.pt` (input
of `python -m benchmarks.tools.cka`). Record: the usual schema (benchmarks/core/records.py) with
`results.kind == "multilabel"`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.core.protocols import Protocol
from benchmarks.core.template import HarnessTemplate, IndexBatches, ResidentViews, step_seed
from benchmarks.metrics import multilabel as ml_metrics
from benchmarks.suites.kind import SuiteKind, fmt
from datasets.io import atomic_write_bytes
from datasets.store import FeatureStore

log = logging.getLogger(__name__)


# ============================================================================ streams
class MultiLabelIds(torch.utils.data.Dataset):
    """Items are (store row, multi-hot target over all classes, label mask, task label 0)."""

    def __init__(self, rows: torch.Tensor, y: torch.Tensor, mask: torch.Tensor):
        self.rows, self.y, self.mask = rows, y, mask

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i], self.y[i], self.mask[i], 0


@dataclass
class MultiLabelStream:
    dataset: str
    protocol: Protocol
    benchmark: object
    train: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # per phase: rows, y (n, C), mask (n, C)
    test: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    class_names: list[str]
    skipped: list[str]
    hash: str

    @property
    def num_classes(self) -> int:
        return self.protocol.num_classes

    @property
    def base_classes(self) -> int:
        return self.protocol.classes_per_step[0]

    def seen(self, t: int) -> int:
        return self.protocol.seen_classes(t)

    def train_set(self, t: int, mode: str = "phase") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, y, mask) over the seen columns: phase t's records, or ("joint") phases 0..t merged by row."""
        seen = self.seen(t)
        if mode == "phase":
            rows, y, mask = self.train[t]
            return rows, y[:, :seen], mask[:, :seen]
        if mode != "joint":
            raise ValueError(f"unknown train set mode {mode!r}")
        rows = torch.cat([self.train[i][0] for i in range(t + 1)])
        y = torch.cat([self.train[i][1] for i in range(t + 1)])[:, :seen]
        mask = torch.cat([self.train[i][2] for i in range(t + 1)])[:, :seen]
        uniq, inv = torch.unique(rows, return_inverse=True)
        # labels and masks are 0/1: a clip listed in several phase files gets the union of what they label
        Y = torch.zeros(len(uniq), seen).index_add_(0, inv, y * mask).clamp_(max=1.0)
        Mk = torch.zeros(len(uniq), seen).index_add_(0, inv, mask.float()).clamp_(max=1.0)
        return uniq, Y, Mk.bool()

    def test_set(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows, y, _ = self.test[t]
        return rows, y[:, : self.seen(t)]

    def counts(self) -> dict:
        return {"train": [len(r) for r, _, _ in self.train], "test": [len(r) for r, _, _ in self.test]}

    def describe(self) -> dict:
        return {
            "hash": self.hash,
            **self.protocol.to_json(),
            "class_names": self.class_names,
            "counts": self.counts(),
            "kind": "multilabel",
            "skipped": self.skipped,
        }


def _tensors(records, lo: int, hi: int, n_classes: int, row_of: dict[str, int]):
    rows = torch.tensor([row_of[r.path] for r in records], dtype=torch.long)
    y = torch.zeros(len(records), n_classes)
    if records:
        y[:, lo:hi] = torch.from_numpy(np.stack([r.labels for r in records]).astype(np.float32))
    mask = torch.zeros(len(records), n_classes, dtype=torch.bool)
    mask[:, lo:hi] = True
    return rows, y, mask


def build_ml_stream(
    adapter, store: FeatureStore, data_root: Path, protocol_name: str | None = None
) -> MultiLabelStream:
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.utils import AvalancheDataset

    ps, _ = adapter.phase_set(data_root)
    ps = copy.copy(ps)
    ps.train, ps.test, ps.skipped = [list(r) for r in ps.train], [list(r) for r in ps.test], list(ps.skipped)
    bad = adapter.bad_audio(store)
    if bad:
        ps.drop(set(bad), "audio unreadable (skipped with skip_bad)")
    row_of = {i: k for k, i in enumerate(store.ids)}
    lost = [p for p in ps.audio_paths() if p not in row_of]
    if lost:
        raise RuntimeError(
            f"{store.path}: the store lacks {len(lost)} listed clips (e.g. {lost[0]}); delete it to rebuild"
        )
    C = sum(ps.phase_sizes)
    spec = adapter.protocols()[0]
    protocol = Protocol(protocol_name or spec.name, tuple(range(C)), tuple(ps.phase_sizes), 0)
    train, test = [], []
    for t in range(len(ps.phase_sizes)):
        lo, hi = ps.bounds(t)
        train.append(_tensors(ps.train[t], lo, hi, C, row_of))
        test.append(_tensors(ps.test[t], 0, hi, C, row_of))
    for t in range(len(ps.phase_sizes)):
        if not len(train[t][0]) or not len(test[t][0]):
            raise RuntimeError(f"{ps.source}: phase {t} has no train or no test record left")
    bm = benchmark_from_datasets(
        train=[AvalancheDataset([MultiLabelIds(*p)]) for p in train],
        test=[AvalancheDataset([MultiLabelIds(*p)]) for p in test],
    )
    for t, (tr, te) in enumerate(zip(bm.train_stream, bm.test_stream)):
        lo, hi = ps.bounds(t)
        for exp, parts, current in ((tr, train[t], list(range(lo, hi))), (te, test[t], list(range(hi)))):
            if len(exp.dataset) != len(parts[0]) or int(exp.dataset[len(parts[0]) - 1][0]) != int(parts[0][-1]):
                raise RuntimeError(f"avalanche experience {t} does not hold the phase's records")
            exp.classes_in_this_experience = current
            exp.previous_classes = list(range(lo))
            exp.classes_seen_so_far = list(range(hi))
            exp.future_classes = list(range(hi, C))
    digest = hashlib.sha256(
        json.dumps(
            {"dataset": adapter.name, "protocol": protocol.to_json(), "phases": ps.digest()}, sort_keys=True
        ).encode()
    ).hexdigest()
    return MultiLabelStream(adapter.name, protocol, bm, train, test, list(ps.class_names), ps.skipped, digest)


# ============================================================================ the suite's BCE
def scalar_pos_weight(y: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """The reference's pos_weight: one scalar, zeros / ones over the phase's whole label matrix
    (over the labelled entries only when `mask` is given). 1.0 when there is no positive."""
    known = torch.ones_like(y, dtype=torch.bool) if mask is None else mask.bool()
    pos = float((y.bool() & known).sum())
    neg = float(known.sum()) - pos
    return neg / pos if pos > 0 else 1.0


def masked_bce(
    logits: torch.Tensor, y: torch.Tensor, pos_weight: float = 1.0, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """BCE-with-logits with a scalar pos_weight, mean over the labelled (batch, class) entries.
    Without a mask this is `BCEWithLogitsLoss(pos_weight=...)` with its default 'mean'."""
    pw = logits.new_full((), pos_weight)  # filled on the device: no host-to-device copy per batch
    if mask is None:
        # the fused 'mean' reduction, as the reference's BCEWithLogitsLoss (main_audioset.py:96): `reduction="none"`
        # then `.mean()` gives the same value but a gradient one ulp apart, and phase-0 training is chaotic enough
        # for that ulp to move a seed by several points (the CIL-ML-Audio differential, README "Fidelity")
        return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype), pos_weight=pw)
    loss = F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype), pos_weight=pw, reduction="none")
    m = mask.to(loss.dtype)
    return (loss * m).sum() / m.sum().clamp(min=1.0)


# ============================================================================ template
class StreamedViews:
    """`ResidentViews`' interface without the copy: each minibatch is gathered from the memory map (the fallback
    when a phase's views exceed `resident_gb`; reading the host memory map costs a copy of the batch's row ids
    back to the host, so this path synchronises once per batch, by construction)."""

    def __init__(self, store: FeatureStore, views: list[str], device):
        self.store, self.views, self.device = store, views, device

    def gather(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return {v: self.store.gather(v, rows.cpu(), device=self.device, dtype=torch.float32) for v in self.views}


class MultiLabelTemplate(HarnessTemplate):
    """Base strategy of the multi-label methods. Subclasses override `loss_fn(out, y, mask)` and
    may set `train_set_mode = "joint"` (all seen phases' records)."""

    train_set_mode = "phase"
    step_word = "phase"

    def default_views(self, modality: str) -> tuple[str, ...]:
        return ("logmel",)

    # ------------------------------------------------------------------ phase set-up
    @property
    def seen_classes(self) -> int:
        return self.stream.seen(self.step_index)

    def phase_epochs(self) -> int:
        later = self.cfg.get("epochs_incremental")
        return int(self.cfg["epochs"] if self.step_index == 0 or later is None else later)

    def train_dataset_adaptation(self, **kwargs):
        super().train_dataset_adaptation(**kwargs)
        self.step_index = self.experience.current_experience
        torch.manual_seed(step_seed(self.seed, self.step_index))
        self.train_rows, self.train_y, self.train_mask = self.stream.train_set(self.step_index, self.train_set_mode)
        self.pos_weight = scalar_pos_weight(self.train_y, self.train_mask)
        self.train_epochs = self.phase_epochs()

    def _views_for(self, rows: torch.Tensor):
        mode = self.cfg.get("resident", "auto")
        shape = self.store.views[self.views[0]].shape
        nbytes = len(torch.unique(rows)) * int(np.prod(shape)) * 2 * len(self.views)
        if mode is True or (mode == "auto" and nbytes <= float(self.cfg.get("resident_gb", 4.0)) * 2**30):
            return ResidentViews(self.store, self.views, rows, self.device)
        return StreamedViews(self.store, self.views, self.device)

    def make_train_dataloader(self, shuffle=True, **kwargs):
        generator = torch.Generator().manual_seed(step_seed(self.seed, self.step_index, salt=2))
        self.resident = self._views_for(self.train_rows)
        packed = torch.stack([self.train_y.float(), self.train_mask.float()], dim=1)  # (n, 2, seen)
        self.dataloader = IndexBatches(
            self.train_rows, packed, self.train_mb_size, shuffle, False, generator, self.device
        )

    def model_adaptation(self, model=None):
        """Keep the previous phase's model as the frozen teacher, then grow the head."""
        self.keep_teacher()
        self.model.expand_classifier(self.seen_classes)
        return self.model.to(self.device)

    def make_optimizer(self, **kwargs):
        """A fresh SGD per phase (lr in phase 0, lr_ft after) with a cosine schedule over the phase."""
        lr = self.cfg["lr"] if self.step_index == 0 else self.cfg["lr_ft"]
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=lr, momentum=self.cfg["momentum"], weight_decay=self.cfg["weight_decay"]
        )
        if self.cfg.get("schedule", "cosine") == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                self.optimizer, T_max=max(1, self.train_epochs), eta_min=self.cfg["eta_min"]
            )
        else:
            self.scheduler = None

    # ------------------------------------------------------------------ minibatch
    def _unpack_minibatch(self):
        rows, packed, _, _ = self.mbatch
        self.mb_rows = rows
        self.mb_mask = packed[:, 1].bool()
        self.mbatch = [
            self.resident.gather(rows),
            packed[:, 0],
            torch.zeros(len(rows), dtype=torch.long, device=rows.device),
        ]
        self._teacher = None

    def teacher(self) -> dict:
        """The frozen previous model's outputs on the minibatch (one forward, cached)."""
        if self._teacher is None:
            with torch.no_grad(), self.autocast():
                self._teacher = self.old_model(self.mb_x)
        return self._teacher

    def criterion(self):
        with self.autocast():
            return self.loss_fn(self.mb_output, self.mb_y, self.mb_mask)

    def loss_fn(self, out, y, mask) -> torch.Tensor:
        """Default: BCE over the labelled columns with the phase's scalar pos_weight."""
        return masked_bce(out["logits"].float(), y, self.pos_weight, mask)

    # ------------------------------------------------------------------ epochs

    def _after_training_epoch(self, **kwargs):
        super()._after_training_epoch(**kwargs)
        self.epoch += 1
        if self.scheduler is not None:
            self.scheduler.step()
        self.last_loss = float(self.epoch_loss) / max(1, self.epoch_batches)
        self.bar.set_postfix(loss=f"{self.last_loss:.4f}")
        self.bar.update()

    def _after_training_exp(self, **kwargs):
        self.bar.close()
        self.resident = None
        self.history.append(
            {
                "epochs": self.epoch,
                "last_loss": getattr(self, "last_loss", None),
                "pos_weight": self.pos_weight,
                "train_clips": len(self.train_rows),
            }
        )
        super()._after_training_exp(**kwargs)

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def predict_scores(self, rows: torch.Tensor, model=None) -> torch.Tensor:
        """Sigmoid scores (n, seen classes) of store rows, eval mode, float32 on the CPU."""
        model = model or self.model
        out = []
        for _, views in self.eval_batches(rows, model):
            with self.autocast():
                logits = model(views)["logits"][:, : self.seen_classes]
            out.append(torch.sigmoid(logits.float()))  # stays on the device: one copy back at the end
        return torch.cat(out).cpu() if out else torch.empty(0, self.seen_classes)

    # ------------------------------------------------------------------ checkpoints
    def resume_state(self) -> dict:
        return {
            "step_index": self.step_index,
            "num_classes": self.model.num_classes,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "history": self.history,
        }

    def load_resume_state(self, state: dict) -> None:
        self.step_index = int(state["step_index"])
        self.model.expand_classifier(int(state["num_classes"]))
        self.model.load_state_dict(state["model"])
        self.model.to(self.device)
        self.history = list(state["history"])


# ============================================================================ suite kind
class MultiLabel(SuiteKind):
    name = "multilabel"
    step_word = "phase"

    def build_stream(self, adapter, store, data_root: Path, protocol: str) -> MultiLabelStream:
        stream = build_ml_stream(adapter, store, data_root, protocol)
        for line in stream.skipped[:20]:
            log.warning("[skipped record] %s", line)
        if len(stream.skipped) > 20:
            log.warning("... %d more skipped records (listed in every result record)", len(stream.skipped) - 20)
        return stream

    def adjust_config(self, cfg: dict, stream, overrides: dict) -> None:
        if overrides.get("epochs") is not None:
            cfg["epochs_incremental"] = None  # --epochs sets every phase's epochs

    def new_rows(self) -> dict:
        return {"phases": []}

    def evaluate_step(self, strategy, stream, t: int, rows: dict) -> None:
        test_rows, y = stream.test_set(t)
        scores = strategy.predict_scores(test_rows)
        rows["phases"].append(
            ml_metrics.phase_metrics(
                y.numpy(), scores.numpy(), stream.base_classes, float(strategy.cfg.get("threshold", 0.5))
            )
        )

    def after_step(self, strategy, t: int, run) -> None:
        if run.options.get("keep_phase_checkpoints"):
            cell = run.cell
            save_phase_model(
                phase_path(run.path, t),
                strategy.model,
                {"phase": t, "dataset": cell.dataset, "method": cell.method, "seed": cell.seed, "cell_key": run.key},
            )

    def results(self, strategy, stream, cfg: dict, rows: dict, run) -> dict:
        summary = ml_metrics.summarize(rows["phases"])
        model = strategy.model
        keep = bool(run.options.get("keep_phase_checkpoints"))
        return {
            "kind": "multilabel",
            "selection": "last-epoch",
            "method": cfg.get("method", run.cell.method),
            "norm": cfg.get("norm"),
            "metrics": {k: v for k, v in summary.items() if k not in ("curves", "fr", "ap_matrix")},
            "curves": summary["curves"],
            "forgetting_per_phase": summary["fr"],
            "ap_matrix": summary["ap_matrix"],
            "phases": rows["phases"],
            "history": strategy.history,
            "model": model.config(),
            "pretrained": getattr(model, "load_report", None),
            "phase_checkpoints": [str(phase_path(run.path, t)) for t in range(len(rows["phases"]))] if keep else None,
        }

    def summary_line(self, record: dict) -> str:
        m = record["results"]["metrics"]
        return (
            f"avg mAP {fmt(m['avg_mAP'])}  avg micro-F1 {fmt(m['avg_micro_f1'])}  avg macro-F1 "
            f"{fmt(m['avg_macro_f1'])}  "
            f"final mAP {fmt(m['final_mAP'])}  forgetting macro-F1 {fmt(m['forgetting_macro_f1'])}"
        )


def phase_path(record: Path, t: int) -> Path:
    """Where `--keep-phase-checkpoints` keeps phase t's model of a cell."""
    return record.with_name(record.stem + ".phases") / f"phase{t}.pt"


def save_phase_model(path: Path, model, meta: dict) -> None:
    """A phase's model for `benchmarks.tools.cka`: state dict + what rebuilds it; plain types only (weights_only)."""
    import io

    buf = io.BytesIO()
    torch.save(
        {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "model_config": model.config(), **meta},
        buf,
    )
    atomic_write_bytes(path, buf.getvalue())


MULTILABEL = MultiLabel()
