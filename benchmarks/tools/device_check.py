"""The one-shot GPU check's parts, under one time budget, into OUT_DIR/device_check.json.

    benchmarks/tools/device_check.sh OUT_DIR        # installs the carried wheels first, then runs this
    python -m benchmarks.tools.device_check OUT_DIR # when the harness's packages are already importable

Parts, in this order (each a subprocess with its own time limit, cut to what is left of the budget; the JSON is
rewritten after every part, so a run stopped early still leaves what it measured):

- env:         Python, torch, CUDA device, memory, carried wheels installed, offline stand-ins used;
- precision:   bf16 autocast vs fp32 (logits, loss, gradients, predictions, attention) at AVE size, and the
               MCIL towers (benchmarks.tools.precision);
- cuda_tests:  tests/gpu (no host sync per iteration under sync debug mode, resident
               views, herding, bf16, CUDA vs CPU predictions);
- speed:       the AVE-preset av_cil run in bf16: wall time, counted TFLOP/s, measured matmul peak, ratio;
- speed_compiled: the AVE preset again with the attention chain compiled (torch.compile), on the same store
               (on by default on CUDA; DEVICE_CHECK_COMPILE=0 skips it, =1 runs it on CPU too);
- grid:        the packed-grid benchmark (`speed --grid`; skipped when ray or benchmarks.tools.grid_speed is absent);
- overhead:    harness vs bare compute on an AVE-sized step (bf16).

Environment: DEVICE_CHECK_DEVICE (cuda; `cpu` runs tiny presets, to test this script without a GPU),
DEVICE_CHECK_BUDGET_S (540: under the device tool's 600-s limit per command), DEVICE_CHECK_PARTS (comma list),
DEVICE_CHECK_PRESET / DEVICE_CHECK_PRECISION (speed preset and precision; default ave / bf16 on CUDA).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

PARTS = ("env", "precision", "cuda_tests", "speed", "speed_compiled", "grid", "overhead")
#: each part's own time limit (seconds), before the budget cuts it
LIMITS = {"precision": 120, "cuda_tests": 180, "speed": 240, "speed_compiled": 200, "grid": 120, "overhead": 120}
MIN_LEFT_S = 20  # a part does not start with less than this left of the budget


class Check:
    def __init__(self, out_dir: Path, device: str, budget_s: float):
        self.out, self.device, self.deadline = out_dir, device, time.monotonic() + budget_s
        self.cpu = device == "cpu"
        self.report: dict = {"device": device, "budget_s": budget_s, "parts": {}, "summary": {}}
        self.failed = False

    # ------------------------------------------------------------------ plumbing
    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        from datasets.io import atomic_write_text

        atomic_write_text(self.out / "device_check.json", json.dumps(self.report, indent=2) + "\n")

    def record(self, name: str, entry: dict) -> None:
        self.report["parts"][name] = entry
        self.failed |= entry["status"] in ("failed", "timeout")
        print(f"[device_check] {name}: {entry['status']}" + (f" ({entry['reason']})" if "reason" in entry else ""))
        self.save()

    def run(self, name: str, args: list[str], json_out: Path | None = None) -> dict:
        """Run `python args...` with the part's time limit; its JSON (if any) becomes the entry's figures."""
        limit = min(LIMITS.get(name, 120), self.left() - 5)
        if limit < MIN_LEFT_S:
            return {"status": "skipped", "reason": f"time budget spent ({self.left():.0f} s left)"}
        t0 = time.monotonic()
        try:
            proc = subprocess.run(
                [sys.executable, *args], capture_output=True, text=True, timeout=limit, env=dict(os.environ)
            )
            status, rc, output = (
                ("ok" if proc.returncode == 0 else "failed"),
                proc.returncode,
                proc.stdout + proc.stderr,
            )
        except subprocess.TimeoutExpired as e:
            status, rc = "timeout", None
            output = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        entry = {"status": status, "rc": rc, "seconds": round(time.monotonic() - t0, 1), "limit_s": round(limit)}
        (self.out / f"{name}.log").write_text(output)
        entry["output_tail"] = output[-2000:]
        if json_out is not None and json_out.exists():
            entry["figures"] = json.loads(json_out.read_text())
        return entry

    # ------------------------------------------------------------------ parts
    def env(self) -> dict:
        import torch

        figures = {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda_available": torch.cuda.is_available(),
            "wheels_installed": _lines(self.out / "wheels_installed.txt"),
            "offline_stand_ins": [s for s in os.environ.get("DEVICE_CHECK_STUBS", "").split(",") if s],
        }
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            figures.update(
                gpu=p.name,
                capability=f"{p.major}.{p.minor}",
                memory_gb=round(p.total_memory / 2**30, 1),
                cuda=torch.version.cuda,
            )
        if not self.cpu and not torch.cuda.is_available():
            return {"status": "failed", "reason": "CUDA is not available", "figures": figures}
        return {"status": "ok", "figures": figures}

    def precision(self) -> dict:
        out = self.out / "precision.json"
        args = ["-m", "benchmarks.tools.precision", "--device", self.device, "--json", str(out)]
        if self.cpu:
            args += ["--grid", "2,4,16", "--audio-dim", "16", "--batch", "8", "--classes", "7", "--no-mcil"]
        return self.run("precision", args, out)

    def cuda_tests(self) -> dict:
        xml = self.out / "cuda_tests.xml"
        args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/gpu"]
        entry = self.run("cuda_tests", [*args, f"--junitxml={xml}"])
        if xml.exists():
            entry["figures"] = junit_counts(xml)
            if self.cpu and entry["status"] == "failed" and entry["figures"]["failed"] == 0:
                entry["status"] = "ok"  # pytest exits 5 when every selected test is skipped (no CUDA here)
        return entry

    def speed(self, compiled: bool = False) -> dict:
        name = "speed_compiled" if compiled else "speed"
        out = self.out / f"{name}.json"
        preset = os.environ.get("DEVICE_CHECK_PRESET", "tiny" if self.cpu else "ave")
        precision = os.environ.get("DEVICE_CHECK_PRECISION", "fp32" if self.cpu else "bf16")
        store = Path(os.environ.get("DEVICE_CHECK_STORE", "/tmp/device-check-stores"))
        args = ["-m", "benchmarks.tools.speed", "--preset", preset, "--device", self.device]
        args += ["--precision", precision, "--store", str(store), "--json", str(out)]
        return self.run(name, args + (["--compile"] if compiled else []), out)

    def grid(self) -> dict:
        import importlib.util

        for module, why in (("ray", "ray is not installed"), ("benchmarks.tools.grid_speed", "no grid_speed module")):
            if importlib.util.find_spec(module) is None:
                return {"status": "skipped", "reason": why}
        out = self.out / "grid.json"
        args = ["-m", "benchmarks.tools.speed", "--grid", "--device", self.device]
        return self.run("grid", args + ["--json", str(out)], out)

    def overhead(self) -> dict:
        if self.cpu and "overhead" not in os.environ.get("DEVICE_CHECK_PARTS", ""):
            return {"status": "skipped", "reason": "CPU: minutes per epoch at this size; name it in DEVICE_CHECK_PARTS"}
        out = self.out / "overhead.json"
        size = ["--size", "cpu-small"] if self.cpu else ["--size", "ave", "--precision", "bf16"]
        args = ["-m", "benchmarks.tools.speed", *size, "--device", self.device, "--epochs", "2", "--json", str(out)]
        return self.run("overhead", args, out)

    # ------------------------------------------------------------------ all
    def main(self, parts) -> int:
        steps = {
            "env": self.env,
            "precision": self.precision,
            "cuda_tests": self.cuda_tests,
            "speed": self.speed,
            "grid": self.grid,
            "overhead": self.overhead,
            "speed_compiled": lambda: self.speed(compiled=True),
        }
        for name in PARTS:
            if name not in parts:
                continue
            if name == "speed_compiled" and os.environ.get("DEVICE_CHECK_COMPILE", "0" if self.cpu else "1") != "1":
                self.record(name, {"status": "skipped", "reason": "DEVICE_CHECK_COMPILE is not 1"})
                continue
            self.record(name, steps[name]())
        self.report["summary"] = summary(self.report["parts"])
        self.report["ok"] = not self.failed
        self.save()
        print(json.dumps(self.report["summary"], indent=2))
        return 1 if self.failed else 0


def _lines(path: Path) -> list[str]:
    return [x for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def junit_counts(xml: Path) -> dict:
    """passed / failed / skipped counts and the failing test names of a pytest JUnit XML file."""
    root = ET.parse(xml).getroot()
    cases = root.iter("testcase")
    out = {"passed": 0, "failed": 0, "skipped": 0, "failures": []}
    for case in cases:
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            out["failed"] += 1
            out["failures"].append(case.get("name"))
        elif "skipped" in kinds:
            out["skipped"] += 1
        else:
            out["passed"] += 1
    return out


def summary(parts: dict) -> dict:
    """The figures the closing note quotes, from the parts' JSON."""
    s = {name: entry["status"] for name, entry in parts.items()}
    speed = parts.get("speed", {}).get("figures")
    if speed:
        s["ave_wall_s"] = round(speed["wall_s"], 1)
        s["ave_achieved_tflops"] = round(speed["achieved_tflops"], 2)
        s["ave_peak_tflops"] = round(speed["peak_tflops"], 1)
        s["ave_ratio"] = round(speed["ratio"], 3)
        s["ave_flop_floor_s"] = round(speed["flop_floor_s"], 1)
    compiled = parts.get("speed_compiled", {}).get("figures")
    if compiled:
        s["ave_compiled_wall_s"] = round(compiled["wall_s"], 1)
    precision = parts.get("precision", {}).get("figures")
    if precision:
        s["precision_ok"] = precision["ok"]
        s["precision_worst_logits_rel"] = max(r["logits_rel"] for r in precision["reports"].values())
    tests = parts.get("cuda_tests", {}).get("figures")
    if tests:
        s["cuda_tests"] = f"{tests['passed']} passed, {tests['failed']} failed, {tests['skipped']} skipped"
    overhead = parts.get("overhead", {}).get("figures")
    if overhead:
        s["harness_over_bare"] = round(overhead["harness_over_bare"], 3)
    return s


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m benchmarks.tools.device_check OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    device = os.environ.get("DEVICE_CHECK_DEVICE", "cuda")
    parts = [p for p in os.environ.get("DEVICE_CHECK_PARTS", ",".join(PARTS)).split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        print(f"DEVICE_CHECK_PARTS: unknown part(s) {', '.join(unknown)}; known: {', '.join(PARTS)}", file=sys.stderr)
        return 2
    return Check(out, device, float(os.environ.get("DEVICE_CHECK_BUDGET_S", 540))).main(parts)


if __name__ == "__main__":
    raise SystemExit(main())
