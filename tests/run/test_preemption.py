"""Safe under concurrency, kills and preemption: two runs on one results directory, SIGKILL at random moments,
SIGTERM during a step, a Slurm task preempted mid-cell. Every finished record equals an uninterrupted run's."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import run_all
from benchmarks.core.records import iter_records
from benchmarks.run import claims

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import sys
    sys.path[:0] = [{root!r}]
    import benchmarks.run.grid, datasets, run_all
    from tests.conftest import ToyAdapter
    adapters = {{"toy": ToyAdapter()}}
    datasets.registry = lambda: adapters
    benchmarks.run.grid.dataset_registry = lambda: adapters
    sys.exit(run_all.main(sys.argv[1:]))
""")


def argv(base: Path, grid: list[str]) -> list[str]:
    return [
        "--data-root",
        str(base / "data"),
        "--results-dir",
        str(base / "results"),
        "--no-progress",
        "--no-leaderboard",
        "--datasets",
        "toy",
        *grid,
    ]


_REFERENCES: dict = {}


def reference(tmp_path, grid) -> dict:
    """An uninterrupted in-process run of the grid: {cell: R} (once per grid in this module)."""
    if tuple(grid) not in _REFERENCES:
        base = tmp_path / "reference"
        assert run_all.main(argv(base, grid)) == 0
        _REFERENCES[tuple(grid)] = numbers(base / "results")
    return _REFERENCES[tuple(grid)]


def numbers(results: Path) -> dict:
    return {tuple(r["cell"].values()): r["results"]["R"] for r in iter_records(results)}


def subprocess_grid(tmp_path, grid, **kw) -> subprocess.Popen:
    script = tmp_path / "grid.py"
    script.write_text(SCRIPT.format(root=str(ROOT)))
    return subprocess.Popen(
        [sys.executable, str(script), *argv(tmp_path, grid)],
        cwd=ROOT,
        start_new_session=True,
        text=True,
        **kw,
    )


def prebuilt_store(tmp_path):
    """The toy store, built before the runs start (two runs must not both build a store from nothing)."""
    from tests.conftest import ToyAdapter

    (tmp_path / "data").mkdir(parents=True, exist_ok=True)
    ToyAdapter().open(tmp_path / "data")


def assert_clean(results: Path):
    for p in results.rglob("seed*.json"):
        json.loads(p.read_text())  # every record and error record on disk parses
    assert not list(results.rglob("*.claim")) and not list(results.rglob("*.takeover"))


CONCURRENT = ["--methods", "fine_tuning", "lwf", "icarl-nme", "--modalities", "audio", "audio-visual"]
CONCURRENT += ["--seeds", "0", "--epochs", "3"]


def test_two_runs_on_one_results_dir_run_each_cell_once(tmp_path, toy_registry):
    expected = reference(tmp_path, CONCURRENT)
    prebuilt_store(tmp_path)
    procs = [subprocess_grid(tmp_path, CONCURRENT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    ran = [int(re.search(r"done: (\d+) ran", out).group(1)) for out in outs]
    assert sum(ran) == len(expected) == 6  # each cell trained by exactly one of the two runs
    trained = [line for out in outs for line in out.splitlines() if "avg inc acc" in line]
    assert len(trained) == 6 and len({line.split(":")[0].split("] ")[1] for line in trained}) == 6
    assert numbers(tmp_path / "results") == expected
    assert_clean(tmp_path / "results")


KILLED = ["--methods", "icarl-fc", "fine_tuning", "--modalities", "audio-visual", "--seeds", "0", "--epochs", "8"]


def test_sigkill_at_random_moments_then_a_final_run(tmp_path, toy_registry):
    expected = reference(tmp_path, KILLED)
    prebuilt_store(tmp_path)
    results, rng = tmp_path / "results", random.Random(0)
    for _ in range(3):
        proc = subprocess_grid(tmp_path, KILLED, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        # once training has begun (a step checkpoint or a record exists), kill at a random moment
        while time.time() < deadline and proc.poll() is None and not list(results.rglob("*.pt")):
            if list(results.rglob("seed*.json")):
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 1.5))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for p in results.rglob("seed*.json"):
            assert not p.name.endswith(".error.json")
            json.loads(p.read_text())  # written atomically: never half a record
        for done in numbers(results).items():
            assert done in expected.items()
    final = subprocess_grid(tmp_path, KILLED, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = final.communicate(timeout=600)[0]
    assert final.returncode == 0, out
    assert numbers(results) == expected  # the claims left by the killed runs were taken over
    assert_clean(results)
    assert not list(results.rglob("*.ckpt"))


TERMED = ["--methods", "icarl-fc", "--modalities", "audio-visual", "--seeds", "0", "--epochs", "10"]


def test_sigterm_during_a_step_keeps_the_last_step_and_resumes_to_the_same_record(tmp_path, toy_registry):
    expected = reference(tmp_path, TERMED)
    results = tmp_path / "results"
    proc = subprocess_grid(tmp_path, TERMED, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(results.rglob("step0.pt")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # step 1 is in flight
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out
    assert "stopped by SIGTERM" in out and "Resume with:" in out
    command = out.split("Resume with:")[1].strip().splitlines()[0]
    assert command.startswith("python ") and "run_all.py" in command and f"--results-dir {results}" in command
    assert not list(results.rglob("seed*.json"))  # the cell did not finish
    assert [p.name for p in results.rglob("step*.pt")] == ["step0.pt"]  # the last finished step is kept
    assert not list(results.rglob("*.claim"))  # released
    assert run_all.main(argv(tmp_path, TERMED)) == 0  # the resume
    assert numbers(results) == expected
    assert_clean(results)


def test_a_preempted_slurm_task_is_requeued_and_resumes_from_its_step(tmp_path, toy_registry):
    """Slurm's preemption signal (USR2, as submitit asks Slurm to send) to a running array task of the local
    executor: the task gives up its claim and is requeued; the requeued task resumes the cell from its step
    checkpoint to the uninterrupted record."""
    pytest.importorskip("submitit")
    from benchmarks.core.method import SETTINGS_KEY
    from benchmarks.run import launch, slurm_launch
    from benchmarks.run.cell import GridContext
    from benchmarks.run.grid import build_grid
    from benchmarks.suites import get_suite

    expected = reference(tmp_path, TERMED)
    suite, data, results = get_suite("audio-visual"), tmp_path / "data", tmp_path / "results"
    grid = build_grid(suite, data, ["toy"], ["icarl-fc"], ["audio-visual"], [0])
    overrides = {"epochs": 10, "precision": None, "random_encoders": None, SETTINGS_KEY: {}}  # as run_all's
    ctx = GridContext(suite, data, results, torch.device("cpu"), progress=False, overrides=overrides)
    options = launch.LaunchOptions(slurm_executor="local", slurm_folder=str(tmp_path / "submitit"))
    out = launch.Outcome()
    todo = launch.still_to_run(grid.cells, grid.methods, ctx, out)
    [(job, runs)] = slurm_launch.submit(todo, ctx, options)
    claim = claims.claim_path(runs[0].path)
    deadline = time.time() + 300
    while time.time() < deadline and not job.done() and not (runs[0].checkpoints / "step0.pt").exists():
        time.sleep(0.01)
    owner = claims.read_claim(claim)
    os.kill(owner["pid"], signal.SIGUSR2)  # what Slurm sends before it preempts or times out the task
    out = slurm_launch.collect([(job, runs)], ctx, options, out, poll_s=0.2)
    assert out.ran == 1 and not out.failed
    log = Path(job.paths.stdout).read_text() + Path(job.paths.stderr).read_text()
    assert "preempted" in log and "Requeued" in log and "resuming" in log
    assert numbers(results) == expected
    assert_clean(results)
