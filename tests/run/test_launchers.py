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

    def need(method, modality="audio-visual", options=LaunchOptions(), **cfg):
        cell = SimpleNamespace(modality=modality)
        return resources(SimpleNamespace(cell=cell, spec=specs[method], cfg=cfg), options)

    assert need("fine_tuning") == need("cign", input="features") == FEATURE_CELL
    assert FEATURE_CELL.gpus == 0.25
    assert need("mcil_audioclip") == need("cign", input="raw") == RAW_MEDIA_CELL
    assert RAW_MEDIA_CELL.gpus == 1
    assert need("lwf", options=LaunchOptions(gpus_per_cell=0.5)) == CellResources(0.5, FEATURE_CELL.cpus)
    assert need("mcil_audioclip", options=LaunchOptions(cpus_per_cell=3)) == CellResources(1.0, 3)
