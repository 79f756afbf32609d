"""What differs between suite kinds, as one object the cell runner (benchmarks.run.cell) plugs in.

A suite kind builds the stream of a (dataset, protocol), adjusts a resolved config, evaluates the
model after each step into the runner's rows, turns the rows into the record's `results` block,
and prints a cell's summary line. Everything else (resolve, resume, checkpoints, costs, the
record's other fields) is the runner's, shared by every kind. The leaderboard page of a kind is
rendered from records alone (benchmarks.report), keyed by `name`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path


class SuiteKind(ABC):
    #: the record's `results.kind`-level layout and the report's page layout
    name: str
    #: what one training increment is called in progress lines ("step" or "phase")
    step_word: str = "step"

    @abstractmethod
    def build_stream(self, adapter, store, data_root: Path, protocol: str):
        """The stream every method of this (dataset, protocol) shares."""

    def adjust_config(self, cfg: dict, stream, overrides: dict) -> None:
        """Fill in what the suite decides (e.g. the protocol's memory budget); `cfg` is changed in place."""
        return None

    def new_rows(self) -> dict:
        """The runner's per-cell accumulator (saved in every step checkpoint)."""
        return {}

    @abstractmethod
    def evaluate_step(self, strategy, stream, t: int, rows: dict) -> None:
        """Evaluate the model after step t and append what the record needs to `rows`."""

    def after_step(self, strategy, t: int, run) -> None:
        """Optional per-step output beside the record (`run`: the runner's CellRun)."""
        return None

    @abstractmethod
    def results(self, strategy, stream, cfg: dict, rows: dict, run) -> dict:
        """The record's `results` block."""

    @abstractmethod
    def summary_line(self, record: dict) -> str:
        """The one line run_all prints for a finished cell."""


def fmt(v) -> str:
    """A metric for a summary line: two decimals, or n/a for a missing value."""
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"
