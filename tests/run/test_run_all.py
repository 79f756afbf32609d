"""run_all end to end on the toy dataset: records, skip on re-run, resume, failures, kill safety."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

import run_all
from benchmarks.core.records import iter_records

ROOT = Path(__file__).resolve().parents[2]


def args(tmp_path, *extra):
    return [
        "--data-root",
        str(tmp_path / "data"),
        "--results-dir",
        str(tmp_path / "results"),
        "--leaderboard-dir",
        str(tmp_path / "lb"),
        "--no-progress",
        "--datasets",
        "toy",
        *extra,
    ]


def test_grid_writes_records_leaderboard_and_skips_on_rerun(tmp_path, toy_registry, capsys):
    argv = args(
        tmp_path,
        "--methods",
        "fine_tuning",
        "icarl-nme",
        "--modalities",
        "audio",
        "audio-visual",
        "--seeds",
        "0",
        "1",
        "--epochs",
        "2",
    )
    assert run_all.main(argv) == 0
    recs = list(iter_records(tmp_path / "results"))
    assert len(recs) == 8
    rec = recs[0]
    for key in ("cell_key", "config", "stream", "results", "cost", "environment", "encoders", "seeds", "created"):
        assert key in rec
    assert len(rec["results"]["R"]) == 3 and rec["results"]["R"][2][0] is not None
    assert rec["reference_protocol"] is False and rec["epochs_override"] == 2 and rec["config"]["epochs"] == 2
    assert rec["stream"]["hash"] and rec["stream"]["classes_per_step"] == [2, 2, 2]
    assert rec["cost"]["parameters"] > 0 and rec["cost"]["peak_memory_mb"] > 0
    board = (tmp_path / "lb" / "audio-visual.md").read_text()
    assert "icarl-nme" in board and "fine_tuning" in board and (tmp_path / "lb" / "results.csv").exists()
    out = capsys.readouterr().out
    assert "[missing] Absent" not in out  # only --datasets toy was asked for
    t0 = time.time()
    assert run_all.main(argv) == 0
    assert "0 ran, 8 already recorded" in capsys.readouterr().out
    assert time.time() - t0 < 30
    # a changed config (epochs) is a different cell key: it re-runs
    assert (
        run_all.main(
            args(tmp_path, "--methods", "fine_tuning", "--modalities", "audio", "--seeds", "0", "--epochs", "3")
        )
        == 0
    )
    assert "1 ran" in capsys.readouterr().out


def test_missing_dataset_is_reported_with_instructions(tmp_path, toy_registry, capsys):
    argv = [
        "--data-root",
        str(tmp_path),
        "--results-dir",
        str(tmp_path / "r"),
        "--leaderboard-dir",
        str(tmp_path / "lb"),
        "--no-progress",
        "--methods",
        "fine_tuning",
        "--modalities",
        "audio",
        "--seeds",
        "0",
        "--epochs",
        "1",
    ]
    assert run_all.main(argv) == 0
    assert "[missing] absent: put absent files in DATA/absent" in capsys.readouterr().out
    page = (tmp_path / "lb" / "audio-visual.md").read_text()
    assert "put absent files" in page
    assert "## Absent (`absent`), protocol `3x2`\n\n**Missing**" in page  # its protocol's table, marked missing


def test_unknown_names_exit_2(tmp_path, toy_registry, capsys):
    assert run_all.main(args(tmp_path, "--methods", "nonsense")) == 2
    assert "unknown method" in capsys.readouterr().err
    assert run_all.main(["--datasets", "nope", "--data-root", str(tmp_path)]) == 2


def test_list_and_dry_run(tmp_path, toy_registry, capsys):
    assert run_all.main(["--list", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "toy" in out and "MISSING" in out and "icarl-nme" in out and "audio-visual" in out
    assert run_all.main(args(tmp_path, "--dry-run", "--methods", "lwf", "--seeds", "0", "--epochs", "1")) == 0
    out = capsys.readouterr().out
    assert "3 cells: 0 done, 3 to run, 0 cannot run" in out
    # without epochs for this dataset the cells cannot run: said, not recorded
    assert run_all.main(args(tmp_path, "--dry-run", "--methods", "lwf", "--seeds", "0")) == 1
    assert "reads config key(s) ['epochs'], which its config for dataset toy lacks" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_failing_cell_is_isolated_and_reported(tmp_path, toy_registry, monkeypatch, capsys):
    from methods import registry

    real = registry()
    broken = real["lwf"].__class__(
        "lwf", real["lwf"].strategy, real["lwf"].folder, options={"kd_temperature": "not-a-number"}
    )
    import benchmarks.run.grid

    monkeypatch.setattr(
        benchmarks.run.grid, "method_registry", lambda suite: {"lwf": broken, "fine_tuning": real["fine_tuning"]}
    )
    code = run_all.main(args(tmp_path, "--modalities", "audio", "--seeds", "0", "--epochs", "1"))
    assert code == 1
    err = capsys.readouterr().err
    assert "lwf audio seed0: FAILED" in err
    recs = list(iter_records(tmp_path / "results"))
    assert [r["cell"]["method"] for r in recs] == ["fine_tuning"]  # the other cell still ran; no partial record
    errors = list((tmp_path / "results").rglob("*.error.json"))
    assert len(errors) == 1 and "lwf" in str(errors[0])
    assert "Failed cells" in (tmp_path / "lb" / "audio-visual.md").read_text()


def crash_after_second_checkpoint(monkeypatch):
    """Make the runner raise KeyboardInterrupt right after writing its second step checkpoint; return the real
    writer."""
    import benchmarks.run.cell as runner

    calls = {"n": 0}
    real_save = runner.save_checkpoint

    def crash_after_second(ckpt_dir, t, state):
        real_save(ckpt_dir, t, state)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(runner, "save_checkpoint", crash_after_second)
    return real_save


def test_resume_after_a_finished_step(tmp_path, toy_registry, monkeypatch):
    """A cell killed after step 1 continues from its step checkpoint (weights_only load) and
    produces the same record as an uninterrupted run."""
    import benchmarks.run.cell as runner

    argv = args(
        tmp_path,
        "--methods",
        "icarl-fc",
        "--modalities",
        "audio-visual",
        "--seeds",
        "0",
        "--epochs",
        "2",
        "--no-leaderboard",
    )
    real_save = crash_after_second_checkpoint(monkeypatch)
    assert run_all.main(argv) == 130
    ckpts = list((tmp_path / "results").rglob("step*.pt"))
    assert [p.name for p in ckpts] == ["step1.pt"]
    state = torch.load(ckpts[0], weights_only=True)
    assert state["strategy"]["step_index"] == 1 and len(state["rows"]["R"]) == 2
    monkeypatch.setattr(runner, "save_checkpoint", real_save)
    assert run_all.main(argv) == 0
    resumed = list(iter_records(tmp_path / "results"))[0]
    assert not list((tmp_path / "results").rglob("*.ckpt"))
    fresh_dir = tmp_path / "fresh"
    fresh_dir.mkdir()
    assert (
        run_all.main(
            args(
                fresh_dir,
                "--methods",
                "icarl-fc",
                "--modalities",
                "audio-visual",
                "--seeds",
                "0",
                "--epochs",
                "2",
                "--no-leaderboard",
            )
        )
        == 0
    )
    fresh = list(iter_records(fresh_dir / "results"))[0]
    assert resumed["results"]["R"] == fresh["results"]["R"]


KILL_SCRIPT = textwrap.dedent("""
    import sys
    sys.path[:0] = [{root!r}]
    import benchmarks.run.grid, datasets, run_all
    from tests.conftest import ToyAdapter
    adapters = {{"toy": ToyAdapter()}}
    datasets.registry = lambda: adapters
    benchmarks.run.grid.dataset_registry = lambda: adapters
    sys.exit(run_all.main(sys.argv[1:]))
""")


def test_sigkill_mid_grid_leaves_no_corrupt_record(tmp_path):
    script = tmp_path / "grid.py"
    script.write_text(KILL_SCRIPT.format(root=str(ROOT)))
    argv = [
        sys.executable,
        str(script),
        *args(
            tmp_path,
            "--methods",
            "fine_tuning",
            "upper_bound",
            "--seeds",
            "0",
            "1",
            "--epochs",
            "40",
            "--no-leaderboard",
        ),
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    results = tmp_path / "results"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(results.rglob("seed*.json"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = list(results.rglob("seed*.json"))
    assert finished, "the grid did not finish a cell in time"
    for p in finished:
        json.loads(p.read_text())  # every record on disk parses: writes are atomic
    assert not [p for p in results.rglob("*") if p.name.endswith(".tmp") and p.suffix == ".json"]
    done_before = len(finished)
    # the re-run finishes everything and keeps the finished records
    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{done_before} already recorded" in rerun.stdout
    assert len(list(iter_records(results))) == 12


def test_methods_needing_views_a_dataset_lacks_are_skipped_with_a_note(tmp_path, toy_registry, monkeypatch, capsys):
    from tests.conftest import ToyAdapter

    class RawOnly(ToyAdapter):
        name, title, views = "rawonly", "RawOnly", ("image", "spectrogram")

    toy_registry["rawonly"] = RawOnly()
    argv = args(tmp_path, "--methods", "fine_tuning", "--seeds", "0", "--epochs", "1")
    argv[argv.index("toy")] = "rawonly"
    assert run_all.main(argv) == 0
    out = capsys.readouterr().out
    assert "[skipped] fine_tuning (audio) does not run on RawOnly" in out and "0 cells" in out
    assert (
        "Not applicable: fine_tuning (audio-visual) does not run on RawOnly"
        in (tmp_path / "lb" / "audio-visual.md").read_text()
    )


def test_mcil_cells_record_their_metrics_render_and_resume(tmp_path, toy_registry, monkeypatch):
    """Both MCIL-AudioCLIP modes through run_all on a paired toy: records carry the MCIL metrics and the
    towers, the leaderboard shows M1/M2, and a cell killed after step 1 resumes to the same record."""
    import benchmarks.run.cell as runner

    base = [
        "--data-root",
        str(tmp_path / "data"),
        "--results-dir",
        str(tmp_path / "results"),
        "--leaderboard-dir",
        str(tmp_path / "lb"),
        "--no-progress",
        "--datasets",
        "toy_paired",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--set",
        "towers={paper: tiny-rn, code: tiny-vit}",
    ]  # a mode mapping, resolved per mode
    real_save = crash_after_second_checkpoint(monkeypatch)
    assert run_all.main(base + ["--methods", "mcil_audioclip", "--no-leaderboard"]) == 130
    state = torch.load(next((tmp_path / "results").rglob("step1.pt")), weights_only=True)
    assert all(
        ".moe." in k
        or "fusion" in k
        or "audio_proj" in k
        or "running" in k
        or "num_batches" in k
        or k.endswith(".window")
        for k in state["strategy"]["model"]
    )  # frozen tower weights are not checkpointed
    monkeypatch.setattr(runner, "save_checkpoint", real_save)
    assert run_all.main(base + ["--methods", "mcil_audioclip", "mcil_audioclip-code"]) == 0
    recs = {r["cell"]["method"]: r for r in iter_records(tmp_path / "results")}
    assert set(recs) == {"mcil_audioclip", "mcil_audioclip-code"}
    for rec in recs.values():
        mm = rec["results"]["method_metrics"]
        assert set(mm["whole-set"]) >= {"m1", "m2"} and len(rec["results"]["step_reports"]) == 3
        assert rec["results"]["selection"] == "last" and rec["method_info"]["towers"] in ("tiny-rn", "tiny-vit")
    fresh = tmp_path / "fresh"
    assert (
        run_all.main(
            [a.replace(str(tmp_path), str(fresh)) for a in base] + ["--methods", "mcil_audioclip", "--no-leaderboard"]
        )
        == 0
    )
    again = next(iter_records(fresh / "results"))
    assert again["results"]["R"] == recs["mcil_audioclip"]["results"]["R"]
    page = (tmp_path / "lb" / "audio-visual.md").read_text()
    assert "MCIL M1" in page and "towers tiny-rn" in page and "last-epoch model of each step" in page
    assert "protocol `3x2`" in page
