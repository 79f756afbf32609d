"""Suites: which datasets, methods, modalities and seeds a `run_all.py --suite` grid holds."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from benchmarks.runner import Cell
from datasets import registry as dataset_registry
from methods import registry as method_registry


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    seeds: tuple[int, ...] = (0, 1)
    #: module running the cells: GridContext, is_done, run_cell, fail_cell, summary_line, and optionally
    #: method_registry (default: the single-label `methods.registry`)
    runner: str = "benchmarks.runner"
    #: leaderboard layout: "single-label" (accuracy matrices) or "multilabel" (mAP / F1 per phase)
    kind: str = "single-label"


SUITES = {
    "audio-visual": Suite("audio-visual", "single-label audio-visual class-incremental learning (AV-CIL protocol)"),
    "audio-multilabel": Suite("audio-multilabel", "multi-label audio class-incremental learning (Mulimani & Mesaros: 30 base classes + 4 phases of 5)",
                              runner="benchmarks.multilabel", kind="multilabel"),
}


def suite_runner(suite: Suite):
    return importlib.import_module(suite.runner)


def suite_methods(suite: Suite) -> dict:
    """Every method the suite's runner knows (filtered by `spec.suites` in build_grid)."""
    registry = getattr(suite_runner(suite), "method_registry", None)
    return registry() if registry is not None else method_registry()


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise KeyError(f"unknown suite {name!r}; known: {', '.join(SUITES)}")
    return SUITES[name]


def _available_views(adapter, data_root: Path) -> tuple[str, ...]:
    """What the adapter's store offers under `data_root` now (`available_views`; plain `views` for duck-typed adapters)."""
    available = getattr(adapter, "available_views", None)
    return tuple(available(data_root)) if callable(available) else tuple(adapter.views)


def _hint(adapter, data_root: Path, lacking: set) -> str:
    hint = getattr(adapter, "missing_views_hint", None)
    return hint(data_root, lacking) if callable(hint) else ""


def build_grid(suite: Suite, data_root: Path, datasets=None, methods=None, modalities=None, seeds=None):
    """Cells for the present datasets, {dataset: message} for the missing ones, and notes on
    (dataset, method, modality) combinations skipped because the dataset lacks a view the method reads."""
    all_datasets = {k: a for k, a in dataset_registry().items() if suite.name in a.suites}
    all_methods = {k: m for k, m in suite_methods(suite).items() if suite.name in m.suites}
    for kind, chosen, known in (("dataset", datasets, all_datasets), ("method", methods, all_methods)):
        unknown = sorted(set(chosen or []) - set(known))
        if unknown:
            raise KeyError(f"unknown {kind}(s) {unknown} for suite {suite.name}; known: {', '.join(sorted(known))}")
    cells, missing, skipped = [], {}, []
    for name in sorted(datasets or all_datasets):
        adapter = all_datasets[name]
        status = adapter.availability(Path(data_root))
        if not status.present:
            missing[name] = status.message
            continue
        provided = _available_views(adapter, Path(data_root))
        for protocol in adapter.protocols():
            for method_name in sorted(methods or all_methods):
                spec = all_methods[method_name]
                for modality in modalities or spec.modalities:
                    if modality not in spec.modalities or modality not in adapter.modalities:
                        continue
                    lacking = set(spec.required_views(modality, spec.config(name, modality))) - set(provided)
                    if lacking:
                        skipped.append(f"{method_name} ({modality}) does not run on {adapter.title}: it reads view(s) {sorted(lacking)}, "
                                       f"the dataset provides {list(provided)}" + (f"; {hint}" if (hint := _hint(adapter, Path(data_root), lacking)) else ""))
                        continue
                    for seed in seeds if seeds is not None else suite.seeds:
                        cells.append(Cell(suite.name, name, protocol.name, method_name, modality, seed))
    return cells, missing, skipped, all_datasets, all_methods
