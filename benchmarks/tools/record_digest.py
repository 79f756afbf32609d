"""The numbers of a results directory, as one canonical JSON, and a comparison of two of them.

A refactoring must not move a number. This keeps, for every finished record, everything that
a training run decides (the resolved config, the stream, every result: R, A, every metric, the
last-epoch numbers, the MCIL metrics, the multi-label per-phase scores and histories, method
info) and drops what legitimately differs between two identical runs (costs, timestamps,
environment, git commit). Floats are compared exactly, as written.

    python -m benchmarks.tools.record_digest results > before.json      # before a change
    python -m benchmarks.tools.record_digest results --compare before.json   # after: exit 1 on any difference
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.core.records import iter_records, settings_label

#: record fields that two identical runs may differ in (and, in `encoders`, every `*_seconds` timing)
VOLATILE = ("cost", "created", "environment", "schema")


def digest(results_dir: Path) -> dict:
    """{cell id: the record without its volatile fields}, for every finished record under results_dir."""
    out = {}
    for rec in iter_records(results_dir):
        c = rec["cell"]
        cell_id = f"{rec['suite']}/{c['dataset']}/{c['protocol']}/{c['method']}/{c['modality']}/seed{c['seed']}"
        settings = settings_label(rec.get("settings"))
        cell_id += f" [{settings}]" if settings else ""
        kept = {k: v for k, v in rec.items() if k not in VOLATILE}
        # the feature store's meta also times its own extraction
        kept["encoders"] = {k: v for k, v in kept.get("encoders", {}).items() if not k.endswith("_seconds")}
        out[cell_id] = kept
    return dict(sorted(out.items()))


def differences(before: dict, after: dict, limit: int = 20) -> list[str]:
    """Human-readable differences (missing cells, then the first differing leaf of each differing cell)."""
    lines = [f"only before: {k}" for k in before if k not in after] + [
        f"only after: {k}" for k in after if k not in before
    ]
    for k in before:
        if k in after and before[k] != after[k]:
            lines.append(f"{k}: {_first_difference(before[k], after[k])}")
    return lines[:limit] + ([f"... {len(lines) - limit} more"] if len(lines) > limit else [])


def _first_difference(a, b, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key, "<absent>") != b.get(key, "<absent>"):
                return _first_difference(a.get(key, "<absent>"), b.get(key, "<absent>"), f"{path}.{key}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
    return f"{path or '.'}: {json.dumps(a)[:120]} -> {json.dumps(b)[:120]}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tools.record_digest", description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, help="a results directory (run_all.py --results-dir)")
    p.add_argument(
        "--compare",
        type=Path,
        metavar="DIGEST.json",
        help="compare with a digest written earlier; exit 1 on a difference",
    )
    args = p.parse_args(argv)
    now = digest(args.results)
    if args.compare is None:
        json.dump(now, sys.stdout, indent=1, sort_keys=True)
        print()
        return 0
    before = json.loads(args.compare.read_text())
    now = json.loads(json.dumps(now))  # the same JSON round trip as the stored digest
    diff = differences(before, now)
    print(
        f"{len(before)} records before, {len(now)} now: "
        + ("identical numbers" if not diff else f"{len(diff)} difference(s)")
    )
    for line in diff:
        print("  " + line)
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
