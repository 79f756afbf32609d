"""CIGN: token growth/freezing, assignment, loss terms by hand, the AV product rule, training, raw mode."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks.core.protocols import Protocol
from benchmarks.core.streams import build_stream
from datasets.errors import WeightsError
from datasets.store import StoreWriter, ViewSpec
from methods import registry
from methods.cign import losses as L
from methods.cign.model import GroupingBlock, assign, build_cign, continual_mask, pick_input_mode

TINY = dict(dim=16, depth=1, heads=2, drop_path=0.0)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one intra-op thread is as fast and immune to a busy machine's contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def strategy(store, stream, modality, method="cign", **over):
    spec = registry()[method]
    cfg = spec.config("toy", modality, {"epochs": over.pop("epochs", 2)})
    cfg.update(batch_size=8, eval_batch_size=16, memory=0, log_terms=True, **over)
    return spec.build(
        modality=modality, store=store, stream=stream, cfg=cfg, device=torch.device("cpu"), seed=0, progress=False
    )


# ----------------------------------------------------------------------------- growth and freezing


def test_tokens_grow_per_step_and_old_blocks_freeze(toy_store):
    torch.manual_seed(0)
    net = build_cign("audio-visual", toy_store, 2, {**TINY})
    assert net.num_classes == 2 and net.step_sizes == [2] and net.tokens[0].requires_grad
    first = net.tokens[0].detach().clone()
    cls_w = net.token_classifier.weight.detach().clone()
    net.expand_classifier(4)
    net.expand_classifier(4)  # no-op
    assert net.step_sizes == [2, 2] and net.num_classes == 4
    assert not net.tokens[0].requires_grad and net.tokens[1].requires_grad
    torch.testing.assert_close(net.tokens[0].detach(), first)
    torch.testing.assert_close(net.token_classifier.weight[:2].detach(), cls_w)
    assert net.token_classifier.out_features == 4
    for m in ("audio", "visual"):
        assert net.branch[m].grouping.num_groups == 4
    # shared by both branches: one parameter set, used by the audio and the visual transformer
    assert sum(1 for n, _ in net.named_parameters() if n.startswith("tokens.")) == 2
    with pytest.raises(ValueError, match="shrink"):
        net.expand_classifier(3)


def test_grouping_growth_keeps_the_old_groups_projection():
    torch.manual_seed(0)
    g = GroupingBlock(dim=8, num_groups=3, heads=2, mlp_ratio=2.0, mix_hidden=4)
    tokens = torch.randn(2, 3, 8)
    before = g.project_groups(tokens)
    g.expand(5)
    after = g.project_groups(torch.cat([tokens, 5 * torch.randn(2, 2, 8)], dim=1))
    torch.testing.assert_close(after[:, :3], before)
    assert (g.mix.fc1.weight[:, 3:] == 0).all() and g.mix.fc2.weight.shape == (5, 4)


def test_continual_grouping_growth_leaves_old_class_outputs_unchanged(toy_store):
    """attention 'continual' + assign_scope 'step': adding classes changes no old-class output."""
    torch.manual_seed(0)
    net = build_cign("audio-visual", toy_store, 2, {**TINY, "attention": "continual", "assign_scope": "step"}).eval()
    views = {v: toy_store.gather(v, np.arange(10), dtype=torch.float32) for v in ("audio", "visual")}
    with torch.no_grad():
        before = net(views)
        net.expand_classifier(4)
        with torch.no_grad():
            net.tokens[1].mul_(50)  # even large new tokens
        after = net(views)
    for m in ("audio", "visual"):
        torch.testing.assert_close(after[f"{m}_logits"][:, :2], before[f"{m}_logits"])
        torch.testing.assert_close(after[f"{m}_groups"][:, :2], before[f"{m}_groups"])
    # the reference's full attention and one softmax over all groups do not have this property
    torch.manual_seed(0)
    full = build_cign("audio-visual", toy_store, 2, {**TINY, "attention": "full", "assign_scope": "all"}).eval()
    with torch.no_grad():
        b = full(views)["audio_logits"]
        full.expand_classifier(4)
        full.tokens[1].mul_(50)
        assert not torch.allclose(full(views)["audio_logits"][:, :2], b)


def test_reference_coupling_variant_is_the_codes_coupling_and_nothing_else(toy_store):
    """`cign-refcoupling`: unmasked attention and one assignment softmax over all groups (stoneMo/CIGN grouping.py
    ModalityTrans.forward, AssignAttention.get_attn dim -2); every other config value is cign's."""
    specs = registry()
    for dataset in ("synth_av", "ave", "vgg_instruments", "toy"):
        ref = specs["cign-refcoupling"].config(dataset, "audio-visual")
        own = specs["cign"].config(dataset, "audio-visual")
        assert (own["attention"], own["assign_scope"]) == ("continual", "step")
        assert (ref["attention"], ref["assign_scope"]) == ("full", "all")
        assert {k: v for k, v in ref.items() if k not in ("attention", "assign_scope")} == {
            k: v for k, v in own.items() if k not in ("attention", "assign_scope")
        }
    torch.manual_seed(0)
    cfg = {**TINY, **{k: ref[k] for k in ("attention", "assign_scope")}, "assignment": "soft"}
    net = build_cign("audio-visual", toy_store, 2, cfg).eval()
    net.expand_classifier(4)
    assert net.assign_blocks is None and all(net.branch[m].attention == "full" for m in net.branches)
    views = {v: toy_store.gather(v, np.arange(5), dtype=torch.float32) for v in ("audio", "visual")}
    with torch.no_grad():
        out = net(views)
        a = out["visual_assign"]  # (B, C, N): one softmax over all 4 groups, not one per step's 2
        torch.testing.assert_close(a.sum(1), torch.ones(5, a.shape[2]))
        assert not torch.allclose(a[:, :2].sum(1), torch.ones(5, a.shape[2]))
        torch.testing.assert_close(a, torch.softmax(out["visual_assign_logits"].float(), 1))
        # unmasked attention: the modality tokens see the class tokens (under the continual mask they do not)
        tokens = out["visual_tokens"].clone()
        net.tokens[1].mul_(50)
        assert not torch.allclose(net(views)["visual_tokens"], tokens)


def test_reference_coupling_variant_trains(toy_store, toy_protocol):
    stream = build_stream(toy_store, toy_protocol)
    s = strategy(toy_store, stream, "audio-visual", method="cign-refcoupling", epochs=1)
    for t, exp in enumerate(stream.benchmark.train_stream):
        s.train(exp, eval_streams=[])
        assert s.model.assign_blocks is None and s.model.step_sizes == [2] * (t + 1)
        if t > 0:  # the continual-grouping term is one KL over all old groups (one block)
            assert np.isfinite(s.loss_terms["cg"]) and s.loss_terms["ctd_logit"] > 0
    pred, _ = s.predict_split("test")
    assert len(pred) == 24 and pred.max() < 6


def test_continual_mask():
    m = continual_mask(2, 3)
    assert m[:2, :2].all() and not m[:2, 2:].any()  # modality tokens see modality tokens only
    assert m[2:, :2].all() and torch.equal(m[2:, 2:], torch.eye(3, dtype=torch.bool))  # class token: data + itself


# ----------------------------------------------------------------------------- assignment


def test_hard_assignment_is_one_hot_straight_through():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7, requires_grad=True)  # (B, groups, tokens)
    a = assign(logits, "hard", training=True)
    assert torch.equal(a.sum(1), torch.ones(3, 7))  # every token goes to exactly one group
    assert set(a.detach().unique().tolist()) <= {0.0, 1.0}
    (a * torch.randn_like(a)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0  # gradients through the soft relaxation
    ev = assign(logits, "hard", training=False)
    torch.testing.assert_close(ev.detach(), F.one_hot(logits.argmax(1), 5).permute(0, 2, 1).float())
    logits.grad = None
    (ev * torch.randn_like(ev)).sum().backward()
    assert logits.grad.abs().sum() > 0


def test_soft_assignment_rows_sum_to_one_and_blocks():
    logits = torch.randn(2, 6, 4)
    a = assign(logits, "soft", training=True)
    torch.testing.assert_close(a.sum(1), torch.ones(2, 4))
    torch.testing.assert_close(a, torch.softmax(logits, 1))
    b = assign(logits, "soft", training=True, blocks=[2, 4])  # one softmax per step block
    torch.testing.assert_close(b[:, :2].sum(1), torch.ones(2, 4))
    torch.testing.assert_close(b[:, 2:].sum(1), torch.ones(2, 4))
    torch.testing.assert_close(b[:, :2], torch.softmax(logits[:, :2], 1))
    h = assign(logits, "hard", training=True, blocks=[2, 4])
    assert torch.equal(h[:, :2].sum(1), torch.ones(2, 4)) and torch.equal(h[:, 2:].sum(1), torch.ones(2, 4))
    with pytest.raises(ValueError):
        assign(logits, "fuzzy", training=True)


# ----------------------------------------------------------------------------- losses by hand


def test_token_ce_and_group_bce_by_hand():
    assert L.token_ce(torch.zeros(3, 3)).item() == pytest.approx(math.log(3))
    assert L.token_ce(20 * torch.eye(4)).item() == pytest.approx(3 * math.exp(-20), abs=1e-6)
    z, y = torch.tensor([[2.0, -1.0, 0.0]]), torch.tensor([0])
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731  softplus
    # BCE-with-logits: target 1 -> softplus(-z), target 0 -> softplus(z)
    assert L.group_bce(z, y).item() == pytest.approx((sp(-2.0) + sp(-1.0) + sp(0.0)) / 3)
    assert L.group_bce(z, y, lo=1).item() == pytest.approx((sp(-1.0) + sp(0.0)) / 2)  # new columns only


def test_class_token_distillation_by_hand():
    groups = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])  # 3 groups now, 2 old
    old = torch.tensor([[[2.0, 0.0], [1.0, 0.0]]])
    # cos = 1 and 0 -> mean(1 - 1, 1 - 0) = 0.5; the new group is ignored
    assert L.class_token_feature_distillation(groups, old).item() == pytest.approx(0.5)
    z, z_old = torch.tensor([[0.0, 7.0]]), torch.tensor([[0.0]])
    assert L.class_token_logit_distillation(z, z_old).item() == pytest.approx(math.log(2))  # BCE(logit 0, target 0.5)
    z, z_old = torch.tensor([[1.0]]), torch.tensor([[30.0]])
    assert L.class_token_logit_distillation(z, z_old).item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-6)


def test_continual_grouping_by_hand():
    old = torch.zeros(1, 2, 1)  # teacher: the token split 0.5 / 0.5 over the 2 old groups
    new = torch.tensor([[[math.log(3.0)], [0.0], [100.0]]])  # student: 0.75 / 0.25 among the old groups, a new group
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert L.continual_grouping(new, old).item() == pytest.approx(expected, rel=1e-5)
    assert L.continual_grouping(new, old, blocks=[1, 1]).item() == pytest.approx(0.0, abs=1e-6)  # per-step blocks of 1
    assert L.continual_grouping(old, old).item() == pytest.approx(0.0, abs=1e-7)
    assert L.continual_grouping(new, old, tau=2.0).item() > 0
    with pytest.raises(ValueError):
        L.continual_grouping(new, old, blocks=[1])


def test_audio_visual_prediction_multiplies_probabilities():
    za, zv = torch.tensor([[4.0, 1.0]]), torch.tensor([[-1.5, 0.5]])
    # sigmoid products: 0.982 * 0.182 = 0.179 < 0.731 * 0.622 = 0.455 -> class 1,
    # although the logit sums (2.5 vs 1.5) and the audio branch alone say class 0
    assert torch.sigmoid(za)[0, 0] * torch.sigmoid(zv)[0, 0] < torch.sigmoid(za)[0, 1] * torch.sigmoid(zv)[0, 1]
    assert L.predict(za, zv).item() == 1
    assert (za + zv).argmax(1).item() == 0
    assert L.predict(za, None).item() == 0 and L.predict(None, zv).item() == 1
    # robust for very negative logits (where the plain product underflows to 0 = 0)
    assert L.predict(torch.tensor([[-800.0, -900.0]]), torch.tensor([[-800.0, -650.0]])).item() == 1  # -1600 < -1550


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("modality", ["audio", "visual", "audio-visual"])
def test_trains_class_incrementally(modality, toy_store, toy_protocol):
    stream = build_stream(toy_store, toy_protocol)
    s = strategy(toy_store, stream, modality, attention="continual", assign_scope="step")
    snapshots, terms = [], []
    for t, exp in enumerate(stream.benchmark.train_stream):
        before = {k: v.detach().clone() for k, v in s.model.named_parameters()}
        s.train(exp, eval_streams=[])
        assert len(s.train_rows) == 24  # the step's own classes only: no exemplars, no old data
        assert set(s.train_targets.tolist()) == set(range(2 * t, 2 * t + 2))
        assert s.model.step_sizes == [2] * (t + 1) and s.model.num_classes == 2 * (t + 1)
        for j, snap in enumerate(snapshots):  # old token blocks: frozen, never change
            torch.testing.assert_close(s.model.tokens[j].detach(), snap)
            assert not s.model.tokens[j].requires_grad
        assert not torch.allclose(s.model.tokens[t].detach(), before[f"tokens.{t}"]) if t == 0 else True
        if t > 0:
            assert s.old_model.num_classes == 2 * t and not any(p.requires_grad for p in s.old_model.parameters())
            # the shared network keeps training (it is carried over, not re-initialised)
            assert not torch.allclose(
                s.model.branch[s.model.branches[0]].head.weight, before[f"branch.{s.model.branches[0]}.head.weight"]
            )
        snapshots.append(s.model.tokens[t].detach().clone())
        terms.append(dict(s.loss_terms))
        pred, targets = s.predict_split("test")
        assert len(pred) == 8 * (t + 1) and pred.max() < 2 * (t + 1)
    assert set(terms[0]) == {"token"} | {f"pred_{m}" for m in s.model.branches}
    for tt in terms[1:]:
        assert {"ctd_feature", "ctd_logit", "cg"} <= set(tt) and all(np.isfinite(v) for v in tt.values())
        assert tt["ctd_logit"] > 0


def test_prediction_rule_in_the_strategy(toy_store, toy_protocol):
    stream = build_stream(toy_store, toy_protocol)
    s = strategy(toy_store, stream, "audio-visual", epochs=1)
    s.train(next(iter(stream.benchmark.train_stream)), eval_streams=[])
    s.model.eval()
    views = {v: toy_store.gather(v, np.arange(12), dtype=torch.float32) for v in ("audio", "visual")}
    with torch.no_grad():
        out = s.model(views)
    expected = (torch.sigmoid(out["audio_logits"].double()) * torch.sigmoid(out["visual_logits"].double())).argmax(1)
    assert torch.equal(s.predict_batch(views), expected)
    assert torch.equal(out["logits"].argmax(1), expected)


def test_resume_rebuilds_the_token_blocks(toy_store, toy_protocol):
    stream = build_stream(toy_store, toy_protocol)
    s = strategy(toy_store, stream, "audio", epochs=1)
    exps = list(stream.benchmark.train_stream)
    for exp in exps[:2]:
        s.train(exp, eval_streams=[])
    state = s.resume_state()
    pred = s.predict_split("test")[0]
    r = strategy(toy_store, stream, "audio", epochs=1)
    r.load_resume_state(state)
    assert r.model.step_sizes == [2, 2] and not r.model.tokens[0].requires_grad
    assert torch.equal(r.predict_split("test")[0], pred)
    r.train(exps[2], eval_streams=[])
    assert r.model.step_sizes == [2, 2, 2]


def test_required_views_follow_the_input_mode():
    spec = registry()["cign"]
    assert spec.required_views("audio-visual", spec.config("synth_av", "audio-visual")) == ("audio", "visual")
    assert spec.required_views("audio-visual", spec.config("vgg_instruments", "audio-visual")) == (
        "spectrogram",
        "image",
    )
    assert spec.required_views("visual", {"input": "raw"}) == ("image",)
    assert pick_input_mode("audio", {"audio": 1, "spectrogram": 1}) == "features"
    assert pick_input_mode("audio", {"spectrogram": 1}) == "raw"
    with pytest.raises(ValueError, match="needs store views"):
        pick_input_mode("visual", {"audio": 1}, "features")


# ----------------------------------------------------------------------------- raw mode


def raw_store(path, n_classes=4, per_split=(6, 2, 2), size=32, freq=32, frames=24):
    from tests.conftest import toy_table

    rng = np.random.default_rng(0)
    table = toy_table(n_classes, per_split)
    ids, labels = table.ids, table.labels
    image = rng.normal(size=(len(ids), 3, size, size)) + labels[:, None, None, None]
    spec = rng.normal(size=(len(ids), freq, frames)) * 3 - 10 + 4 * labels[:, None, None]
    w = StoreWriter(
        path,
        table,
        [ViewSpec("spectrogram", (freq, frames)), ViewSpec("image", (3, size, size))],
        {"dataset": "raw-toy"},
        "raw-toy",
    )
    w.write("spectrogram", 0, spec)
    w.write("image", 0, image)
    return w.finalize()


def test_raw_mode_on_tiny_tensors(tmp_path):
    store = raw_store(tmp_path / "raw")
    with pytest.raises(ValueError, match="--random-encoders"):
        build_cign("audio-visual", store, 2, {**TINY, "input": "auto"})  # random visual encoder only on request
    net = build_cign("audio-visual", store, 2, {**TINY, "input": "auto", "random_encoders": True})
    assert net.input_mode == "raw" and net.views == ("spectrogram", "image")
    assert "random" in net.init_info["visual_encoder"]
    views = {"spectrogram": torch.randn(3, 32, 24), "image": torch.randn(3, 3, 32, 32)}
    net.train()
    out = net(views)
    assert out["audio_tokens"].shape == (3, 1, 16)  # one audio token (global max pool)
    assert out["visual_tokens"].shape == (3, 1, 16)  # the 1x1 layer4 map of a 32x32 frame
    assert out["audio_logits"].shape == out["visual_logits"].shape == (3, 2)
    out["logits"].sum().backward()
    assert net.encoders["visual"].body[0].weight.grad is not None and net.encoders["audio"].body[0].weight.shape[1] == 1
    # 64x64 frames -> a 2x2 map -> 4 visual tokens
    assert (
        net.eval()({"spectrogram": torch.randn(1, 32, 24), "image": torch.randn(1, 3, 64, 64)})["visual_tokens"].shape[
            1
        ]
        == 4
    )

    protocol = Protocol("2x2", (0, 1, 2, 3), (2, 2), memory=0)
    stream = build_stream(store, protocol)
    s = strategy(store, stream, "audio-visual", epochs=1, input="raw", random_encoders=True, **TINY)
    assert s.views == ["spectrogram", "image"] and s.cfg["model_init"]["input"] == "raw"
    for t, exp in enumerate(stream.benchmark.train_stream):
        s.train(exp, eval_streams=[])
        pred, targets = s.predict_split("test")
        assert len(pred) == 4 * (t + 1) and pred.max() < 2 * (t + 1)


def test_raw_mode_loads_local_imagenet_weights_only(tmp_path):
    from torchvision.models import resnet18

    store = raw_store(tmp_path / "raw", n_classes=2, per_split=(1, 1, 1))
    ref = resnet18(weights=None).state_dict()
    torch.save(ref, tmp_path / "r18.pth")
    net = build_cign("visual", store, 2, {**TINY, "input": "raw", "visual_weights": str(tmp_path / "r18.pth")})
    torch.testing.assert_close(net.encoders["visual"].body[0].weight, ref["conv1.weight"])
    torch.testing.assert_close(net.encoders["visual"].body[7][1].bn2.running_var, ref["layer4.1.bn2.running_var"])
    assert "sha256" in net.init_info["visual_encoder"]
    with pytest.raises(WeightsError, match="not found.*nothing is downloaded"):
        build_cign("visual", store, 2, {**TINY, "input": "raw", "visual_weights": str(tmp_path / "absent.pth")})
    torch.save({"foo": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(
        WeightsError, match="does not fit visual_weights \\(torchvision ResNet-18\\); unexpected \\['foo'\\]"
    ):
        build_cign("visual", store, 2, {**TINY, "input": "raw", "visual_weights": str(tmp_path / "bad.pth")})


def test_raw_mode_teacher_sees_the_students_flipped_frames(tmp_path):
    """The train-time flip is drawn once per batch, before the student and the teacher run: with teacher ==
    student (same weights, BN on running statistics, soft assignment, no DropPath), every distillation term is at
    its minimum on a batch with flipped frames (the flip used to happen inside the student's forward only)."""
    import copy

    from benchmarks.core.template import ResidentViews

    store = raw_store(tmp_path / "raw")
    stream = build_stream(store, Protocol("2x2", (0, 1, 2, 3), (2, 2), memory=0))
    s = strategy(
        store, stream, "audio-visual", input="raw", random_encoders=True, assignment="soft", bce_columns="seen", **TINY
    )
    assert s.cfg["flip"] is True
    rows, targets = stream.step("train", 0)
    s.step_index = 1  # distillation on; the teacher is an exact copy of the student
    s.old_model = copy.deepcopy(s.model).eval().requires_grad_(False)
    s.model.train()
    for m in s.model.modules():  # running BN statistics, as in the eval-mode teacher
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    seen = {}
    for name, net in (("student", s.model), ("teacher", s.old_model)):
        net.encoders["visual"].body.register_forward_pre_hook(lambda m, a, name=name: seen.update({name: a[0]}))
    s.old_model.register_forward_hook(lambda m, a, out: seen.update(teacher_out=out))
    s.resident = ResidentViews(store, s.views, rows, torch.device("cpu"))
    s.mbatch = [rows, targets, torch.zeros_like(targets), torch.zeros_like(targets, dtype=torch.bool)]
    s.is_training = True
    torch.manual_seed(3)
    s._unpack_minibatch()
    s.mb_output = s.forward()
    s.loss_fn(s.mb_output, s.mb_y)

    stored = store.gather("image", rows, dtype=torch.float32)
    flipped = (seen["student"] == stored.flip(-1)).flatten(1).all(1)
    assert flipped.any() and not flipped.all()  # a batch with flipped and unflipped frames
    assert torch.equal(seen["teacher"], seen["student"])  # the teacher sees the same (flipped) frames
    for m in s.model.branches:
        torch.testing.assert_close(s.mb_output[f"{m}_logits"], seen["teacher_out"][f"{m}_logits"])
    assert s.loss_terms["ctd_feature"] == pytest.approx(0.0, abs=1e-5)
    assert s.loss_terms["cg"] == pytest.approx(0.0, abs=1e-5)
    # BCE against the teacher's own sigmoid: the entropy of sigma(z_old), its minimum over the student's logits
    floor = np.mean(
        [
            float(F.binary_cross_entropy_with_logits(z, torch.sigmoid(z)))
            for z in (seen["teacher_out"][f"{m}_logits"] for m in s.model.branches)
        ]
    )
    assert s.loss_terms["ctd_logit"] == pytest.approx(floor, abs=1e-5)
    # outside training, nothing is flipped
    s.is_training = False
    s.mbatch = [rows, targets, torch.zeros_like(targets), torch.zeros_like(targets, dtype=torch.bool)]
    s._unpack_minibatch()
    assert torch.equal(s.mb_x["image"], stored)
