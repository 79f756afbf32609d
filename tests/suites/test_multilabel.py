"""The audio-multilabel suite end to end on a tiny SynthTags: records, leaderboard, skip, resume, one forward, CKA."""

import json

import numpy as np
import pytest
import torch

import run_all
from benchmarks.core.records import iter_records
from benchmarks.tools import cka
from datasets.adapters.audio_multilabel import FSD50K50, AudioSet50
from datasets.adapters.synth_tags import SynthTags, SynthTagsConfig

TINY = SynthTagsConfig(train_base=24, train_new=6, test_base=12, test_new=4)


@pytest.fixture
def ml_registry(monkeypatch):
    import benchmarks.run.grid
    import datasets

    adapters = {"synth_tags": SynthTags(TINY), "audioset50": AudioSet50(), "fsd50k50": FSD50K50()}
    monkeypatch.setattr(datasets, "registry", lambda: adapters)
    monkeypatch.setattr(benchmarks.run.grid, "dataset_registry", lambda: adapters)
    return adapters


def args(tmp_path, *extra):
    return [
        "--suite",
        "audio-multilabel",
        "--data-root",
        str(tmp_path / "data"),
        "--results-dir",
        str(tmp_path / "results"),
        "--leaderboard-dir",
        str(tmp_path / "lb"),
        "--no-progress",
        "--seeds",
        "0",
        "--epochs",
        "1",
        *extra,
    ]


def test_suite_records_leaderboard_skip_and_cka(tmp_path, ml_registry, capsys):
    argv = args(
        tmp_path,
        "--methods",
        "ml_indl-bn",
        "ml_indl-persample-bn",
        "ml_fine_tuning-gn",
        "ml_joint-cn",
        "--keep-phase-checkpoints",
    )
    assert run_all.main(argv) == 0
    out = capsys.readouterr().out
    assert "[missing] audioset50: phase files missing" in out and "avg mAP" in out and "forgetting macro-F1" in out
    recs = {r["cell"]["method"]: r for r in iter_records(tmp_path / "results", "audio-multilabel")}
    assert sorted(recs) == ["ml_fine_tuning-gn", "ml_indl-bn", "ml_indl-persample-bn", "ml_joint-cn"]
    per_sample = recs["ml_indl-persample-bn"]  # the per-sample reductions, its own leaderboard row
    assert per_sample["results"]["method"] == "ml_indl-persample" and per_sample["results"]["norm"] == "bn"
    assert (per_sample["config"]["kd_reduction"], per_sample["config"]["fd_mode"]) == ("batchmean", "per_sample")
    rec = recs["ml_indl-bn"]
    res = rec["results"]
    assert (
        res["kind"] == "multilabel"
        and res["selection"] == "last-epoch"
        and res["norm"] == "bn"
        and res["method"] == "ml_indl"
    )
    assert [len(row) for row in res["ap_matrix"]] == [30, 35, 40, 45, 50] and len(res["phases"]) == 5
    assert res["model"]["widths"] == [4, 8, 16, 32, 64, 128]
    assert (rec["config"]["kd_reduction"], rec["config"]["fd_mode"]) == ("mean", "batch")  # the reference's
    assert rec["stream"]["classes_per_step"] == [30, 5, 5, 5, 5] and rec["stream"]["counts"]["test"] == [
        12,
        16,
        20,
        24,
        28,
    ]
    for key in (
        "avg_mAP",
        "avg_micro_f1",
        "avg_macro_f1",
        "final_mAP",
        "forgetting_macro_f1",
        "avg_lwlrap",
        "avg_mAP_binarized",
    ):
        assert key in res["metrics"]
    assert [h["train_clips"] for h in recs["ml_joint-cn"]["results"]["history"]] == [24, 30, 36, 42, 48]
    assert [h["train_clips"] for h in res["history"]] == [24, 6, 6, 6, 6]
    assert len(res["phase_checkpoints"]) == 5 and all(
        p.endswith(f"phase{t}.pt") for t, p in enumerate(res["phase_checkpoints"])
    )
    page = (tmp_path / "lb" / "audio-multilabel.md").read_text()
    assert (
        "| ml_indl † (epochs=1) | BN |" in page
        and "| ml_indl-persample † (epochs=1) | BN |" in page
        and "| ml_joint † (epochs=1) | CN |" in page
        and "| ml_fine_tuning † (epochs=1) | GN |" in page
    )  # † = --epochs
    assert (
        "Avg mAP" in page
        and "Forgetting macro-F1" in page
        and "audioset50" in page
        and "fsd50k50" in page
        and "†" in page
    )
    assert (tmp_path / "lb" / "results-audio-multilabel.csv").exists() and list(
        (tmp_path / "lb" / "plots").glob("*__curves.png")
    )
    assert run_all.main(argv) == 0
    assert "0 ran, 4 already recorded" in capsys.readouterr().out

    # CKA between two of the kept phase checkpoints, through the command line
    a, b = res["phase_checkpoints"][0], res["phase_checkpoints"][4]
    png, js = tmp_path / "cka.png", tmp_path / "cka.json"
    assert (
        cka.main(
            [
                "--ckpt-a",
                a,
                "--ckpt-b",
                b,
                "--dataset",
                "synth_tags",
                "--data-root",
                str(tmp_path / "data"),
                "--batch-size",
                "6",
                "--out",
                str(png),
                "--json",
                str(js),
            ]
        )
        == 0
    )
    data = json.loads(js.read_text())
    assert png.stat().st_size > 0 and len(data["diagonal"]) == 25 and all(-0.05 <= v <= 1.05 for v in data["diagonal"])
    assert (
        cka.main(
            [
                "--ckpt-a",
                a,
                "--ckpt-b",
                a,
                "--dataset",
                "synth_tags",
                "--data-root",
                str(tmp_path / "data"),
                "--batch-size",
                "6",
                "--out",
                str(png),
                "--json",
                str(js),
            ]
        )
        == 0
    )
    assert np.allclose(json.loads(js.read_text())["diagonal"], 1.0, atol=1e-6)


def test_resume_after_a_phase_gives_the_same_record(tmp_path, ml_registry, monkeypatch):
    import benchmarks.run.cell as runner

    real = runner.save_checkpoint
    calls = {"n": 0}

    def crash_after_third(ckpt_dir, t, state):
        real(ckpt_dir, t, state)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    argv = args(tmp_path, "--methods", "ml_indl-cn", "--no-leaderboard")
    monkeypatch.setattr(runner, "save_checkpoint", crash_after_third)
    assert run_all.main(argv) == 130
    state = torch.load(next((tmp_path / "results").rglob("step*.pt")), weights_only=True)
    assert state["strategy"]["step_index"] == 2 and len(state["rows"]["phases"]) == 3
    monkeypatch.setattr(runner, "save_checkpoint", real)
    assert run_all.main(argv) == 0
    resumed = next(iter_records(tmp_path / "results"))
    fresh_dir = tmp_path / "fresh"
    assert run_all.main(args(fresh_dir, "--methods", "ml_indl-cn", "--no-leaderboard")) == 0
    fresh = next(iter_records(fresh_dir / "results"))
    assert resumed["results"]["phases"] == fresh["results"]["phases"]


def test_indl_runs_the_student_and_the_teacher_once_per_step(tmp_path, ml_registry, monkeypatch):
    from benchmarks.run.cell import GridContext
    from benchmarks.suites import get_suite
    from methods import registry as methods
    from methods._cnn14.model import CNN14

    ctx = GridContext(
        get_suite("audio-multilabel"), tmp_path / "data", tmp_path / "r", torch.device("cpu"), progress=False
    )
    stream, store = ctx.stream("synth_tags", ml_registry["synth_tags"].protocols()[0].name), ctx.store("synth_tags")
    spec = methods()["ml_indl-bn"]
    cfg = {**spec.config("synth_tags", "audio"), "epochs": 1, "batch_size": 4}
    s = spec.build(
        modality="audio", store=store, stream=stream, cfg=cfg, device=torch.device("cpu"), seed=0, progress=False
    )
    exps = list(stream.benchmark.train_stream)
    s.train(exps[0], eval_streams=[])
    calls = {"train": 0, "eval": 0}
    forward = CNN14.forward

    def counting(self, x):
        calls["train" if self.training else "eval"] += 1
        return forward(self, x)

    monkeypatch.setattr(CNN14, "forward", counting)
    s.train(exps[1], eval_streams=[])
    assert calls == {"train": 2, "eval": 2}  # 6 clips in batches of 4: one student and one teacher forward per step
    assert s.model.num_classes == 35 and s.old_model.num_classes == 30
    assert exps[1].classes_in_this_experience == [30, 31, 32, 33, 34] and exps[1].previous_classes == list(range(30))


def test_cka_estimator():
    torch.manual_seed(0)
    x = torch.randn(12, 5)
    K, L = cka.gram(x), cka.gram(torch.randn(12, 3))
    n = 12
    naive = (torch.trace(K @ L) + K.sum() * L.sum() / ((n - 1) * (n - 2)) - 2 / (n - 2) * (K @ L).sum()) / (n * (n - 3))
    assert torch.allclose(cka.hsic1(K, L), naive)
    q, _ = torch.linalg.qr(torch.randn(5, 5))
    assert cka.linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0, abs=1e-6)  # invariant to rotation and scale
    assert abs(cka.linear_cka(x, torch.randn(12, 5))) < 0.6
    with pytest.raises(ValueError):
        cka.hsic1(cka.gram(x[:3]), cka.gram(x[:3]))


def test_joint_train_set_merges_a_clip_listed_in_several_phases():
    from benchmarks.core.protocols import Protocol
    from benchmarks.suites.multilabel import MultiLabelStream

    def part(rows, cols, labels, lo, hi):
        y = torch.zeros(len(rows), 4)
        y[:, lo:hi] = torch.tensor(labels, dtype=torch.float32)
        mask = torch.zeros(len(rows), 4, dtype=torch.bool)
        mask[:, lo:hi] = True
        return torch.tensor(rows), y, mask

    train = [
        part([0, 1], None, [[1, 0], [0, 1]], 0, 2),
        part([1, 2], None, [[1], [0]], 2, 3),
        part([2], None, [[1]], 3, 4),
    ]
    s = MultiLabelStream("toy", Protocol("p", (0, 1, 2, 3), (2, 1, 1)), None, train, [], [], [], "h")
    rows, y, mask = s.train_set(1, "joint")
    assert rows.tolist() == [0, 1, 2]
    assert y.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 0]]
    assert mask.tolist() == [
        [True, True, False],
        [True, True, True],
        [False, False, True],
    ]  # unknown entries stay unknown
    rows, y, mask = s.train_set(1, "phase")
    assert (
        rows.tolist() == [1, 2] and y.tolist() == [[0, 0, 1], [0, 0, 0]] and mask[:, 2].all() and not mask[:, :2].any()
    )
