"""MCIL-AudioCLIP end to end on a tiny paired store, in both fidelity modes (scaled-down towers)."""

import numpy as np
import pytest
import torch

from benchmarks.core.protocols import Protocol
from benchmarks.core.streams import build_stream
from datasets.errors import ConfigError
from methods import registry
from methods.mcil_audioclip.moe import moe_modules
from tests.conftest import make_toy_paired_store


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    store = make_toy_paired_store(tmp_path_factory.mktemp("paired") / "toy")
    return store, build_stream(store, Protocol("3x2", tuple(range(6)), (2, 2, 2), memory=0))


def make(name, store, stream, **overrides):
    spec = registry()[name]
    cfg = spec.config("synth_av", "audio-visual", {"epochs": overrides.pop("epochs", 2)})  # synth_av: the tiny towers
    cfg.update(batch_size=8, eval_batch_size=8, **overrides)
    return spec.build(
        modality="audio-visual", store=store, stream=stream, cfg=cfg, device=torch.device("cpu"), seed=0, progress=False
    )


def test_modes_resolve_to_their_values():
    paper = registry()["mcil_audioclip"].config("imagenet_esc19", "audio-visual")
    code = registry()["mcil_audioclip-code"].config("imagenet_esc19", "audio-visual")
    assert (paper["towers"], paper["top_k"], paper["routers"], paper["cwcl"], paper["train_pairing"]) == (
        "audioclip-rn50",
        2,
        "per-task",
        "weighted",
        "paired",
    )
    assert (
        code["towers"],
        code["top_k"],
        code["routers"],
        code["cwcl"],
        code["train_pairing"],
        code["fusion_tau"],
    ) == ("clip-vit-b16", 1, "single", "released", "shuffled", 0.8)
    assert registry()["mcil_audioclip"].config("mini_aric", "audio-visual")["batch_size"] == 16


@pytest.mark.parametrize("name", ["mcil_audioclip", "mcil_audioclip-code"])
def test_trains_predicts_and_reports(name, paired):
    store, stream = paired
    s = make(name, store, stream)
    routers_before = [m.routers.detach().clone() for m in moe_modules(s.model)]
    for t, exp in enumerate(stream.benchmark.train_stream):
        s.train(exp, eval_streams=[])
        pred, targets = s.predict_split("test")
        assert len(pred) == len(targets) == 8 * (t + 1) and pred.max() < 2 * (t + 1)
        rep = s.step_report()
        assert len(rep["text_mean"]) == len(rep["image_mean"]) == s.model.feature_dim
        assert 0.0 <= rep["fusion_fired_test"] <= 1.0 and 0.0 <= rep["fusion_fired_train"] <= 1.0
        if t == 0:
            after0 = [m.routers.detach().clone() for m in moe_modules(s.model)]
    delta = [(m.routers.detach() - b).abs().sum(dim=(1, 2)) for m, b in zip(moe_modules(s.model), routers_before)]
    total = torch.stack(delta).sum(0)
    if name == "mcil_audioclip":
        # per-task routers: every task's router moved; task 0's router did not move after task 0
        assert total.shape == (3,) and bool((total > 0).all())
        for m, a0 in zip(moe_modules(s.model), after0):
            torch.testing.assert_close(m.routers.detach()[0], a0[0])
        assert rep["task_selection_acc"] is not None
    else:
        assert total.shape == (1,) and float(total[0]) == 0.0  # top-1: the released router never learns
        assert rep["task_selection_acc"] is None
    rows = {"R": [[50.0], [40.0, 60.0], [30.0, 40.0, 50.0]], "A": [50.0, 50.0, 40.0], "reports": [rep, rep, rep]}
    mm = s.method_metrics(rows)
    assert set(mm["whole-set"]) >= {"m1", "m2"} and set(mm["last-batch"]) >= {"m1", "m2"}
    assert s.method_info()["weights"]["init"].startswith("random")


def test_training_pairs_share_the_label_when_paired_and_not_when_shuffled(paired):
    store, stream = paired
    seen = {}
    for name in ("mcil_audioclip", "mcil_audioclip-code"):
        s = make(name, store, stream, epochs=3)
        pairs = []
        s._after_forward = lambda s=s, pairs=pairs, **kw: pairs.append(
            (store.labels[s.mb_rows.numpy()], s.pairing.bank.labels[s.mb_clips.numpy()])
        )
        s.train(next(iter(stream.benchmark.train_stream)), eval_streams=[])
        seen[name] = np.concatenate([a == b for a, b in pairs])
    assert len(seen["mcil_audioclip"]) >= 16 and seen["mcil_audioclip"].all()  # paper: every pair shares its label
    assert not seen["mcil_audioclip-code"].all()  # the release: audio of a random current-task sample


def test_real_towers_need_weights_or_random_encoders(paired):
    store, stream = paired
    spec = registry()["mcil_audioclip"]
    cfg = spec.config("imagenet_esc19", "audio-visual")
    with pytest.raises(ConfigError, match="audioclip_ckpt"):
        spec.build(
            modality="audio-visual",
            store=store,
            stream=stream,
            cfg=cfg,
            device=torch.device("cpu"),
            seed=0,
            progress=False,
        )


def test_class_pairing_through_a_clip_bank(tmp_path):
    """A generic paired folder (separate clip bank, 'class' pairing): every training pair shares its label,
    and an image meets different clips of its class across epochs."""
    from tests.datasets.test_paired_datasets import adapter_for, make_generic

    root = make_generic(tmp_path / "mydata", train=(12, 12, 12))
    store = adapter_for(root).open(tmp_path, progress=False)
    assert store.meta["pairing"] == "class" and store.meta["audio_bank"] != "self"
    stream = build_stream(store, Protocol("1+2x1", tuple(range(3)), (1, 2), memory=0))
    s = make("mcil_audioclip", store, stream, epochs=3)
    seen = []
    s._after_forward = lambda **kw: seen.append((s.epoch, s.mb_rows.numpy().copy(), s.mb_clips.numpy().copy()))
    s.train(next(iter(stream.benchmark.train_stream)), eval_streams=[])
    for _, rows, clips in seen:
        np.testing.assert_array_equal(store.labels[rows], s.pairing.bank.labels[clips])
    by_row: dict[int, set] = {}
    for _, rows, clips in seen:
        for r, c in zip(rows.tolist(), clips.tolist()):
            by_row.setdefault(r, set()).add(c)
    assert any(len(c) > 1 for c in by_row.values())  # re-paired across epochs
    pred, targets = s.predict_split("test")
    assert len(pred) == len(targets)
