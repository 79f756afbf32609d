"""What one metric is, so that the code computing it and the leaderboard describing it read the same entry.

Why an entry carries both the function and the formula text: the summaries stored in the records are produced by
iterating these entries (`evaluate`), and the leaderboard's footnotes print their `formula`; a metric therefore cannot
be computed without being documented, and a renamed key changes both at once.

The entries live next to their functions (`accuracy.METRICS`, `multilabel.PHASE_METRICS` / `multilabel.METRICS`,
`mcil.METRICS`); `benchmarks.metrics.REGISTRY` gathers them into one mapping. This module imports no sibling, so every
metric module can import it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Metric:
    """One metric.

    key: the name its value is stored under (record `results.metrics`, results.csv column, table column).
    name: the display name (table header, footnote).
    formula: the footnote text, in the notation of the module that computes it.
    compute: the function whose value is stored under `key`, called with the inputs named in `inputs`.
    inputs: the names of compute's positional arguments, looked up in `evaluate`'s keyword arguments.
    higher_is_better: which direction the leaderboard's "best" is (None: no direction, e.g. a similarity).
    per_phase: for a summary over phases, the key of the per-phase metric it summarises (its formula is printed too).
    source: where the value lives in a record when it is not `results.metrics[key]`.
    """

    key: str
    name: str
    formula: str
    compute: Callable[..., Any]
    inputs: tuple[str, ...] = ()
    higher_is_better: bool | None = True
    per_phase: str | None = None
    source: str | None = None


def evaluate(metrics: Iterable[Metric], **inputs) -> dict[str, Any]:
    """{key: compute(*its inputs)} for every entry, in the entries' order (the order the records store them in)."""
    return {m.key: m.compute(*(inputs[name] for name in m.inputs)) for m in metrics}


def build(*groups: Iterable[Metric]) -> Mapping[str, Metric]:
    """One mapping key -> entry over all groups; a key defined twice is an error, not a silent override."""
    out: dict[str, Metric] = {}
    for metric in (m for group in groups for m in group):
        if metric.key in out:
            raise ValueError(f"metric key {metric.key!r} is defined twice")
        out[metric.key] = metric
    return out
