"""Launching a grid: who runs each cell, their one-line results, failures, claims and stop signals.

A launcher (by name in `benchmarks.run.launchers.LAUNCHERS`) takes the grid's cells, their method
specs, a GridContext and `LaunchOptions`, runs every cell through `attempt` (claim, skip if recorded,
train with resume, write the record or the error record, release the claim) and returns an `Outcome`.
Records are the only shared state, so the leaderboard does not care who ran a cell, and runs that
share a results directory (two `run_all.py`, a Ray grid plus a local run, Slurm tasks) run each cell
once (`benchmarks.run.claims`).

- `local`: the cells one after another in this process (`run_local`, below);
- `ray`: one Ray task per cell, packed by the cell's declared resources (`benchmarks.run.ray_launch`);
- `slurm`: a submitit job array over the cells still to run, requeued on preemption
  (`benchmarks.run.slurm_launch`).

SIGTERM and SIGINT stop a launcher the same way: no new cell starts, the step in flight is dropped (the
last finished step's checkpoint stays), claims are released, and it returns `interrupted` with the
command that resumes.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field

import torch

from benchmarks.core.method import CellResources
from benchmarks.core.records import load_record
from benchmarks.run import cell as cell_runner
from benchmarks.run import claims
from benchmarks.run.cell import Cell, GridContext
from datasets.errors import ConfigError, HarnessError
from datasets.io import config_hash

log = logging.getLogger(__name__)


@dataclass
class LaunchOptions:
    """Launcher settings from the command line; none of them enters a record."""

    resume_command: str = "python run_all.py"  # printed after an interruption
    device_request: str = "auto"  # --device as given (workers pick their own device from it)
    gpus_per_cell: float | None = None  # override of the specs' CellResources
    cpus_per_cell: float | None = None
    ray_address: str | None = None  # None: a local Ray instance sized to this machine
    slurm_executor: str = "slurm"  # or "local": submitit's local executor (tests, a single machine)
    slurm_partition: str | None = None
    slurm_time_min: int = 240
    slurm_gpus_per_task: int | None = None  # None: 1 unless --device cpu
    slurm_cpus_per_task: int = 4
    slurm_cells_per_task: int = 1
    slurm_array_parallelism: int | None = None
    slurm_folder: str | None = None  # submitit's job files and logs (default <results>/.submitit)
    slurm_extra: dict = field(default_factory=dict)  # further submitit parameters (tests: signal_delay_s)


@dataclass
class Outcome:
    ran: int = 0
    skipped: int = 0  # already recorded with the same cell key
    failed: list[tuple[Cell, str]] = field(default_factory=list)
    interrupted: bool = False
    busy: list[Cell] = field(default_factory=list)  # claimed by another live run, left to it


@dataclass
class CellResult:
    """What became of one cell in `attempt`; small and picklable, so workers send it back."""

    cell: Cell
    status: str  # "ran", "done" (already recorded), "busy" (claimed by a live run), "failed"
    summary: str = ""  # the kind's one-line summary of the new record, or the failure message
    seconds: float = 0.0
    traceback: str = ""  # for a failure that is a bug, not a HarnessError


def failure_message(e: Exception) -> str:
    """A user-fixable error is its message; anything else is a bug, shown with its type."""
    return str(e) if isinstance(e, HarnessError) else f"{type(e).__name__}: {e}"


def recorded(run: cell_runner.CellRun) -> bool:
    """The resolved cell has its record, made under the same cell key."""
    rec = load_record(run.path)
    return rec is not None and rec.get("cell_key") == run.key


def attempt(cell: Cell, spec, ctx: GridContext) -> CellResult:
    """Run one cell unless it is recorded or claimed by a live run; every launcher's worker calls this.

    The claim is taken before training and checked against the record again once held (another run may have
    finished the cell in between); it is released after the record or the error record is written, and when a
    stop signal unwinds the cell (KeyboardInterrupt, SystemExit), whose last step checkpoint stays for the resume.
    """
    try:
        run = cell_runner.resolve(cell, spec, ctx)
        if recorded(run):
            return CellResult(cell, "done")
        claim = claims.try_claim(run.path)
        if claim is None:
            return CellResult(cell, "busy")
        with claim:
            if recorded(run):
                return CellResult(cell, "done")
            t0 = time.time()
            try:
                record = cell_runner.run_cell(cell, spec, ctx)
            except Exception as e:  # one bad cell must not stop the grid
                return failed(cell, spec, ctx, e, time.time() - t0)
            return CellResult(cell, "ran", ctx.kind.summary_line(record), time.time() - t0)
    except Exception as e:  # resolving failed (a config error): recorded as failed like a training error
        return failed(cell, spec, ctx, e)


def failed(cell: Cell, spec, ctx: GridContext, e: Exception, seconds: float = 0.0) -> CellResult:
    """Write the cell's error record; the result carries the message (and the traceback of a bug)."""
    message = failure_message(e)
    cell_runner.fail_cell(cell, ctx, message, spec=spec)
    trace = "" if isinstance(e, HarnessError) else traceback.format_exc().rstrip()
    return CellResult(cell, "failed", message, seconds, trace)


def tally(out: Outcome, result: CellResult, prefix: str) -> None:
    """Count a result into the outcome and print its line (a finished, failed or left-to-another cell)."""
    if result.status == "done":
        out.skipped += 1
    elif result.status == "busy":
        out.busy.append(result.cell)
        log.info("%s: claimed by another live run, left to it", prefix)
    elif result.status == "ran":
        out.ran += 1
        log.info("%s: %s  (%.1fs)", prefix, result.summary, result.seconds)
    else:
        out.failed.append((result.cell, result.summary))
        log.error("%s: FAILED: %s", prefix, result.summary)
        if result.traceback:
            log.error("%s", result.traceback)


def still_to_run(cells: list[Cell], methods: dict, ctx: GridContext, out: Outcome) -> list[cell_runner.CellRun]:
    """In a driver that sends cells elsewhere: the resolved cells not yet recorded. Resolving them here opens (on a
    fresh machine: builds) every store once, before any worker needs it; a cell that cannot resolve is recorded as
    failed."""
    todo = []
    for cell in cells:
        try:
            run = cell_runner.resolve(cell, methods[cell.method], ctx)
        except Exception as e:
            tally(out, failed(cell, methods[cell.method], ctx, e), cell.label())
            continue
        if recorded(run):
            out.skipped += 1
        else:
            todo.append(run)
    return todo


def progress_bar(finished: int, pending: list[cell_runner.CellRun], out: Outcome, n: int) -> str:
    """`[done 3 · running 2 · queued 1 · failed 0 / 6]`, for a launcher with cells in flight elsewhere: the running
    ones are the unfinished cells whose claim exists (a queued cell has none yet); cells left to another run count
    as done here."""
    running = sum(claims.claim_path(run.path).exists() for run in pending)
    return (
        f"[done {finished - len(out.failed)} · running {running} · queued {len(pending) - running} · "
        f"failed {len(out.failed)} / {n}]"
    )


def resources(run: cell_runner.CellRun, options: LaunchOptions) -> CellResources:
    """The resolved cell's declared needs (its spec's `resources` on its config), with the command line's overrides."""
    declared = run.spec.resources(run.cell.modality, run.cfg)
    return CellResources(
        gpus=declared.gpus if options.gpus_per_cell is None else options.gpus_per_cell,
        cpus=declared.cpus if options.cpus_per_cell is None else options.cpus_per_cell,
    )


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived: stop starting cells, unwind the one in flight."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signal_name = signal.Signals(signum).name


@contextlib.contextmanager
def stop_on_signals():
    """SIGTERM (Slurm preemption, a cluster's kill, `kill`) and SIGINT (Ctrl-C) raise `Stopped` once in the main
    thread; repeats are ignored while the stop unwinds, so that claims are released. Off the main thread (where
    Python cannot install handlers) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = []

    def handler(signum, frame):
        if stopping:
            log.warning("%s again: already stopping", signal.Signals(signum).name)
            return
        stopping.append(signum)
        raise Stopped(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def interrupted_message(what: str, e: BaseException, options: LaunchOptions) -> str:
    name = getattr(e, "signal_name", "SIGINT")
    return (
        f"\nstopped by {name} {what}: finished cells and the last finished step of every started cell are kept, "
        f"claims released. Resume with:\n  {options.resume_command}"
    )


def run_local(
    cells: list[Cell], methods: dict, ctx: GridContext, dry_run: bool = False, options: LaunchOptions | None = None
) -> Outcome:
    """Run (or, with dry_run, only classify) every cell in this process; one failing cell does not stop the grid."""
    options = options or LaunchOptions()
    if dry_run:
        return classify(cells, methods, ctx)
    out = Outcome()
    current = None
    with stop_on_signals():
        try:
            for i, cell in enumerate(cells, 1):
                current = cell
                tally(out, attempt(cell, methods[cell.method], ctx), f"[{i}/{len(cells)}] {cell.label()}")
        except KeyboardInterrupt as e:
            log.warning("%s", interrupted_message(f"during {current.label()}", e, options))
            out.interrupted = True
    if out.busy:
        log.info("%d cell(s) were claimed by another live run and left to it", len(out.busy))
    return out


def classify(cells: list[Cell], methods: dict, ctx: GridContext) -> Outcome:
    """--dry-run: which cells are recorded, running elsewhere (a live claim), to run, or cannot run."""
    out = Outcome()
    for i, cell in enumerate(cells, 1):
        prefix = f"[{i}/{len(cells)}] {cell.label()}"
        try:
            run = cell_runner.resolve(cell, methods[cell.method], ctx)
        except Exception as e:
            message = failure_message(e)
            log.error("%s: FAILED: %s", prefix, message)
            out.failed.append((cell, message))
            continue
        path = claims.claim_path(run.path)
        holder = claims.read_claim(path)
        if recorded(run):
            out.skipped += 1
            log.info("%s: done", prefix)
        elif path.exists() and claims.stale_reason(path) is None:
            log.info("%s: running (claimed by %s)", prefix, f"{holder['host']}:{holder['pid']}" if holder else "?")
        else:
            log.info("%s: to run", prefix)
    return out


#: the contexts a worker process has received, by grid: a worker that runs several cells opens each store once
_WORKER_CONTEXTS: dict[str, GridContext] = {}


def require(package: str, launcher: str):
    """Import a launcher's engine, or say how to get it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ConfigError(
            f"--launcher {launcher} needs the {package} package, which is not installed: "
            f"install the pinned requirements (.venv/bin/pip install -r requirements.txt)"
        ) from None


def worker_context(ctx: GridContext, device: torch.device, cwd: str, threads: int | None = None) -> GridContext:
    """In a Ray worker or Slurm task: the grid's context for this process, on `device`, in the driver's working
    directory (relative data and results paths, as in the records, mean the same there)."""
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)
    key = config_hash(
        {
            "suite": ctx.suite.name,
            "data": str(ctx.data_root),
            "results": str(ctx.results_dir),
            "overrides": ctx.overrides,
            "options": ctx.options,
            "adapters": sorted(ctx.adapters),
        }
    )
    mine = _WORKER_CONTEXTS.setdefault(key, ctx)
    mine.device = device
    if threads:
        torch.set_num_threads(max(1, int(threads)))
    return mine
