"""Function-level differentials: a reference's own functions and the harness's on identical tensors.

Where a whole reference run is out of reach (full-size towers, no released training data), the differential feeds
the same weights and inputs to the reference's functions and to the harness's and compares the outputs. The
reference runs in a subprocess (`run_reference`), with only the user's checkout on its path, so none of its
modules (`model`, `utils`, ...) can shadow the project's: a driver script, written by this project, imports the
reference's modules, reads the inputs the harness side saved (`torch.save` of plain tensors), and saves its
outputs the same way; they are read back with `weights_only=True`.

A comparison is a list of `Check`s, one per quantity, rendered by `markdown` and `as_json`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from datasets.io import atomic_write_text


@dataclass(frozen=True)
class Check:
    name: str  # what is compared, e.g. "grouping forward: slot assignments"
    max_abs_diff: float  # max |harness - reference| over the compared tensor (0 for exact integer agreement)
    tolerance: float
    where: str  # the reference's file:line and the harness's function
    note: str = ""

    @property
    def ok(self) -> bool:
        return math.isfinite(self.max_abs_diff) and self.max_abs_diff <= self.tolerance


def _float64(x) -> torch.Tensor:
    # a Python number goes straight to float64 (through float32 it would differ by ~1e-8)
    return x.detach().double().cpu() if torch.is_tensor(x) else torch.as_tensor(x, dtype=torch.float64)


def compare(name: str, harness, reference, tolerance: float, where: str, note: str = "") -> Check:
    """A Check of two tensors (or numbers); a shape mismatch is an infinite difference, named in the note."""
    h, r = (_float64(x) for x in (harness, reference))
    if h.shape != r.shape:
        return Check(name, math.inf, tolerance, where, f"shape {tuple(h.shape)} vs {tuple(r.shape)}. {note}".strip())
    diff = (h - r).abs().max().item() if h.numel() else 0.0
    return Check(name, diff, tolerance, where, note)


def run_reference(
    reference: Path, driver: str, inputs: dict, python: str = sys.executable, cwd: str = ".", timeout: int = 1800
) -> tuple[dict, float]:
    """Run `driver` (Python source) in a subprocess whose sys.path starts with the checkout (`cwd` inside it).
    The driver finds the inputs at sys.argv[1] and must torch.save a dict of tensors to sys.argv[2].
    Returns (outputs, seconds); raises RuntimeError with the subprocess's output tail when it fails."""
    with tempfile.TemporaryDirectory(prefix="avcil-functional-") as tmp:
        tmp = Path(tmp)
        torch.save(inputs, tmp / "inputs.pt")
        (tmp / "driver.py").write_text(driver)
        work = (Path(reference) / cwd).resolve()
        env = {**os.environ, "PYTHONPATH": str(work), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
        args = [python, str(tmp / "driver.py"), str(tmp / "inputs.pt"), str(tmp / "outputs.pt")]
        t0 = time.time()
        proc = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        seconds = time.time() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"reference driver failed in {work}:\n{(proc.stdout + proc.stderr)[-3000:]}")
        return torch.load(tmp / "outputs.pt", weights_only=True), seconds


def markdown(title: str, checks: list[Check], header: list[str] | None = None) -> str:
    lines = [f"# {title}", "", *(header or []), ""]
    lines += ["| quantity | max abs diff | tolerance | agrees | reference / harness | note |"]
    lines += ["|---|---:|---:|---|---|---|"]
    for c in checks:
        lines.append(
            f"| {c.name} | {c.max_abs_diff:.3g} | {c.tolerance:.0e} | {'yes' if c.ok else '**NO**'} | {c.where} | "
            f"{c.note} |"
        )
    bad = sum(not c.ok for c in checks)
    lines += ["", f"{len(checks) - bad} of {len(checks)} quantities agree within tolerance."]
    return "\n".join(lines) + "\n"


def as_json(checks: list[Check]) -> list[dict]:
    return [{**asdict(c), "ok": c.ok} for c in checks]


def parser(name: str, reference: str, python_needs: str = "") -> argparse.ArgumentParser:
    """The command line every function-level differential shares: --reference, --out, --python, --seed."""
    p = argparse.ArgumentParser(
        prog=f"python -m benchmarks.tools.differential.{name}",
        description=f"Run {reference}'s own functions and the harness's on identical tensors; compare.",
    )
    p.add_argument("--reference", type=Path, required=True, help=f"a checkout of {reference}")
    p.add_argument("--out", type=Path, required=True, help=f"output folder: {name}.md and {name}.json")
    p.add_argument(
        "--python",
        default=sys.executable,
        help=f"interpreter for the reference side{python_needs} (default: this one)",
    )
    p.add_argument("--seed", type=int, default=0)
    return p


def write_report(out: Path, name: str, text: str, payload: dict, checks: list[Check]) -> int:
    """Write OUT/<name>.md and .json (the payload plus every check), print the table; the exit code is 1 when a
    quantity that should agree does not (documented deviations have an infinite tolerance and never fail)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{name}.md", text)
    atomic_write_text(out / f"{name}.json", json.dumps({**payload, "checks": as_json(checks)}, indent=1) + "\n")
    print(text)
    return 0 if all(c.ok for c in checks) else 1
