"""`run_all.py --launcher ray`: every cell still to run is one Ray task, packed by the resources it declares.

The driver (this process) resolves every cell first, so each store is opened (built, on a fresh machine)
once here, and leaves out the recorded ones. Each remaining cell becomes a task asking for its
`MethodSpec.resources` (a feature-level cell a quarter of a GPU and one CPU, a raw-media cell a whole
GPU; `--gpus-per-cell` / `--cpus-per-cell` override), GPUs only where the cluster has them and the run
is not `--device cpu`. Ray places the tasks; a worker rebuilds the grid context from the driver's
settings (adapters, data root, results dir, overrides), opens its own stores, and runs the cell
through `launch.attempt`, so claims, resume and records are the same as in the local launcher.

Without `--ray-address` a local Ray instance sized to this machine is started (and stopped at the end);
with one, the driver joins that cluster, whose nodes must see the repository, the data root and the
results directory at the same paths (a shared file system).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from benchmarks.run import cell as cell_runner
from benchmarks.run.cell import Cell, GridContext
from benchmarks.run.launch import (
    CellResult,
    LaunchOptions,
    Outcome,
    attempt,
    classify,
    failure_message,
    interrupted_message,
    progress_bar,
    require,
    resources,
    still_to_run,
    stop_on_signals,
    tally,
    worker_context,
)

log = logging.getLogger(__name__)

REPOSITORY = Path(__file__).resolve().parents[2]


def run_cell_task(cell: Cell, spec, ctx: GridContext, cwd: str, cpus: float) -> CellResult:
    """A Ray task: one cell on the GPU share Ray gave it (none: the CPU), with as many torch threads as CPUs."""
    import ray

    device = torch.device("cuda") if ray.get_gpu_ids() and torch.cuda.is_available() else torch.device("cpu")
    return attempt(cell, spec, worker_context(ctx, device, cwd, threads=cpus))


def start(options: LaunchOptions) -> bool:
    """Join the cluster at --ray-address, or start a local instance sized to this machine; True if started here."""
    ray = require("ray", "ray")

    if ray.is_initialized():
        return False
    runtime_env = {
        "env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))}
    }
    if options.ray_address:
        ray.init(address=options.ray_address, runtime_env=runtime_env, logging_level=logging.WARNING)
    else:
        ray.init(runtime_env=runtime_env, include_dashboard=False, logging_level=logging.WARNING)
    total = ray.cluster_resources()
    log.info(
        "Ray: %g CPU(s), %g GPU(s)%s",
        total.get("CPU", 0),
        total.get("GPU", 0),
        f" at {options.ray_address}" if options.ray_address else "",
    )
    return True


def run_ray(
    cells: list[Cell], methods: dict, ctx: GridContext, dry_run: bool = False, options: LaunchOptions | None = None
) -> Outcome:
    options = options or LaunchOptions()
    if dry_run:
        return classify(cells, methods, ctx)
    ray = require("ray", "ray")

    out = Outcome()
    todo = still_to_run(cells, methods, ctx, out)
    if not todo:
        return out
    started = start(options)
    try:
        return _run_tasks(todo, methods, ctx, options, out)
    finally:
        if started:
            ray.shutdown()


def _run_tasks(todo, methods, ctx: GridContext, options: LaunchOptions, out: Outcome) -> Outcome:
    import ray

    total = ray.cluster_resources()
    use_gpu = total.get("GPU", 0) > 0 and options.device_request != "cpu"
    worker_ctx = ctx.for_workers({run.cell.dataset for run in todo})
    worker_ctx.progress = False  # workers' bars would interleave; the driver prints one line per cell
    ctx_ref, cwd = ray.put(worker_ctx), os.getcwd()
    task = ray.remote(max_retries=0)(run_cell_task)
    pending: dict = {}
    for run in todo:
        cell, need = run.cell, resources(run, options)
        cpus = min(need.cpus, total.get("CPU", 1))  # more than the cluster has would never be scheduled
        gpus = min(need.gpus, total.get("GPU", 0)) if use_gpu else 0
        ref = task.options(num_cpus=cpus, num_gpus=gpus, name=cell.label()).remote(
            cell, methods[cell.method], ctx_ref, cwd, cpus
        )
        pending[ref] = run
    log.info("%d cell(s) submitted to Ray (%s)", len(pending), "GPU fractions" if use_gpu else "CPU only")
    n, finished = len(todo), 0
    with stop_on_signals():
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                cell = pending.pop(ready[0]).cell
                try:
                    result = ray.get(ready[0])
                except ray.exceptions.RayError as e:  # the worker died (out of memory, a node lost): no record
                    result = CellResult(cell, "failed", f"Ray task failed: {failure_message(e)}")
                    cell_runner.fail_cell(cell, ctx, result.summary, spec=methods[cell.method])
                finished += 1
                tally(out, result, f"{progress_bar(finished, list(pending.values()), out, n)} {cell.label()}")
        except KeyboardInterrupt as e:
            out.interrupted = True
            for ref in pending:
                ray.cancel(ref)  # a running task gets KeyboardInterrupt: it releases its claim, keeps its checkpoint
            ray.wait(list(pending), num_returns=len(pending), timeout=20)
            log.warning("%s", interrupted_message(f"with {len(pending)} cell(s) unfinished", e, options))
    if out.busy:
        log.info("%d cell(s) were claimed by another live run and left to it", len(out.busy))
    return out
