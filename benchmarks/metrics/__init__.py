"""The metrics of the harness and their one registry.

`REGISTRY` maps every metric key to its entry (display name, formula, computing function; see `registry.Metric`).
The summaries in the records are computed by iterating these entries and the leaderboard prints their formulas, so a
metric shown on a page always has the formula of the code that computed it.
"""

from __future__ import annotations

from benchmarks.metrics import accuracy, mcil, multilabel
from benchmarks.metrics.registry import Metric, build

#: bump whenever a formula changes a recorded number (2: macro-F1 counts a class with no positives and no
#: predictions as 0); it enters every cell key, so a re-run recomputes records made under an older formula
VERSION = 2

REGISTRY: dict[str, Metric] = dict(build(accuracy.METRICS, multilabel.PHASE_METRICS, multilabel.METRICS, mcil.METRICS))
