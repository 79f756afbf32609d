"""The default path on a small SynthAV: MP4 files -> decode -> light encoders -> store -> stream -> methods -> records
-> leaderboard."""

import pytest

import run_all
from benchmarks.core.records import iter_records
from datasets.adapters.synth_av import SynthAV, SynthConfig


@pytest.fixture
def small_synth(monkeypatch):
    import benchmarks.run.grid
    import datasets

    adapters = {"synth_av": SynthAV(SynthConfig(num_classes=8, train=8, val=3, test=3), workers=1)}
    monkeypatch.setattr(datasets, "registry", lambda: adapters)
    monkeypatch.setattr(benchmarks.run.grid, "dataset_registry", lambda: adapters)
    return adapters["synth_av"]


def test_synth_av_grid_end_to_end(tmp_path, small_synth, capsys):
    argv = [
        "--data-root",
        str(tmp_path / "data"),
        "--results-dir",
        str(tmp_path / "results"),
        "--leaderboard-dir",
        str(tmp_path / "lb"),
        "--no-progress",
        "--methods",
        "fine_tuning",
        "icarl-nme",
        "--seeds",
        "0",
        "--epochs",
        "3",
    ]
    assert run_all.main(argv) == 0
    videos = list((tmp_path / "data").rglob("*.mp4"))
    assert len(videos) == 8 * (8 + 3 + 3)  # real media files were written and decoded
    recs = list(iter_records(tmp_path / "results"))
    assert sorted((r["cell"]["method"], r["cell"]["modality"]) for r in recs) == sorted(
        (m, mod) for m in ("fine_tuning", "icarl-nme") for mod in ("audio", "visual", "audio-visual")
    )
    for r in recs:
        assert r["encoders"]["pretrained"] is False
        assert r["stream"]["classes_per_step"] == [4, 4] and len(r["results"]["R"]) == 2
        assert 0 <= r["results"]["metrics"]["avg_inc_acc"] <= 100
    assert len({r["stream"]["hash"] for r in recs}) == 1  # every method consumed the same stream
    board = (tmp_path / "lb" / "audio-visual.md").read_text()
    assert "RANDOM" in board and "SynthAV" in board
