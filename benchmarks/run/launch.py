"""Launching a grid: the loop over cells, their one-line results and failures.

`run_local` runs the cells one after another in this process. It is the seam where other
launchers plug in: a launcher takes the grid's cells and a GridContext, runs each cell through
`benchmarks.run.cell` (which resumes, checkpoints and writes the record), and returns an
`Outcome`. Records are the only shared state, so the leaderboard does not care who ran a cell.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field

from benchmarks.run import cell as cell_runner
from benchmarks.run.cell import Cell, GridContext
from datasets.errors import HarnessError

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    ran: int = 0
    skipped: int = 0  # already recorded with the same cell key
    failed: list[tuple[Cell, str]] = field(default_factory=list)
    interrupted: bool = False


def failure_message(e: Exception) -> str:
    """A user-fixable error is its message; anything else is a bug, shown with its type."""
    return str(e) if isinstance(e, HarnessError) else f"{type(e).__name__}: {e}"


def run_local(cells: list[Cell], methods: dict, ctx: GridContext, dry_run: bool = False) -> Outcome:
    """Run (or, with dry_run, only classify) every cell in this process; one failing cell does not stop the grid."""
    out = Outcome()
    for i, cell in enumerate(cells, 1):
        prefix = f"[{i}/{len(cells)}] {cell.label()}"
        try:
            if cell_runner.is_done(cell, methods[cell.method], ctx):
                out.skipped += 1
                if dry_run:
                    log.info("%s: done", prefix)
                continue
            if dry_run:
                log.info("%s: to run", prefix)
                continue
            t0 = time.time()
            record = cell_runner.run_cell(cell, methods[cell.method], ctx)
            log.info("%s: %s  (%.1fs)", prefix, ctx.kind.summary_line(record), time.time() - t0)
            out.ran += 1
        except KeyboardInterrupt:
            log.warning("\ninterrupted during %s; finished cells are kept, re-run to resume", cell.label())
            out.interrupted = True
            return out
        except Exception as e:  # one bad cell must not stop the grid
            message = failure_message(e)
            log.error("%s: FAILED: %s", prefix, message)
            out.failed.append((cell, message))
            if dry_run:
                continue
            if not isinstance(e, HarnessError):
                log.error("%s", traceback.format_exc().rstrip())
            cell_runner.fail_cell(cell, ctx, message)
    return out


LAUNCHERS = {"local": run_local}
