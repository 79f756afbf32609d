"""The multi-label audio CIL suite (`run_all.py --suite audio-multilabel`): streams, template, cell runner.

Streams (../shared/reference/multilabel_audio.md section 13). Avalanche's class-incremental
generators need one class per sample, so the stream is built with `benchmark_from_datasets`
from one dataset per phase: train experience t holds phase t's clips as (store row, 50-dim
multi-hot target, 50-dim label mask); the mask marks the columns the phase's file labels (its
5 new classes, or the 30 base classes at phase 0): old-class presence in a new-phase clip is
unknown, not negative. Test experience t is the cumulative test file of phase t, its mask the
30 + 5t seen columns. The class-timeline attributes (`classes_in_this_experience`,
`previous_classes`, `classes_seen_so_far`, `future_classes`) are attached by hand.

Template (`MultiLabelTemplate`, an avalanche `SupervisedTemplate`): index minibatches over store
rows (the `IndexBatches`/`ResidentViews` of benchmarks.avalanche_layer), the previous phase's
model kept frozen as `self.old_model`, the head grown by the new classes, SGD + cosine schedule
per phase, per-phase seeding (a resumed run draws what an uninterrupted one draws). No
validation split and no model selection: the last-epoch model of each phase is evaluated, as
in the reference.

Cell runner (`is_done`, `run_cell`): after each phase, sigmoid scores on the phase's cumulative
test set -> `benchmarks.ml_metrics.phase_metrics`; state checkpointed after every phase (state
dicts, `weights_only=True`); with `--keep-phase-checkpoints` each phase's model is also kept as
`<record>.phases/phase<t>.pt` (input of `python -m benchmarks.cka`). Record: the usual schema
(benchmarks/records.py) with `results.kind == "multilabel"`.
"""
from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks import ml_metrics
from benchmarks import runner as base_runner
from benchmarks.avalanche_layer import HarnessTemplate, IndexBatches, ResidentViews, step_seed
from benchmarks.protocols import Protocol
from benchmarks.records import load_record, record_path, write_record
from datasets import get_adapter
from datasets.store import FeatureStore, atomic_write_bytes, config_hash
from methods.cnn14_common.losses import masked_bce, scalar_pos_weight

SUITE = "audio-multilabel"


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
        return {"hash": self.hash, **self.protocol.to_json(), "class_names": self.class_names, "counts": self.counts(),
                "kind": "multilabel", "skipped": self.skipped}


def _tensors(records, lo: int, hi: int, n_classes: int, row_of: dict[str, int]):
    rows = torch.tensor([row_of[r.path] for r in records], dtype=torch.long)
    y = torch.zeros(len(records), n_classes)
    if records:
        y[:, lo:hi] = torch.from_numpy(np.stack([r.labels for r in records]).astype(np.float32))
    mask = torch.zeros(len(records), n_classes, dtype=torch.bool)
    mask[:, lo:hi] = True
    return rows, y, mask


def build_ml_stream(adapter, store: FeatureStore, data_root: Path, protocol_name: str | None = None) -> MultiLabelStream:
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
        raise RuntimeError(f"{store.path}: the store lacks {len(lost)} listed clips (e.g. {lost[0]}); delete it to rebuild")
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
    bm = benchmark_from_datasets(train=[AvalancheDataset([MultiLabelIds(*p)]) for p in train],
                                 test=[AvalancheDataset([MultiLabelIds(*p)]) for p in test])
    for t, (tr, te) in enumerate(zip(bm.train_stream, bm.test_stream)):
        lo, hi = ps.bounds(t)
        for exp, parts, current in ((tr, train[t], list(range(lo, hi))), (te, test[t], list(range(hi)))):
            if len(exp.dataset) != len(parts[0]) or int(exp.dataset[len(parts[0]) - 1][0]) != int(parts[0][-1]):
                raise RuntimeError(f"avalanche experience {t} does not hold the phase's records")
            exp.classes_in_this_experience = current
            exp.previous_classes = list(range(lo))
            exp.classes_seen_so_far = list(range(hi))
            exp.future_classes = list(range(hi, C))
    digest = hashlib.sha256(json.dumps({"dataset": adapter.name, "protocol": protocol.to_json(), "phases": ps.digest()}, sort_keys=True).encode()).hexdigest()
    return MultiLabelStream(adapter.name, protocol, bm, train, test, list(ps.class_names), ps.skipped, digest)


# ============================================================================ template
class StreamedViews:
    """`ResidentViews`' interface without the copy: each minibatch is gathered from the memory map."""

    def __init__(self, store: FeatureStore, views: list[str], device):
        self.store, self.views, self.device = store, views, device

    def gather(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return {v: self.store.gather(v, rows.cpu(), device=self.device, dtype=torch.float32) for v in self.views}


class MultiLabelTemplate(HarnessTemplate):
    """Base strategy of the multi-label methods. Subclasses override `loss_fn(out, y, mask)` and
    may set `train_set_mode = "joint"` (all seen phases' records)."""

    train_set_mode = "phase"
    step_word = "phase"

    def __init__(self, *, model_factory, store: FeatureStore, stream: MultiLabelStream, config: dict, device, seed: int,
                 progress: bool = True, plugins=None, views=("logmel",), modality: str = "audio"):
        super().__init__(model_factory=model_factory, store=store, stream=stream, modality=modality, config=config, device=device,
                         seed=seed, views=views, criterion=torch.nn.BCEWithLogitsLoss(), plugins=plugins, progress=progress)

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
        self.dataloader = IndexBatches(self.train_rows, packed, self.train_mb_size, shuffle, False, generator, self.device)

    def model_adaptation(self, model=None):
        """Keep the previous phase's model as the frozen teacher, then grow the head."""
        self.keep_teacher()
        self.model.expand_classifier(self.seen_classes)
        return self.model.to(self.device)

    def make_optimizer(self, **kwargs):
        """A fresh SGD per phase (lr in phase 0, lr_ft after) with a cosine schedule over the phase."""
        lr = self.cfg["lr"] if self.step_index == 0 else self.cfg["lr_ft"]
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=self.cfg["momentum"], weight_decay=self.cfg["weight_decay"])
        if self.cfg.get("schedule", "cosine") == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(1, self.train_epochs), eta_min=self.cfg["eta_min"])
        else:
            self.scheduler = None

    # ------------------------------------------------------------------ minibatch
    def _unpack_minibatch(self):
        rows, packed, _, _ = self.mbatch
        self.mb_rows = rows
        self.mb_mask = packed[:, 1].bool()
        self.mbatch = [self.resident.gather(rows), packed[:, 0], torch.zeros(len(rows), dtype=torch.long, device=rows.device)]
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
        self.history.append({"epochs": self.epoch, "last_loss": getattr(self, "last_loss", None), "pos_weight": self.pos_weight,
                             "train_clips": len(self.train_rows)})
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
            out.append(torch.sigmoid(logits.float()).cpu())
        return torch.cat(out) if out else torch.empty(0, self.seen_classes)

    # ------------------------------------------------------------------ checkpoints
    def resume_state(self) -> dict:
        return {"step_index": self.step_index, "num_classes": self.model.num_classes,
                "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()}, "history": self.history}

    def load_resume_state(self, state: dict) -> None:
        self.step_index = int(state["step_index"])
        self.model.expand_classifier(int(state["num_classes"]))
        self.model.load_state_dict(state["model"])
        self.model.to(self.device)
        self.history = list(state["history"])


# ============================================================================ cell runner
Cell = base_runner.Cell
fail_cell = base_runner.fail_cell


def method_registry():
    from methods.cnn14_common import ml_registry

    return ml_registry()


class GridContext(base_runner.GridContext):
    """Adds the multi-label streams (one per dataset, shared by every cell)."""

    def __init__(self, *args, options: dict | None = None, **kw):
        super().__init__(*args, options=options, **kw)
        self._ml_streams: dict[str, MultiLabelStream] = {}

    def stream(self, dataset: str, protocol: str | None = None) -> MultiLabelStream:
        if dataset not in self._ml_streams:
            store = self.store(dataset)
            self._ml_streams[dataset] = build_ml_stream(get_adapter(dataset), store, self.data_root, protocol)
            for line in self._ml_streams[dataset].skipped[:20]:
                print(f"  [skipped record] {line}")
            n = len(self._ml_streams[dataset].skipped)
            if n > 20:
                print(f"  ... {n - 20} more skipped records (listed in every result record)")
        return self._ml_streams[dataset]


def resolve(cell: Cell, spec, ctx: GridContext):
    stream = ctx.stream(cell.dataset, cell.protocol)
    cfg = spec.config(cell.dataset, cell.modality, ctx.overrides)
    if ctx.overrides.get("epochs") is not None:
        cfg["epochs_incremental"] = None  # --epochs sets every phase's epochs
    store = ctx.store(cell.dataset)
    key = config_hash({"cell": asdict(cell), "config": cfg, "stream": stream.hash, "store": store.fingerprint})
    path = record_path(ctx.results_dir, cell.suite, cell.dataset, cell.protocol, cell.method, cell.modality, cell.seed)
    return cfg, stream, key, path


def is_done(cell: Cell, spec, ctx: GridContext) -> bool:
    _, _, key, path = resolve(cell, spec, ctx)
    rec = load_record(path)
    return rec is not None and rec.get("cell_key") == key


def save_phase_model(path: Path, model, meta: dict) -> None:
    """A phase's model for `benchmarks.cka`: state dict + what rebuilds it; plain types only (weights_only)."""
    import io

    buf = io.BytesIO()
    torch.save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "model_config": model.config(), **meta}, buf)
    atomic_write_bytes(path, buf.getvalue())


def run_cell(cell: Cell, spec, ctx: GridContext) -> dict:
    cfg, stream, key, path = resolve(cell, spec, ctx)
    store = ctx.store(cell.dataset)
    if cell.modality not in spec.modalities:
        raise ValueError(f"method {spec.name} does not support modality {cell.modality}")
    torch.manual_seed(cell.seed)
    strategy = spec.strategy(model_factory=lambda n: spec.model_builder(cell.modality, store, n, cfg), store=store, stream=stream,
                             config=cfg, device=ctx.device, seed=cell.seed, progress=ctx.progress, views=spec.required_views(cell.modality, cfg))
    ckpt_dir = path.with_name(path.stem + ".ckpt")
    keep = bool(ctx.options.get("keep_phase_checkpoints"))
    phase_dir = path.with_name(path.stem + ".phases")
    rows: dict = {"phases": []}
    train_seconds, start = 0.0, 0
    resumed = base_runner._latest_checkpoint(ckpt_dir, key)
    if resumed is not None:
        strategy.load_resume_state(resumed["strategy"])
        rows, train_seconds, start = resumed["rows"], float(resumed["train_seconds"]), int(resumed["strategy"]["step_index"]) + 1
        print(f"  resuming {cell.label()} after phase {start - 1}")
    threshold = float(cfg.get("threshold", 0.5))
    threads = torch.get_num_threads()
    if ctx.device.type == "cpu" and cfg.get("cpu_threads"):
        torch.set_num_threads(int(cfg["cpu_threads"]))
    try:
        return _run_phases(cell, spec, ctx, cfg, stream, key, path, store, strategy, rows, train_seconds, start, threshold, ckpt_dir, keep, phase_dir)
    finally:
        torch.set_num_threads(threads)


def _run_phases(cell, spec, ctx, cfg, stream, key, path, store, strategy, rows, train_seconds, start, threshold, ckpt_dir, keep, phase_dir):
    wall0 = time.time()
    with base_runner.PeakMemory(ctx.device) as peak:
        for t, seconds in base_runner.trained_steps(stream, strategy, start, ctx.device):
            train_seconds += seconds
            test_rows, y = stream.test_set(t)
            scores = strategy.predict_scores(test_rows)
            rows["phases"].append(ml_metrics.phase_metrics(y.numpy(), scores.numpy(), stream.base_classes, threshold))
            if keep:
                save_phase_model(phase_dir / f"phase{t}.pt", strategy.model,
                                 {"phase": t, "dataset": cell.dataset, "method": cell.method, "seed": cell.seed, "cell_key": key})
            base_runner._save_checkpoint(ckpt_dir, t, {"key": key, "strategy": strategy.resume_state(), "rows": rows, "train_seconds": train_seconds})
    summary = ml_metrics.summarize(rows["phases"])
    model = strategy.model
    record = {
        **base_runner.record_header(cell, key, cfg, ctx, stream),
        "results": {
            "kind": "multilabel",
            "selection": "last-epoch",
            "method": cfg.get("method", cell.method),
            "norm": cfg.get("norm"),
            "metrics": {k: v for k, v in summary.items() if k not in ("curves", "fr", "ap_matrix")},
            "curves": summary["curves"],
            "forgetting_per_phase": summary["fr"],
            "ap_matrix": summary["ap_matrix"],
            "phases": rows["phases"],
            "history": strategy.history,
            "model": model.config(),
            "pretrained": getattr(model, "load_report", None),
            "phase_checkpoints": [str(phase_dir / f"phase{t}.pt") for t in range(len(rows["phases"]))] if keep else None,
        },
        "cost": {
            "train_seconds": train_seconds,
            "wall_seconds": time.time() - wall0,
            "peak_memory_mb": peak.peak / 2**20,
            "peak_memory_kind": peak.kind,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "encoders": {"store": store.fingerprint, **store.meta},
        "environment": base_runner.environment(ctx.device),
        "seeds": {"train_seed": cell.seed},
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_record(path, record)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return record


def _f(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def summary_line(rec: dict) -> str:
    m = rec["results"]["metrics"]
    return (f"avg mAP {_f(m['avg_mAP'])}  avg micro-F1 {_f(m['avg_micro_f1'])}  avg macro-F1 {_f(m['avg_macro_f1'])}  "
            f"final mAP {_f(m['final_mAP'])}  forgetting macro-F1 {_f(m['forgetting_macro_f1'])}")
