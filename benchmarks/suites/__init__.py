"""Suites: what a `run_all.py --suite` grid is (its kind, description and default seeds).

Which datasets and methods a suite holds is declared where they live: an adapter lists its
suites in `DatasetAdapter.suites`, a method in `MethodSpec.suites`.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.suites.kind import SuiteKind
from benchmarks.suites.multilabel import MULTILABEL
from benchmarks.suites.single_label import SINGLE_LABEL
from datasets.errors import ConfigError


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    kind: SuiteKind
    seeds: tuple[int, ...] = (0, 1)


SUITES = {
    "audio-visual": Suite(
        "audio-visual", "single-label audio-visual class-incremental learning (AV-CIL protocol)", SINGLE_LABEL
    ),
    "audio-multilabel": Suite(
        "audio-multilabel",
        "multi-label audio class-incremental learning (Mulimani & Mesaros: 30 base classes + 4 phases of 5)",
        MULTILABEL,
    ),
}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise ConfigError(f"unknown suite {name!r}; known: {', '.join(SUITES)}")
    return SUITES[name]
