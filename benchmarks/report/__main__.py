"""`python -m benchmarks.report --results results --out leaderboard`: re-render the leaderboard from records alone.

Why a command of its own: after a crash, a fix to the report, or on another machine the pages can be rebuilt without
running anything (no missing-dataset instructions or reported numbers then: those come from run_all.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.report.pages import render


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.report", description="Re-render the leaderboard from result records."
    )
    ap.add_argument("--results", type=Path, default=Path("results"), help="the results directory (default: results)")
    ap.add_argument("--out", type=Path, default=Path("leaderboard"), help="where to write (default: leaderboard)")
    args = ap.parse_args(argv)
    for path in render(args.results, args.out).values():
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
