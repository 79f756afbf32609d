"""MCIL-AudioCLIP end to end on a tiny paired store, in both fidelity modes (scaled-down towers)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

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
    cfg.update({"batch_size": 8, "eval_batch_size": 8, **overrides})
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


@pytest.fixture(scope="module")
def carved(tmp_path_factory):
    """A generic paired folder without image/val: its val split is carved out of train (every 10th image)."""
    from tests.datasets.test_paired_datasets import adapter_for, make_generic

    tmp = tmp_path_factory.mktemp("carved")
    store = adapter_for(make_generic(tmp / "mydata", train=(12, 12, 12))).open(tmp, progress=False)
    assert str(store.meta["val_split"]).startswith("carved")
    return store, build_stream(store, Protocol("1+2x1", tuple(range(3)), (1, 2), memory=0))


def test_class_pairing_through_a_clip_bank(carved):
    """A generic paired folder (separate clip bank, 'class' pairing): every training pair shares its label,
    and an image meets different clips of its class across epochs."""
    store, stream = carved
    assert store.meta["pairing"] == "class" and store.meta["audio_bank"] != "self"
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


def test_trains_on_the_full_training_split_with_the_carved_val_rows(carved, paired):
    """The release trains on its whole training split; the harness carved 10 % of it out as val, which MCIL
    (selecting nothing on val) gives back to training: train + the current task's val rows."""
    store, stream = carved
    for step in (0, 1):
        s = make("mcil_audioclip", store, stream, epochs=1)
        s.step_index = step
        rows, targets = s.training_rows()
        train_rows, _ = stream.step("train", step)
        val_rows, _ = stream.step("val", step)
        assert len(val_rows) > 0 and len(rows) == len(train_rows) + len(val_rows)
        assert sorted(rows.tolist()) == sorted(train_rows.tolist() + val_rows.tolist())
        positions = [stream.protocol.class_order.index(c) for c in store.labels[rows.numpy()]]
        np.testing.assert_array_equal(targets.numpy(), positions)
    # the switch back to the harness's 90 %, and a store whose val split is its own (not carved): train only
    s = make("mcil_audioclip", store, stream, epochs=1, train_split="train")
    s.step_index = 0
    assert sorted(s.training_rows()[0].tolist()) == sorted(stream.step("train", 0)[0].tolist())
    toy, toy_stream = paired
    s = make("mcil_audioclip-code", toy, toy_stream, epochs=1)
    s.step_index = 0
    assert sorted(s.training_rows()[0].tolist()) == sorted(toy_stream.step("train", 0)[0].tolist())
    # and training uses them
    s = make("mcil_audioclip", store, stream, epochs=1)
    s.train(next(iter(stream.benchmark.train_stream)), eval_streams=[])
    full = stream.step("train", 0)[0].tolist() + stream.step("val", 0)[0].tolist()
    assert sorted(s.train_rows.tolist()) == sorted(full)


def release_cosine_lr(i: int, lr: float, warmup: int, steps: int) -> float:
    """utils.cosine_lr of the release (continual_clip/utils.py:56-75) at iteration i, for `steps` iterations."""
    if i < warmup:
        return lr * (i + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (i - warmup) / (steps - warmup))) * lr


@pytest.mark.parametrize("epochs", [1, 2])
def test_schedule_and_iterations_match_the_release(paired, epochs):
    """The release runs range(EPOCH * n + 1) iterations for n batches per epoch, with the cosine horizon
    EPOCH * n (models.py:280-303, 319): one extra iteration per task, which gets learning rate 0."""
    store, stream = paired
    s = make("mcil_audioclip-code", store, stream, epochs=epochs, batch_size=4, warmup_iters=2, lr=0.01)
    lrs = []
    step = s.optimizer_step

    def spy():
        lrs.append(s.optimizer.param_groups[0]["lr"])
        step()

    s.optimizer_step = spy
    s.train(next(iter(stream.benchmark.train_stream)), eval_streams=[])
    n = math.ceil(len(stream.step("train", 0)[0]) / 4)  # 16 rows, batch 4, no drop_last: 4 batches
    assert n == 4 and len(lrs) == epochs * n + 1
    expected = [release_cosine_lr(i, 0.01, 2, epochs * n) for i in range(epochs * n + 1)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-12, atol=1e-15)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-15)
    # paper mode: no extra iteration, the same horizon
    s = make("mcil_audioclip", store, stream, epochs=epochs, batch_size=4, warmup_iters=2, lr=0.01)
    lrs.clear()
    step = s.optimizer_step
    s.optimizer_step = spy
    s.train(next(iter(stream.benchmark.train_stream)), eval_streams=[])
    np.testing.assert_allclose(lrs, expected[:-1], rtol=1e-12, atol=1e-15)


class NoFusion(torch.nn.Module):
    def forward(self, v, a):
        return v, {"fired": torch.zeros(len(v), dtype=torch.bool)}


def test_code_mode_scores_against_l2_normalised_eval_prototypes(paired):
    """The release normalises the text features it scores test images against (models.py:209-210); its
    training prototypes are the raw template mean (models.py:335-336). Hand-made tensors: class 0's text
    embedding is long (norm 10), class 1's short (norm 1); the second test feature is closer to class 1 in
    angle, but the raw dot product picks class 0."""
    store, stream = paired
    s = make("mcil_audioclip-code", store, stream)
    s.step_index = 0
    d = s.model.feature_dim
    p0, p1 = torch.zeros(d), torch.zeros(d)
    p0[0] = 10.0
    p1[0], p1[1] = 0.6, 0.8
    f_a, f_b = torch.zeros(d), torch.zeros(d)
    f_a[0] = 1.0
    f_b[0], f_b[1] = 0.3, (1 - 0.09) ** 0.5
    emb = torch.stack([p0, p1])[:, None, :]  # (classes, templates, D): the eval pool is one template

    s.model.text_embeddings = lambda classes, pool, with_grad=False: emb[classes].clone()
    feats = torch.stack([f_a, f_b])
    s.model.image_features = lambda images, route, adapters=True: feats[torch.arange(len(images)) % 2]
    s.model.audio_features = lambda waves=None, embedding=None: torch.zeros(len(waves), d)
    s.model.fusion = NoFusion()
    rows, _ = stream.seen("test", 0)
    pred = s.predict_rows(rows)
    np.testing.assert_array_equal(pred.numpy(), (np.arange(len(rows)) % 2))  # the raw prototypes: all class 0
    train = s.model.text_prototypes(torch.arange(2), "train", with_grad=False)
    torch.testing.assert_close(train, emb.mean(1))  # training keeps the release's raw mean
    eval_ = s.model.text_prototypes(torch.arange(2), "eval", with_grad=False)
    torch.testing.assert_close(eval_, F.normalize(emb.mean(1), dim=1))


def test_last_batch_metrics_take_the_last_eval_batch_in_store_order(paired):
    """The release's last-batch quantities come from the last batch of a DataLoader(batch 64, no shuffle) over
    the seen tasks' test samples in dataset (folder) order (main.py:59-65; continuum keeps the dataset order
    when it selects tasks), not from the newest step's samples."""
    store, _ = paired
    stream = build_stream(store, Protocol("perm", (4, 5, 0, 1, 2, 3), (2, 2, 2), memory=0))
    s = make("mcil_audioclip-code", store, stream)
    s.step_index = 1  # seen: classes 4, 5 (step 0) and 0, 1 (step 1): 16 test rows, eval batch 8
    rows, targets = stream.seen("test", 1)
    s.predict_rows(rows, targets)
    rep = s.last_report
    last = torch.sort(rows).values[8:]  # store order: classes 0, 1 first, 4, 5 last
    assert set(store.labels[last.numpy()]) == {4, 5} and set(store.labels[rows[8:].numpy()]) == {0, 1}
    s.model.eval()
    with torch.no_grad():
        images = store.gather("clip_image", last, dtype=torch.float32)
        v = s.model.image_features(images, torch.zeros(len(last), dtype=torch.long))
    np.testing.assert_allclose(rep["image_mean_last_batch"], v.mean(0).numpy(), atol=1e-5)
    whole = s.model.image_features(store.gather("clip_image", rows, dtype=torch.float32), torch.zeros(16).long())
    np.testing.assert_allclose(rep["image_mean"], whole.detach().mean(0).numpy(), atol=1e-5)
