"""The metrics of the harness and their one registry.

`REGISTRY` maps every metric key to its entry (display name, formula, computing function; see `registry.Metric`).
The summaries in the records are computed by iterating these entries and the leaderboard prints their formulas, so a
metric shown on a page always has the formula of the code that computed it.
"""

from __future__ import annotations

from benchmarks.metrics import accuracy, mcil, multilabel
from benchmarks.metrics.registry import Metric, build

REGISTRY: dict[str, Metric] = dict(build(accuracy.METRICS, multilabel.PHASE_METRICS, multilabel.METRICS, mcil.METRICS))
