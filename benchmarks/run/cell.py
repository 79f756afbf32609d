"""Run one grid cell, for every suite kind: (suite, dataset, protocol, method, modality, seed) -> result record.

Resolve (the method's config, checked; the stream; the cell key), resume, train step by step
with the suite kind's evaluation after each step, checkpoint, measure costs, write the record.

A cell is resumable at step granularity: after every step its state (model state dict,
exemplar rows, the kind's rows so far) is saved atomically to `<record>.ckpt/step<t>.pt`
and read back with `weights_only=True`. The record itself is written atomically at the end,
so an interrupted grid loses at most the step in flight and never leaves a corrupt record.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
import platform
import shutil
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import torch

from benchmarks import metrics
from benchmarks.core.method import SETTINGS_KEY, MethodSpec
from benchmarks.core.records import load_record, record_path, run_settings, write_error, write_record
from benchmarks.suites import Suite
from datasets import get_adapter
from datasets.errors import HarnessError
from datasets.io import atomic_write_bytes, config_hash
from datasets.store import FeatureStore
from methods import registry as method_registry

log = logging.getLogger(__name__)


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
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=10
            ).stdout.strip()
            or None
        )
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
    """Stores and streams shared by all cells of one suite's grid (each built once per process).

    A launcher that runs cells in other processes (Ray workers, Slurm tasks) sends `for_workers(...)`:
    the same settings with the dataset adapters resolved here (run-time registrations such as
    `--paired-folder` exist only in this process) and no stores or streams; each worker opens
    its own from the data root, never receives pickled tensors."""

    def __init__(
        self,
        suite: Suite,
        data_root: Path,
        results_dir: Path,
        device: torch.device,
        progress: bool = True,
        overrides: dict | None = None,
        options: dict | None = None,
    ):
        self.suite, self.kind = suite, suite.kind
        self.data_root, self.results_dir, self.device, self.progress = (
            Path(data_root),
            Path(results_dir),
            device,
            progress,
        )
        self.overrides = overrides or {}  # enter the resolved config (and so the cell key)
        self.options = options or {}  # run options that do not change results (e.g. keep_phase_checkpoints)
        self.adapters: dict = {}  # name -> adapter, set for workers (else the registry of this process)
        self._stores: dict[str, FeatureStore] = {}
        self._streams: dict[tuple[str, str], object] = {}

    def adapter(self, dataset: str):
        return self.adapters[dataset] if dataset in self.adapters else get_adapter(dataset)

    def store(self, dataset: str) -> FeatureStore:
        if dataset not in self._stores:
            self._stores[dataset] = self.adapter(dataset).open(self.data_root, progress=self.progress)
        return self._stores[dataset]

    def stream(self, dataset: str, protocol: str):
        key = (dataset, protocol)
        if key not in self._streams:
            self._streams[key] = self.kind.build_stream(
                self.adapter(dataset), self.store(dataset), self.data_root, protocol
            )
        return self._streams[key]

    def for_workers(self, datasets, device: torch.device | None = None) -> GridContext:
        """A copy to send to other processes: adapters of `datasets` resolved, nothing opened, `device` if given."""
        ctx = GridContext(
            self.suite,
            self.data_root,
            self.results_dir,
            self.device if device is None else device,
            self.progress,
            self.overrides,
            self.options,
        )
        ctx.adapters = {name: self.adapter(name) for name in sorted(set(datasets))}
        return ctx

    def __getstate__(self):  # stores and streams are opened again in the receiving process
        return {**self.__dict__, "_stores": {}, "_streams": {}}


@dataclass
class CellRun:
    """A resolved cell: what its record is keyed and filed by."""

    cell: Cell
    spec: MethodSpec
    cfg: dict
    stream: object
    key: str
    path: Path
    options: dict

    @property
    def checkpoints(self) -> Path:
        return self.path.with_name(self.path.stem + ".ckpt")


def resolve(cell: Cell, spec: MethodSpec, ctx: GridContext) -> CellRun:
    """The cell's config (checked before anything trains), stream, key and record path. A run whose command-line
    values change the method's config (its settings, recorded) is filed apart from the default run's record."""
    stream = ctx.stream(cell.dataset, cell.protocol)
    cfg = spec.config(cell.dataset, cell.modality, ctx.overrides)
    settings = run_settings(spec.config(cell.dataset, cell.modality), cfg, ctx.overrides.get("epochs"))
    ctx.kind.adjust_config(cfg, stream, ctx.overrides)
    spec.check_config(cfg, cell.dataset)
    store = ctx.store(cell.dataset)
    key = config_hash(
        {
            "cell": asdict(cell),
            "config": cfg,
            "stream": stream.hash,
            "store": store.fingerprint,
            "metrics": metrics.VERSION,
        }
    )
    c = cell
    path = record_path(ctx.results_dir, c.suite, c.dataset, c.protocol, c.method, c.modality, c.seed, settings)
    return CellRun(cell, spec, cfg, stream, key, path, {**ctx.options, "settings": settings})


def is_done(cell: Cell, spec: MethodSpec, ctx: GridContext) -> bool:
    run = resolve(cell, spec, ctx)
    rec = load_record(run.path)
    return rec is not None and rec.get("cell_key") == run.key


def run_cell(cell: Cell, spec: MethodSpec, ctx: GridContext) -> dict:
    """Train and evaluate one cell, resuming from its last finished step; write its record."""
    run = resolve(cell, spec, ctx)
    threads = torch.get_num_threads()
    if ctx.device.type == "cpu" and run.cfg.get("cpu_threads"):
        torch.set_num_threads(int(run.cfg["cpu_threads"]))
    try:
        return _train_and_record(run, ctx)
    finally:
        torch.set_num_threads(threads)


def _train_and_record(run: CellRun, ctx: GridContext) -> dict:
    cell, kind, store = run.cell, ctx.kind, ctx.store(run.cell.dataset)
    torch.manual_seed(cell.seed)
    strategy = run.spec.build(
        modality=cell.modality,
        store=store,
        stream=run.stream,
        cfg=run.cfg,
        device=ctx.device,
        seed=cell.seed,
        progress=ctx.progress,
    )
    rows, train_seconds, start = kind.new_rows(), 0.0, 0
    resumed = latest_checkpoint(run.checkpoints, run.key)
    if resumed is not None:
        strategy.load_resume_state(resumed["strategy"])
        rows, train_seconds, start = (
            resumed["rows"],
            float(resumed["train_seconds"]),
            int(resumed["strategy"]["step_index"]) + 1,
        )
        log.info("  resuming %s after %s %d", cell.label(), kind.step_word, start - 1)
    wall0 = time.time()
    with PeakMemory(ctx.device) as peak:
        for t, seconds in trained_steps(run.stream, strategy, start, ctx.device):
            train_seconds += seconds
            kind.evaluate_step(strategy, run.stream, t, rows)
            kind.after_step(strategy, t, run)
            save_checkpoint(
                run.checkpoints,
                t,
                {"key": run.key, "strategy": strategy.resume_state(), "rows": rows, "train_seconds": train_seconds},
            )
    record = {
        "suite": cell.suite,
        "cell": asdict(cell),
        "cell_key": run.key,
        "config": run.cfg,
        "reference_protocol": ctx.overrides.get("epochs") is None,
        "epochs_override": ctx.overrides.get("epochs"),
        "settings": run.options["settings"],
        "family": run.spec.family,
        "stream": run.stream.describe(),
        "results": kind.results(strategy, run.stream, run.cfg, rows, run),
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
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    write_record(run.path, record)
    shutil.rmtree(run.checkpoints, ignore_errors=True)
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


def save_checkpoint(ckpt_dir: Path, t: int, state: dict) -> None:
    """Step t's resume state, written atomically; older step checkpoints are removed after it."""
    buf = io.BytesIO()
    torch.save(state, buf)
    final = ckpt_dir / f"step{t}.pt"
    atomic_write_bytes(final, buf.getvalue())
    for old in ckpt_dir.glob("step*.pt"):
        if old != final:
            old.unlink(missing_ok=True)  # a run that took the cell over may have removed it already


def latest_checkpoint(ckpt_dir: Path, key: str) -> dict | None:
    """The newest readable step checkpoint of this cell key (tensors and plain types only), or None."""
    if not ckpt_dir.is_dir():
        return None
    for path in sorted(ckpt_dir.glob("step*.pt"), key=lambda p: int(p.stem[4:]), reverse=True):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # an unreadable checkpoint is ignored, never trusted
            log.warning("  ignoring unreadable checkpoint %s: %s", path, e)
            continue
        if state.get("key") == key:
            return state
    return None


def fail_cell(cell: Cell, ctx: GridContext, message: str, spec: MethodSpec | None = None) -> None:
    """Write the cell's error file where its record would be (beside a run with the same settings), so that the
    cell's next success removes it. The settings come from `spec` (else the method registry's); when the config
    itself cannot be read, from every command-line value given."""
    spec, epochs, settings = spec or method_registry().get(cell.method), ctx.overrides.get("epochs"), None
    if spec is not None:
        try:
            own = spec.config(cell.dataset, cell.modality)
            settings = run_settings(own, spec.config(cell.dataset, cell.modality, ctx.overrides), epochs)
        except HarnessError:  # its config files are broken (the failure itself)
            pass
    if settings is None:
        given = {k: v for k, v in ctx.overrides.items() if k != SETTINGS_KEY and v is not None}
        settings = run_settings({}, {**(ctx.overrides.get(SETTINGS_KEY) or {}), **given}, epochs)
    c = cell
    path = record_path(ctx.results_dir, c.suite, c.dataset, c.protocol, c.method, c.modality, c.seed, settings)
    write_error(path, asdict(cell), message)
