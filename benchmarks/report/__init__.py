"""The leaderboard: pages, tables, plots and CSV rendered from the result records alone.

Modules: `rows` (record -> row, the CSV schemas), `tables` (markdown tables and footnotes), `plots` (figures),
`notes` (the prose blocks), `pages` (page assembly and `render`); `python -m benchmarks.report` re-renders.
"""

from __future__ import annotations

from pathlib import Path

#: numbers the references report, shown beside the harness's rows (see the file's header)
REPORTED = Path(__file__).parent / "reported.yaml"
