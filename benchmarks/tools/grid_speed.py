"""Packed grid vs one cell at a time: the Ray launcher's speed-up on one device.

    python -m benchmarks.tools.grid_speed                    # 6 feature-level cells on this machine's device
    python -m benchmarks.tools.grid_speed --methods fine_tuning lwf icarl-nme ssil --seeds 0 1 2 --epochs 5
    python -m benchmarks.tools.speed --grid [ARGS]           # the same, from the speed command

A small grid of feature-level cells (the methods given x audio-visual x the seeds) on a synthetic class-clustered
feature store (`--classes`, `--clips` per class, AVE's widths scaled by `--width`) runs twice through the Ray
launcher on one Ray instance, after an untimed one-epoch round that starts and warms up every worker, so both
timed runs use the same processes:

- one after another: every cell asks for the whole device (`--gpus-per-cell 1` on a GPU, every CPU on a CPU), so
  Ray runs one cell at a time, with all the CPU threads;
- packed: every cell asks for what it declares (`MethodSpec.resources`: a feature-level cell 0.25 GPU, 1 CPU),
  so Ray runs several at once on the same device.

It prints both wall times, the speed-up (one after another / packed), and whether the two runs wrote the same
numbers (the cell keys and R matrices; floating-point reductions with another thread count may differ in the last
bits). `--json PATH` writes the figures to one JSON file.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from datasets.base import Availability, ProtocolSpec
from datasets.io import atomic_write_text, pick_device


class SpeedGridAdapter:
    """A run-time dataset over a synthetic feature store (a registered-looking adapter; picklable for workers)."""

    title, suites = "Grid-speed synthetic features", ("audio-visual",)
    modalities = ("audio", "visual", "audio-visual")
    views = ("audio", "visual")

    def __init__(self, name: str, classes: int, clips: int, audio_dim: int, grid: tuple, device: str):
        self.name, self.classes, self.clips, self.audio_dim, self.grid, self.device = (
            name,
            classes,
            clips,
            audio_dim,
            tuple(grid),
            device,
        )

    def availability(self, data_root):
        return Availability(True, "synthetic, built on first use")

    def protocols(self):
        return [ProtocolSpec(f"{self.classes // 2}x2", (2,) * (self.classes // 2), 4 * self.classes)]

    def open(self, data_root, progress=True):
        from benchmarks.tools.speed import build_run_store

        clips = (
            self.clips * self.classes,
            max(2, self.clips // 4) * self.classes,
            max(2, self.clips // 4) * self.classes,
        )
        return build_run_store(
            Path(data_root) / self.name, clips, self.audio_dim, self.grid, self.classes, torch.device(self.device)
        )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["fine_tuning", "lwf", "icarl-nme"], help="feature-level methods")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="seeds (cells = methods x seeds)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--classes", type=int, default=6, help="classes (steps of 2)")
    p.add_argument("--clips", type=int, default=40, help="training clips per class")
    p.add_argument("--width", type=int, default=128, help="feature width (AVE: 768)")
    p.add_argument("--tokens", type=int, default=16, help="visual tokens per frame (AVE: 196)")
    p.add_argument("--frames", type=int, default=2, help="frames per clip (AVE: 8)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--num-cpus", type=int, help="CPUs to use (default: every CPU)")
    p.add_argument(
        "--engine",
        choices=["ray", "processes"],
        help="ray (the Ray launcher; default when ray is installed) or processes (local processes sharing the "
        "grid through the cell claims; the default without ray)",
    )
    p.add_argument("--work-dir", type=Path, help="where the store and records go (default: a temporary folder)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="grid_speed_") as tmp:
        figures = measure(args, Path(args.work_dir or tmp))
    print_figures(figures)
    if args.json:
        atomic_write_text(args.json, json.dumps(figures, indent=2) + "\n")
    return 0


def measure(args, work: Path) -> dict:
    import datasets
    from benchmarks.core.method import SETTINGS_KEY
    from benchmarks.run.cell import GridContext
    from benchmarks.run.grid import build_grid
    from benchmarks.suites import get_suite

    # the class by its module name (not __main__'s copy under `python -m`), so workers import it, not unpickle it
    from benchmarks.tools.grid_speed import SpeedGridAdapter as importable

    device = pick_device(args.device)
    grid_dims = (args.frames, args.tokens, args.width)
    adapter = importable("grid_speed", args.classes, args.clips, args.width, grid_dims, str(device))
    datasets.register(adapter)
    suite = get_suite("audio-visual")
    grid = build_grid(suite, work / "data", [adapter.name], args.methods, ["audio-visual"], args.seeds)
    overrides = {"epochs": args.epochs, "precision": None, "random_encoders": None, SETTINGS_KEY: {}}
    # the store is built (and the stream checked) before anything is timed
    GridContext(suite, work / "data", work / "unused", device, progress=False).stream(
        adapter.name, grid.cells[0].protocol
    )
    spec = grid.methods[args.methods[0]]
    declared = spec.resources("audio-visual", spec.config(adapter.name, "audio-visual"))
    cpus = args.num_cpus or os.cpu_count()
    engine = args.engine or ("ray" if importlib.util.find_spec("ray") else "processes")
    runner = (RayRunner if engine == "ray" else ProcessRunner)(grid, device, cpus, declared)
    times, numbers = {}, {}
    with runner:
        # an untimed round first (one epoch, packed): every worker imports the methods and runs each once
        rounds = [("warm-up", True, {**overrides, "epochs": 1}), ("one_after_another", False, overrides)]
        for name, packed, values in [*rounds, ("packed", True, overrides)]:
            results = work / f"results-{name}"
            ctx = GridContext(suite, work / "data", results, device, progress=False, overrides=values)
            times[name] = runner.run(ctx, packed)
            numbers[name] = record_numbers(results)
            if len(numbers[name]) != len(grid.cells):
                raise SystemExit(f"grid_speed: the {name} run recorded {len(numbers[name])} of {len(grid.cells)} cells")
    return {
        "engine": engine,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpus": cpus,
        "gpus": runner.gpus,
        "cells": len(grid.cells),
        "methods": args.methods,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "store": {"classes": args.classes, "clips_per_class": args.clips, "audio": args.width, "visual": grid_dims},
        "packed_per_cell": {"gpus": declared.gpus if runner.gpus else 0, "cpus": declared.cpus},
        "packed_at_once": runner.slots,
        "one_after_another_s": times["one_after_another"],
        "packed_s": times["packed"],
        "speedup": times["one_after_another"] / times["packed"],
        "same_numbers": numbers["one_after_another"] == numbers["packed"],
    }


class RayRunner:
    """The Ray launcher on one local Ray instance: whole-device cells (one at a time) vs declared shares."""

    def __init__(self, grid, device, cpus: int, declared):
        self.grid, self.device, self.cpus, self.declared = grid, device, cpus, declared

    def __enter__(self):
        import ray

        ray.init(num_cpus=self.cpus, include_dashboard=False, logging_level=logging.WARNING)
        self.gpus = ray.cluster_resources().get("GPU", 0) if self.device.type == "cuda" else 0
        share = self.declared.gpus if self.gpus else self.declared.cpus / self.cpus
        self.slots = max(1, int(1 / share)) if self.gpus else max(1, int(self.cpus // self.declared.cpus))
        return self

    def run(self, ctx, packed: bool) -> float:
        from benchmarks.run.launch import LaunchOptions
        from benchmarks.run.ray_launch import run_ray

        whole = LaunchOptions(
            device_request=str(self.device), gpus_per_cell=1.0 if self.gpus else 0.0, cpus_per_cell=self.cpus
        )
        t0 = time.time()
        run_ray(
            self.grid.cells,
            self.grid.methods,
            ctx,
            options=LaunchOptions(device_request=str(self.device)) if packed else whole,
        )
        return time.time() - t0

    def __exit__(self, *exc):
        import ray

        ray.shutdown()


class ProcessRunner:
    """Without Ray (a machine without its wheel): `slots` local processes run the same grid on one results
    directory and share it out through the cell claims; one process with every thread vs as many processes as
    the declared share packs on the device (4 for 0.25 GPU; CPUs / CPUs per cell on a CPU)."""

    def __init__(self, grid, device, cpus: int, declared):
        self.grid, self.device, self.cpus = grid, device, cpus
        self.gpus = torch.cuda.device_count() if device.type == "cuda" else 0
        self.slots = max(1, int(1 / declared.gpus)) if self.gpus else max(1, int(cpus // declared.cpus))

    def __enter__(self):
        return self

    def run(self, ctx, packed: bool) -> float:
        import multiprocessing

        slots = self.slots if packed else 1
        mp = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        ready = mp.Barrier(slots + 1)
        worker_ctx = ctx.for_workers({cell.dataset for cell in self.grid.cells})
        args = (self.grid.cells, self.grid.methods, worker_ctx, str(self.device), max(1, self.cpus // slots), ready)
        procs = [mp.Process(target=process_worker, args=args) for _ in range(slots)]
        for p in procs:
            p.start()
        ready.wait()  # every process has imported the runner and opened the store: start the clock
        t0 = time.time()
        for p in procs:
            p.join()
        if any(p.exitcode for p in procs):
            raise SystemExit(f"grid_speed: a worker process failed (exit codes {[p.exitcode for p in procs]})")
        return time.time() - t0

    def __exit__(self, *exc):
        pass


def process_worker(cells, methods, ctx, device: str, threads: int, ready) -> None:
    """One packing process: every cell of the grid that no other process has claimed or recorded."""
    from benchmarks.run.launch import attempt, worker_context

    ctx = worker_context(ctx, torch.device(device), os.getcwd(), threads=threads)
    ctx.stream(cells[0].dataset, cells[0].protocol)
    ready.wait()
    for cell in cells:
        attempt(cell, methods[cell.method], ctx)


def record_numbers(results: Path) -> dict:
    from benchmarks.core.records import iter_records

    return {tuple(r["cell"].values()): (r["cell_key"], r["results"]["R"]) for r in iter_records(results)}


def print_figures(f: dict) -> None:
    share = f"{f['packed_per_cell']['gpus']:g} GPU, " if f["gpus"] else ""
    print(
        f"grid: {f['cells']} feature-level cells ({', '.join(f['methods'])} x seeds {f['seeds']}), {f['epochs']} epochs"
    )
    print(f"device: {f['device']}; {f['engine']}: {f['cpus']} CPU(s), {f['gpus']:g} GPU(s)")
    print(f"one after another (whole device per cell): {f['one_after_another_s']:.1f} s")
    print(
        f"packed ({share}{f['packed_per_cell']['cpus']:g} CPU per cell, {f['packed_at_once']} at once): "
        f"{f['packed_s']:.1f} s"
    )
    print(f"speed-up: {f['speedup']:.2f}x  (same numbers in both runs: {'yes' if f['same_numbers'] else 'no'})")


if __name__ == "__main__":
    sys.exit(main())
