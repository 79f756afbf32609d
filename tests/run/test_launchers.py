"""The Ray and Slurm (submitit's local executor) launchers write the same records as the local one; cells declare
their resources."""

from types import SimpleNamespace

import pytest

import run_all
from benchmarks.core.method import FEATURE_CELL, RAW_MEDIA_CELL, CellResources
from benchmarks.core.records import iter_records
from benchmarks.run.launch import LaunchOptions, resources

GRID = ["--methods", "fine_tuning", "icarl-nme", "--modalities", "audio", "--seeds", "0", "--epochs", "2"]


def argv(tmp_path, results, *extra):
    return [
        "--data-root",
        str(tmp_path / "data"),
        "--results-dir",
        str(tmp_path / results),
        "--leaderboard-dir",
        str(tmp_path / f"lb-{results}"),
        "--no-progress",
        "--datasets",
        "toy",
        *GRID,
        *extra,
    ]


def numbers(results_dir) -> dict:
    """{cell: (cell key, results block)}: what a launcher must not change."""
    return {tuple(r["cell"].values()): (r["cell_key"], r["results"]) for r in iter_records(results_dir)}


def test_ray_launcher_writes_the_local_records(tmp_path, toy_registry, capsys):
    pytest.importorskip("ray")
    assert run_all.main(argv(tmp_path, "local")) == 0
    capsys.readouterr()
    assert run_all.main(argv(tmp_path, "ray", "--launcher", "ray", "--cpus-per-cell", "1")) == 0
    out = capsys.readouterr().out
    assert "2 cell(s) submitted to Ray (CPU only)" in out and "failed 0 / 2] toy/3x2" in out
    assert "done: 2 ran, 0 already recorded, 0 failed" in out
    local, ray = numbers(tmp_path / "local"), numbers(tmp_path / "ray")
    assert len(local) == 2 and ray == local
    assert "fine_tuning" in (tmp_path / "lb-ray" / "audio-visual.md").read_text()  # rendered once, at the end
    assert not list((tmp_path / "ray").rglob("*.claim"))
    # recorded cells are skipped by the driver: no Ray instance is started for nothing
    assert run_all.main(argv(tmp_path, "ray", "--launcher", "ray")) == 0
    out = capsys.readouterr().out
    assert "0 ran, 2 already recorded" in out and "submitted to Ray" not in out


def test_slurm_launcher_with_the_local_executor_writes_the_local_records(tmp_path, toy_registry, capsys):
    pytest.importorskip("submitit")
    assert run_all.main(argv(tmp_path, "local", "--no-leaderboard")) == 0
    slurm = ["--launcher", "slurm", "--slurm-executor", "local", "--slurm-cells-per-task", "2", "--no-leaderboard"]
    assert run_all.main(argv(tmp_path, "slurm", *slurm)) == 0
    out = capsys.readouterr().out
    assert "2 cell(s) submitted as 1 local task(s)" in out and "done: 2 ran" in out
    assert numbers(tmp_path / "slurm") == numbers(tmp_path / "local")
    assert list((tmp_path / "slurm" / ".submitit").rglob("*_result.pkl"))  # it did go through submitit


def test_cells_declare_their_resources():
    from methods import registry

    specs = registry()

    def need(method, modality="audio-visual", options=None, **cfg):
        cell = SimpleNamespace(modality=modality)
        return resources(SimpleNamespace(cell=cell, spec=specs[method], cfg=cfg), options or LaunchOptions())

    assert need("fine_tuning") == need("cign", input="features") == FEATURE_CELL
    assert FEATURE_CELL.gpus == 0.25
    assert need("mcil_audioclip") == need("cign", input="raw") == RAW_MEDIA_CELL
    assert RAW_MEDIA_CELL.gpus == 1
    assert need("lwf", options=LaunchOptions(gpus_per_cell=0.5)) == CellResources(0.5, FEATURE_CELL.cpus)
    assert need("mcil_audioclip", options=LaunchOptions(cpus_per_cell=3)) == CellResources(1.0, 3)


def test_a_live_claim_is_left_to_its_holder(tmp_path, toy_registry, capsys):
    """A cell another live run has claimed is listed as running by --dry-run and left alone by a run; once the
    claim is released, the next run trains it."""
    import torch

    from benchmarks.core.method import SETTINGS_KEY
    from benchmarks.run import claims, launch
    from benchmarks.run.cell import GridContext
    from benchmarks.run.grid import build_grid
    from benchmarks.suites import get_suite

    suite, data = get_suite("audio-visual"), tmp_path / "data"
    grid = build_grid(suite, data, ["toy"], ["fine_tuning"], ["audio"], [0])
    overrides = {"epochs": 2, "precision": None, "random_encoders": None, SETTINGS_KEY: {}}  # as run_all's
    ctx = GridContext(suite, data, tmp_path / "held", torch.device("cpu"), progress=False, overrides=overrides)
    [run] = launch.still_to_run(grid.cells, grid.methods, ctx, launch.Outcome())
    held = claims.try_claim(run.path)  # "another run": this process, holding the claim
    try:
        assert run_all.main(argv(tmp_path, "held", "--dry-run")) == 0
        out = capsys.readouterr().out
        assert "fine_tuning audio seed0: running (claimed by" in out and "icarl-nme audio seed0: to run" in out
        assert run_all.main(argv(tmp_path, "held", "--no-leaderboard")) == 0
        out = capsys.readouterr().out
        assert "fine_tuning audio seed0: claimed by another live run, left to it" in out
        assert "done: 1 ran, 0 already recorded" in out
    finally:
        held.release()
    assert run_all.main(argv(tmp_path, "held", "--no-leaderboard")) == 0
    assert "done: 1 ran, 1 already recorded" in capsys.readouterr().out
    assert len(numbers(tmp_path / "held")) == 2


def test_slurm_without_sbatch_says_what_to_do(tmp_path, toy_registry, monkeypatch, capsys):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert run_all.main(argv(tmp_path, "nosbatch", "--launcher", "slurm", "--no-leaderboard")) == 2
    assert "no `sbatch` on this machine" in capsys.readouterr().err
