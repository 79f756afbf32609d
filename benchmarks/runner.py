"""Run one grid cell: (suite, dataset, protocol, method, modality, seed) -> result record.

A cell is resumable at step granularity: after every step its state (model state dict,
exemplar rows, accuracy rows so far) is saved atomically to `<record>.ckpt/step<t>.pt`
and read back with `weights_only=True`. The record itself is written atomically at the end,
so an interrupted grid loses at most the step in flight and never leaves a corrupt record.
"""
from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import torch

from benchmarks import metrics
from benchmarks.protocols import Protocol
from benchmarks.records import load_record, record_path, write_error, write_record
from benchmarks.streams import CILStream, build_stream
from datasets import get_adapter
from datasets.store import FeatureStore, config_hash
from methods import MethodSpec


@dataclass(frozen=True)
class Cell:
    suite: str
    dataset: str
    protocol: str
    method: str
    modality: str
    seed: int

    def label(self) -> str:
        return f"{self.dataset}/{self.protocol} {self.method} {self.modality} seed{self.seed}"


class PeakMemory:
    """Peak memory of a cell: CUDA allocator peak on GPU, sampled process RSS on CPU."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return 0

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(0.05)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())

    @property
    def kind(self) -> str:
        return "cuda-allocated" if self.device.type == "cuda" else "process-rss"


def environment(device: torch.device) -> dict:
    def version(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "python": platform.python_version(),
        "packages": {p: version(p) for p in ("torch", "avalanche-lib", "numpy", "timm", "torchaudio", "torchvision")},
        "git_commit": commit,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
    }


class GridContext:
    """Stores and streams shared by all cells of a grid (built once per dataset/protocol)."""

    def __init__(self, data_root: Path, results_dir: Path, device: torch.device, progress: bool = True, overrides: dict | None = None,
                 options: dict | None = None):
        self.data_root, self.results_dir, self.device, self.progress = Path(data_root), Path(results_dir), device, progress
        self.overrides = overrides or {}  # enter the resolved config (and so the cell key)
        self.options = options or {}  # run options that do not change results (e.g. keep_phase_checkpoints)
        self._stores: dict[str, FeatureStore] = {}
        self._streams: dict[tuple[str, str], CILStream] = {}

    def store(self, dataset: str) -> FeatureStore:
        if dataset not in self._stores:
            self._stores[dataset] = get_adapter(dataset).open(self.data_root, progress=self.progress)
        return self._stores[dataset]

    def protocol(self, dataset: str, name: str) -> Protocol:
        store = self.store(dataset)
        for spec in get_adapter(dataset).protocols():
            if spec.name == name:
                return Protocol.from_spec(spec, len(store.class_names))
        raise KeyError(f"dataset {dataset} has no protocol {name!r}")

    def stream(self, dataset: str, protocol: str) -> CILStream:
        key = (dataset, protocol)
        if key not in self._streams:
            self._streams[key] = build_stream(self.store(dataset), self.protocol(dataset, protocol))
        return self._streams[key]


def resolve(cell: Cell, spec: MethodSpec, ctx: GridContext) -> tuple[dict, CILStream, str, Path]:
    stream = ctx.stream(cell.dataset, cell.protocol)
    cfg = spec.config(cell.dataset, cell.modality, ctx.overrides)
    cfg.setdefault("memory", stream.protocol.memory)
    if "epochs" not in cfg:
        raise KeyError(f"method {spec.name} has no epochs for dataset {cell.dataset}: add them to {spec.folder / 'config.yaml'} or pass --epochs")
    store = ctx.store(cell.dataset)
    key = config_hash({"cell": asdict(cell), "config": cfg, "stream": stream.hash, "store": store.fingerprint})
    path = record_path(ctx.results_dir, cell.suite, cell.dataset, cell.protocol, cell.method, cell.modality, cell.seed)
    return cfg, stream, key, path


def is_done(cell: Cell, spec: MethodSpec, ctx: GridContext) -> bool:
    _, _, key, path = resolve(cell, spec, ctx)
    rec = load_record(path)
    return rec is not None and rec.get("cell_key") == key


def run_cell(cell: Cell, spec: MethodSpec, ctx: GridContext) -> dict:
    """Train and evaluate one cell, resuming from its last finished step; write its record."""
    cfg, stream, key, path = resolve(cell, spec, ctx)
    store = ctx.store(cell.dataset)
    if cell.modality not in spec.modalities:
        raise ValueError(f"method {spec.name} does not support modality {cell.modality} (supports {', '.join(spec.modalities)})")
    torch.manual_seed(cell.seed)
    strategy = spec.strategy(
        model_factory=lambda n: spec.model_builder(cell.modality, store, n, cfg),
        store=store, stream=stream, modality=cell.modality, config=cfg, device=ctx.device, seed=cell.seed, progress=ctx.progress,
        views=spec.required_views(cell.modality, cfg),
    )
    ckpt_dir = path.with_name(path.stem + ".ckpt")
    rows: dict[str, list] = {"R": [], "A": [], "R_last": [], "A_last": [], "counts": [], "reports": []}
    train_seconds, start_step = 0.0, 0
    resumed = _latest_checkpoint(ckpt_dir, key)
    if resumed is not None:
        strategy.load_resume_state(resumed["strategy"])
        rows, train_seconds, start_step = resumed["rows"], float(resumed["train_seconds"]), int(resumed["strategy"]["step_index"]) + 1
        print(f"  resuming {cell.label()} after step {start_step - 1}")
    step_of = torch.tensor(stream.protocol.step_of_position())
    wall0 = time.time()
    with PeakMemory(ctx.device) as peak:
        for t, seconds in trained_steps(stream, strategy, start_step, ctx.device):
            train_seconds += seconds
            test = strategy.predict_split("test")
            rows.setdefault("reports", []).append(strategy.step_report())
            for suffix, (pred, targets) in (("", test), ("_last", strategy.last_epoch_test or test)):
                row, acc, counts = metrics.accuracy_matrix_from_predictions(pred.numpy(), targets.numpy(), step_of[targets].numpy(), t)
                rows["R" + suffix].append(row)
                rows["A" + suffix].append(acc)
            rows["counts"] = counts
            _save_checkpoint(ckpt_dir, t, {"key": key, "strategy": strategy.resume_state(), "rows": rows, "train_seconds": train_seconds})
    record = {
        **record_header(cell, key, cfg, ctx, stream),
        "results": {
            "selection": cfg.get("model_selection", "best-val"),
            "R": rows["R"], "A": rows["A"], "test_counts": rows["counts"],
            "metrics": metrics.summarize(rows["R"], rows["A"]),
            **({"step_reports": rows["reports"]} if any(rows["reports"]) else {}),
            **({"method_metrics": mm} if (mm := strategy.method_metrics(rows)) else {}),
            "last_epoch": {"R": rows["R_last"], "A": rows["A_last"], "metrics": metrics.summarize(rows["R_last"], rows["A_last"])},
            "best_val_epoch": [h["best_val_epoch"] for h in strategy.history],
            "val_acc": [h["val_acc"] for h in strategy.history],
        },
        "cost": {
            "train_seconds": train_seconds,
            "wall_seconds": time.time() - wall0,
            "peak_memory_mb": peak.peak / 2**20,
            "peak_memory_kind": peak.kind,
            "parameters": sum(p.numel() for p in strategy.model.parameters()),
        },
        "encoders": {"store": store.fingerprint, **store.meta},
        **({"method_info": info} if (info := strategy.method_info()) else {}),
        "environment": environment(ctx.device),
        "seeds": {"train_seed": cell.seed},
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_record(path, record)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return record


def trained_steps(stream, strategy, start: int, device: torch.device):
    """Train every step of the stream from `start` on; yield (step, its training seconds)."""
    for t, experience in enumerate(stream.benchmark.train_stream):
        if t < start:
            continue
        t0 = time.time()
        strategy.train(experience, eval_streams=[])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        yield t, time.time() - t0


def record_header(cell: Cell, key: str, cfg: dict, ctx: "GridContext", stream) -> dict:
    """The record fields every suite's cell runner writes first (see benchmarks.records)."""
    return {
        "suite": cell.suite,
        "cell": asdict(cell),
        "cell_key": key,
        "config": cfg,
        "reference_protocol": ctx.overrides.get("epochs") is None,
        "epochs_override": ctx.overrides.get("epochs"),
        "stream": stream.describe(),
    }


def _save_checkpoint(ckpt_dir: Path, t: int, state: dict) -> None:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step{t}.pt"
    tmp = ckpt_dir / f".step{t}.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, final)
    for old in ckpt_dir.glob("step*.pt"):
        if old != final:
            old.unlink()


def _latest_checkpoint(ckpt_dir: Path, key: str) -> dict | None:
    if not ckpt_dir.is_dir():
        return None
    for path in sorted(ckpt_dir.glob("step*.pt"), key=lambda p: int(p.stem[4:]), reverse=True):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # an unreadable checkpoint is ignored, never trusted
            print(f"  ignoring unreadable checkpoint {path}: {e}", file=sys.stderr)
            continue
        if state.get("key") == key:
            return state
    return None


def summary_line(rec: dict) -> str:
    """The per-cell line run_all prints: this suite's headline metrics."""
    m = rec["results"]["metrics"]
    fgt = "n/a" if m["avg_forgetting"] is None else f"{m['avg_forgetting']:.2f}"
    return f"avg inc acc {m['avg_inc_acc']:.2f}  last {m['last_acc']:.2f}  forgetting {fgt}"


def fail_cell(cell: Cell, ctx: GridContext, message: str) -> None:
    path = record_path(ctx.results_dir, cell.suite, cell.dataset, cell.protocol, cell.method, cell.modality, cell.seed)
    write_error(path, asdict(cell), message)
