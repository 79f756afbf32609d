"""`run_all.py --launcher slurm`: a submitit job array over the cells still to run.

The driver resolves every cell (opening each store once, here), leaves out the recorded ones and
submits the rest as one job array: each array task runs `--slurm-cells-per-task` cells (default 1)
through `launch.attempt`, so claims, resume and records are the same as in the local launcher. Each
task asks for `--slurm-gpus-per-task` GPUs (default 1, 0 with `--device cpu`), `--slurm-cpus-per-task`
CPUs and `--slurm-time` minutes on `--slurm-partition`.

Preemption and time-outs: submitit has Slurm signal a task (USR2) before it stops it; the task's
`checkpoint` releases its claims and has submitit requeue the same task, which skips its recorded
cells and resumes the cell in flight from its last step checkpoint. The driver waits for the array,
printing one line per finished cell; stopping the driver (SIGTERM, Ctrl-C) cancels the array.

`--slurm-executor local` runs the same array through submitit's local executor (each task a local
process, preemption by `job._interrupt()`), which is how the tests exercise it without Slurm.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import torch

from benchmarks.run import cell as cell_runner
from benchmarks.run.cell import Cell, CellRun, GridContext
from benchmarks.run.launch import (
    CellResult,
    LaunchOptions,
    Outcome,
    attempt,
    classify,
    failure_message,
    interrupted_message,
    progress_bar,
    recorded,
    require,
    still_to_run,
    stop_on_signals,
    tally,
    worker_context,
)
from datasets.errors import ConfigError

log = logging.getLogger(__name__)


def _task_class():
    import submitit

    class CellTask(submitit.helpers.Checkpointable):
        """One array task: its cells in order; requeued with the same cells when preempted or timed out."""

        def __call__(self, cells: list, ctx: GridContext, cwd: str, use_gpu: bool) -> list[CellResult]:
            ours = logging.getLogger("benchmarks")  # the runner's lines (resuming, claims) into the task's log
            if not ours.handlers:
                handler = logging.StreamHandler()
                handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
                ours.addHandler(handler)
                ours.setLevel(logging.INFO)
            device = torch.device("cuda") if use_gpu and torch.cuda.is_available() else torch.device("cpu")
            ctx = worker_context(ctx, device, cwd)
            return [attempt(cell, spec, ctx) for cell, spec in cells]

        def checkpoint(self, *args, **kwargs):
            # the cells' state is already on disk (step checkpoints); give the claims up so the requeued task,
            # wherever it lands, takes them at once
            from benchmarks.run import claims

            claims.release_all()
            return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

    return CellTask


def executor(ctx: GridContext, options: LaunchOptions):
    submitit = require("submitit", "slurm")
    if options.slurm_executor != "local" and shutil.which("sbatch") is None:
        raise ConfigError(
            "--launcher slurm: there is no `sbatch` on this machine; run it on a Slurm login node, or use "
            "--slurm-executor local to run the array as local processes"
        )

    folder = Path(options.slurm_folder or Path(ctx.results_dir) / ".submitit") / "%j"
    ex = submitit.AutoExecutor(folder=folder, cluster="local" if options.slurm_executor == "local" else "slurm")
    gpus = options.slurm_gpus_per_task
    if gpus is None:
        wants_gpu = options.device_request != "cpu"
        gpus = int(wants_gpu and (options.slurm_executor != "local" or torch.cuda.is_available()))
    params = {
        "name": f"avcil-{ctx.suite.name}",
        "timeout_min": options.slurm_time_min,
        "cpus_per_task": options.slurm_cpus_per_task,
        "tasks_per_node": 1,
        "nodes": 1,
    }
    if gpus:
        params["gpus_per_node"] = gpus
    if options.slurm_executor != "local":
        if options.slurm_partition:
            params["slurm_partition"] = options.slurm_partition
        if options.slurm_array_parallelism:
            params["slurm_array_parallelism"] = options.slurm_array_parallelism
    params.update(options.slurm_extra)
    ex.update_parameters(**params)
    return ex, gpus > 0


def submit(todo: list[CellRun], ctx: GridContext, options: LaunchOptions):
    """Submit the array over the resolved cells; returns [(job, its cells' runs)]."""
    ex, use_gpu = executor(ctx, options)
    worker_ctx = ctx.for_workers({run.cell.dataset for run in todo})
    worker_ctx.progress = False
    k = max(1, options.slurm_cells_per_task)
    chunks = [todo[i : i + k] for i in range(0, len(todo), k)]
    n = len(chunks)
    payloads = [[(run.cell, run.spec) for run in chunk] for chunk in chunks]
    jobs = ex.map_array(_task_class()(), payloads, [worker_ctx] * n, [os.getcwd()] * n, [use_gpu] * n)
    log.info(
        "%d cell(s) submitted as %d %s task(s) (job %s; logs in %s)",
        len(todo),
        n,
        options.slurm_executor,
        jobs[0].job_id.split("_")[0],
        Path(jobs[0].paths.folder).parent,
    )
    return list(zip(jobs, chunks))


def collect(submitted, ctx: GridContext, options: LaunchOptions, out: Outcome, poll_s: float = 1.0) -> Outcome:
    """Wait for the array, one line per finished cell; on SIGTERM/SIGINT cancel what is left."""
    waiting, finished, n = list(submitted), 0, sum(len(runs) for _, runs in submitted)
    with stop_on_signals():
        try:
            while waiting:
                for job, runs in [w for w in waiting if w[0].done()]:
                    waiting.remove((job, runs))
                    try:
                        results = job.result()
                    except Exception as e:  # the task itself failed (killed, timed out too often)
                        results = [
                            lost(run, ctx, f"Slurm task {job.job_id} failed: {failure_message(e)}") for run in runs
                        ]
                    for result in results:
                        finished += 1
                        left = [run for _, unfinished in waiting for run in unfinished]
                        tally(out, result, f"{progress_bar(finished, left, out, n)} {result.cell.label()}")
                if waiting:
                    time.sleep(poll_s)
        except KeyboardInterrupt as e:
            out.interrupted = True
            for job, _ in waiting:
                job.cancel(check=False)
            log.warning("%s", interrupted_message(f"with {len(waiting)} task(s) unfinished (cancelled)", e, options))
    if out.busy:
        log.info("%d cell(s) were claimed by another live run and left to it", len(out.busy))
    return out


def lost(run: CellRun, ctx: GridContext, message: str) -> CellResult:
    """A cell of a task that died: failed unless it was recorded before."""
    if recorded(run):
        return CellResult(run.cell, "ran", "recorded before its task failed")
    cell_runner.fail_cell(run.cell, ctx, message, spec=run.spec)
    return CellResult(run.cell, "failed", message)


def run_slurm(
    cells: list[Cell], methods: dict, ctx: GridContext, dry_run: bool = False, options: LaunchOptions | None = None
) -> Outcome:
    options = options or LaunchOptions()
    if dry_run:
        return classify(cells, methods, ctx)
    out = Outcome()
    todo = still_to_run(cells, methods, ctx, out)
    if not todo:
        return out
    submitted = submit(todo, ctx, options)
    return collect(submitted, ctx, options, out, poll_s=1.0 if options.slurm_executor == "local" else 15.0)
