"""benchmarks/tools/device_check.sh on CPU (DEVICE_CHECK_DEVICE=cpu: tiny presets): carried wheels installed only
when missing, every part's figures in one JSON file, a bad part name refused."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "tools" / "device_check.sh"


def tiny_wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel of distribution `name` (one empty module)."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/__init__.py", "")
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


def run_check(out: Path, wheels: Path, parts: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "DEVICE_CHECK_DEVICE": "cpu",
        "DEVICE_CHECK_PARTS": parts,
        "DEVICE_CHECK_WHEELS": str(wheels),
        "DEVICE_CHECK_STORE": str(out.parent / "stores"),
    }
    return subprocess.run(
        ["bash", str(SCRIPT), str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_device_check_writes_every_figure_on_cpu(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    tiny_wheel(wheels, "devcheck_probe", "0.1")  # not installed: goes in
    tiny_wheel(wheels, "pytest", "0.0.1")  # installed here: skipped, the machine's version stays
    out = tmp_path / "out"
    proc = run_check(out, wheels, "env,precision,cuda_tests,speed,speed_compiled")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "device_check.json").read_text())
    parts = report["parts"]
    assert report["ok"] is True and report["device"] == "cpu"
    assert [p for p in parts] == ["env", "precision", "cuda_tests", "speed", "speed_compiled"]

    env = parts["env"]["figures"]
    assert env["python"] == platform.python_version()
    assert env["wheels_installed"] == ["devcheck_probe-0.1-py3-none-any.whl"]

    precision = parts["precision"]["figures"]
    assert precision["ok"] is True and set(precision["reports"]) == {"audio", "visual", "audio-visual"}
    for r in precision["reports"].values():
        assert 0 <= r["logits_rel"] <= 0.05 and r["grad_cos"] >= 0.98 and r["out_of_tolerance"] == []

    tests = parts["cuda_tests"]["figures"]
    assert tests["passed"] == tests["failed"] == 0 and tests["skipped"] >= 5  # no CUDA here: all skipped

    speed = parts["speed"]["figures"]
    assert speed["preset"] == "tiny" and speed["method"] == "av_cil" and speed["precision"] == "fp32"
    assert speed["flops"]["total"] == sum(speed["flops"][k] for k in ("train", "val", "test_and_selection")) > 0
    assert speed["wall_s"] > 0 and speed["peak_tflops"] > 0
    assert speed["achieved_tflops"] == pytest.approx(speed["flops"]["total"] / speed["wall_s"] / 1e12)
    assert speed["ratio"] == pytest.approx(speed["achieved_tflops"] / speed["peak_tflops"])
    assert 0 <= speed["avg_inc_acc"] <= 100 and len(speed["step_s"]) == 2

    assert parts["speed_compiled"]["status"] == "skipped"  # on CPU only with DEVICE_CHECK_COMPILE=1
    assert report["summary"]["ave_ratio"] == round(speed["ratio"], 3)
    assert report["summary"]["cuda_tests"].startswith("0 passed, 0 failed")


def test_device_check_refuses_an_unknown_part(tmp_path):
    proc = run_check(tmp_path / "out", tmp_path, "env,warp_drive", timeout=120)
    assert proc.returncode == 2 and "unknown part(s) warp_drive" in proc.stderr
