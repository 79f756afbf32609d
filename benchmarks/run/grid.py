"""The grid of a suite: which (dataset, protocol, method, modality, seed) cells run, and why others do not."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.core.method import MethodSpec, check_settings
from benchmarks.run.cell import Cell
from benchmarks.suites import Suite
from datasets import registry as dataset_registry
from datasets.base import MODALITIES
from datasets.errors import ConfigError
from methods import registry as method_registry


@dataclass
class Grid:
    cells: list[Cell]
    missing: dict[str, str]  # dataset -> what to put where
    not_applicable: list[str] = field(
        default_factory=list
    )  # (dataset, method, modality) combinations left out, with why
    datasets: dict = field(default_factory=dict)  # name -> adapter, every dataset of the suite
    methods: dict[str, MethodSpec] = field(default_factory=dict)  # name -> spec, every method of the suite


def _available_views(adapter, data_root: Path) -> tuple[str, ...]:
    """What the adapter's store offers under `data_root` now (`available_views`; plain `views` for duck-typed
    adapters)."""
    available = getattr(adapter, "available_views", None)
    return tuple(available(data_root)) if callable(available) else tuple(adapter.views)


def _hint(adapter, data_root: Path, lacking: set) -> str:
    hint = getattr(adapter, "missing_views_hint", None)
    return hint(data_root, lacking) if callable(hint) else ""


def _check_choice(kind: str, chosen, known, suite: str) -> None:
    unknown = sorted(set(chosen or []) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown {kind}(s) {unknown} for suite {suite}; known: {', '.join(sorted(known))} "
            f"(see `python run_all.py --list`)"
        )


def build_grid(
    suite: Suite,
    data_root: Path,
    datasets=None,
    methods=None,
    modalities=None,
    seeds=None,
    settings: dict | None = None,
) -> Grid:
    """Cells for the present datasets; the missing datasets with their instructions; the (dataset, method,
    modality) combinations skipped because the dataset lacks a view the method reads. Unknown names and
    `--set` keys that no selected method has are a ConfigError."""
    all_datasets = {k: a for k, a in dataset_registry().items() if suite.name in a.suites}
    all_methods = method_registry(suite.name)
    _check_choice("dataset", datasets, all_datasets, suite.name)
    _check_choice("method", methods, all_methods, suite.name)
    _check_choice("modality", modalities, MODALITIES, suite.name)
    chosen_datasets, chosen_methods = sorted(datasets or all_datasets), sorted(methods or all_methods)
    check_settings(settings or {}, [all_methods[m] for m in chosen_methods], chosen_datasets)
    grid = Grid([], {}, [], all_datasets, all_methods)
    for name in chosen_datasets:
        adapter = all_datasets[name]
        status = adapter.availability(Path(data_root))
        if not status.present:
            grid.missing[name] = status.message
            continue
        provided = _available_views(adapter, Path(data_root))
        for protocol in adapter.protocols():
            for method_name in chosen_methods:
                spec = all_methods[method_name]
                for modality in modalities or spec.modalities:
                    if modality not in spec.modalities or modality not in adapter.modalities:
                        continue
                    lacking = set(spec.required_views(modality, spec.config(name, modality))) - set(provided)
                    if lacking:
                        hint = _hint(adapter, Path(data_root), lacking)
                        grid.not_applicable.append(
                            f"{method_name} ({modality}) does not run on {adapter.title}: it reads view(s) "
                            f"{sorted(lacking)}, "
                            f"the dataset provides {list(provided)}" + (f"; {hint}" if hint else "")
                        )
                        continue
                    for seed in seeds if seeds is not None else suite.seeds:
                        grid.cells.append(Cell(suite.name, name, protocol.name, method_name, modality, seed))
    return grid
