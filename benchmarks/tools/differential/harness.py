"""Running a harness cell on the differential's fixture, recording per-epoch loss, val accuracy and the selected
epoch of every step (what the reference scripts print), beside the record's per-step test accuracy.

The cell runs as `benchmarks.run.cell` runs it (resolve the config with the differential's overrides, build the
strategy, train step by step, evaluate each step), without writing a record or checkpoints. The trajectory is
read through an avalanche plugin (the epoch's mean loss, before the val pass) and a wrapper around the
strategy's `evaluate_split` (the val accuracy the selection uses).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from avalanche.training.plugins import SupervisedPlugin

from benchmarks.run.cell import Cell, GridContext, resolve, trained_steps
from benchmarks.suites import get_suite
from datasets import get_adapter
from methods import registry

SUITE = "audio-visual"


class _Trajectory(SupervisedPlugin):
    """Per step, per epoch: {"epoch", "loss", "val"}."""

    def __init__(self):
        super().__init__()
        self.steps: list[list[dict]] = []

    def before_training_exp(self, strategy, **kwargs):
        self.steps.append([])

    def after_training_epoch(self, strategy, **kwargs):
        loss = float(strategy.epoch_loss) / max(1, strategy.epoch_batches)
        self.steps[-1].append({"epoch": len(self.steps[-1]) + 1, "loss": loss, "val": None})

    def record_val(self, value: float) -> None:
        if self.steps and self.steps[-1] and self.steps[-1][-1]["val"] is None:
            self.steps[-1][-1]["val"] = value


def harness_overrides(settings: dict, modality: str, extra: dict | None = None) -> dict:
    """The config overrides that put a harness cell on the reference run's settings."""
    return {
        "epochs": settings["epochs"][modality],
        "batch_size": settings["batch_size"],
        "exemplar_batch_size": settings["exemplar_batch_size"],
        "eval_batch_size": settings["eval_batch_size"],
        "memory": settings["memory"],
        "lr": settings["lr"],
        "weight_decay": settings["weight_decay"],
        **dict(extra or {}),  # --harness-set: any config key, e.g. distillation=reference, selection_ties=last
    }


def expected_config(method: str, modality: str, settings: dict, extra: dict, dataset: str = "ave") -> dict:
    """The config a harness run with these settings resolves to now (the method's defaults may have changed since
    a cached run; the differential then runs it again)."""
    return registry(SUITE)[method].config(dataset, modality, harness_overrides(settings, modality, extra))


def run(
    data_root: Path,
    method: str,
    modality: str,
    seed: int,
    settings: dict,
    dataset: str = "ave",
    device: str = "cpu",
    threads: int = 1,
    extra: dict | None = None,
) -> dict:
    """One harness cell. Returns {"A", "R", "best_val_epoch", "trajectory", "exemplars", "seconds", "config"}."""
    torch.set_num_threads(threads)
    suite = get_suite(SUITE)
    spec = registry(SUITE)[method]
    ctx = GridContext(
        suite,
        data_root,
        Path(data_root) / "unused-results",
        torch.device(device),
        progress=False,
        overrides=harness_overrides(settings, modality, extra),
    )
    protocol = get_adapter(dataset).protocols()[0].name
    cell = Cell(SUITE, dataset, protocol, method, modality, seed)
    run_ = resolve(cell, spec, ctx)
    torch.manual_seed(seed)
    strategy = spec.build(
        modality=modality,
        store=ctx.store(dataset),
        stream=run_.stream,
        cfg=run_.cfg,
        device=ctx.device,
        seed=seed,
        progress=False,
    )
    trajectory = _Trajectory()
    strategy.plugins.append(trajectory)
    evaluate_split = strategy.evaluate_split

    def recording_evaluate_split(split: str) -> float:
        value = evaluate_split(split)
        if split == "val":
            trajectory.record_val(value)
        return value

    strategy.evaluate_split = recording_evaluate_split
    rows, t0, exemplars = ctx.kind.new_rows(), time.time(), []
    for t, _ in trained_steps(run_.stream, strategy, 0, ctx.device):
        ctx.kind.evaluate_step(strategy, run_.stream, t, rows)
        if getattr(strategy, "memory", None):  # the memory after step t, as store ids (= the reference's vids)
            ids = strategy.store.ids
            exemplars.append(sorted(ids[r] for rows_c in strategy.memory.values() for r in rows_c.tolist()))
    results = ctx.kind.results(strategy, run_.stream, run_.cfg, rows, run_)
    return {
        "A": results["A"],
        "R": results["R"],  # per step, the accuracy on each earlier step's classes
        "best_val_epoch": results["best_val_epoch"],
        "trajectory": trajectory.steps,
        "exemplars": exemplars,
        "seconds": time.time() - t0,
        "config": run_.cfg,
    }
