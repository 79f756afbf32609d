"""The standard CL strategies (methods/_clstrategies and the ewc ... slda folders): every loss term and closed-form
step on hand-checkable tensors, the behaviour each method adds to the template, resume, and the multi-label rows."""

import math
import types

import pytest
import torch
import torch.nn.functional as F
from avalanche.models.bic_model import BiasLayer
from avalanche.training.supervised.deep_slda import StreamingLDA
from avalanche.training.utils import ParamData

from benchmarks.core.streams import build_stream
from methods import registry
from methods._clstrategies import losses
from methods._clstrategies.plugins import (
    StoreEWC,
    StoreMAS,
    SynapticIntelligence,
    fisher_diagonal,
    output_norm_importance,
    si_omega,
)
from tests.methods.test_contract_smoke import make_strategy

CL_NAMES = ("ewc", "si", "mas", "agem", "gdumb", "er", "er_ace", "derpp", "bic", "slda")
ML_NAMES = ("ml_ewc-bn", "ml_si-bn", "ml_mas-bn", "ml_er-bn", "ml_derpp-bn")


def test_registry_rows_are_cl_strategies():
    r = registry()
    for name in CL_NAMES:
        assert r[name].family == "cl-strategy" and r[name].suites == ("audio-visual",)
        assert r[name].modalities == ("audio", "visual", "audio-visual")
    for name in ML_NAMES:
        assert r[name].family == "cl-strategy" and r[name].suites == ("audio-multilabel",)
        assert r[name].config("synth_tags", "audio")["norm"] == "bn"


# ---------------------------------------------------------------------------------------- tiny fake strategy
class Lin(torch.nn.Module):
    """f(x) = W x (no bias), the views dict holding "x"; enough for the importances by hand."""

    def __init__(self, W):
        super().__init__()
        self.fc = torch.nn.Linear(W.shape[1], W.shape[0], bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(W)

    def forward(self, views):
        return {"logits": self.fc(views["x"])}


def fake_strategy(model, batches, t=0):
    s = types.SimpleNamespace(model=model, device=torch.device("cpu"), clock=types.SimpleNamespace(train_exp_counter=t))
    s.importance_batches = lambda: iter(batches)
    s.importance_loss = lambda out, target: F.cross_entropy(out["logits"], target[0])
    s.loss = torch.zeros(())
    return s


# ---------------------------------------------------------------------------------------- EWC
def test_ewc_fisher_per_sample_and_minibatch_by_hand():
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    y = torch.tensor([0, 1])
    s = fake_strategy(Lin(W), [({"x": x}, (y,))])
    # per-sample CE gradient wrt W: (softmax(Wx) - onehot(y)) x^T
    grads = [torch.outer(torch.softmax(W @ x[i], 0) - F.one_hot(y[i], 2).float(), x[i]) for i in range(2)]
    per_sample = fisher_diagonal(s, per_sample=True)["fc.weight"].data
    torch.testing.assert_close(per_sample, (grads[0] ** 2 + grads[1] ** 2) / 2)
    minibatch = fisher_diagonal(s, per_sample=False)["fc.weight"].data  # avalanche: (mean gradient)^2 per batch
    torch.testing.assert_close(minibatch, ((grads[0] + grads[1]) / 2) ** 2)


def test_ewc_online_penalty_and_importance_accumulation():
    plugin = StoreEWC(ewc_lambda=2.0, decay_factor=0.5)
    model = Lin(torch.tensor([[1.0, 1.0]]))  # 1 class
    imp0 = {"fc.weight": ParamData("fc.weight", init_tensor=torch.tensor([[1.0, 2.0]]))}
    plugin.update_importances(imp0, 0)
    plugin.saved_params[0] = {"fc.weight": ParamData("fc.weight", init_tensor=torch.tensor([[0.0, 1.0]]))}
    # the head grows to 2 classes: the new row is not penalised (zero importance, expanded)
    model.fc = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([[2.0, 3.0], [5.0, 5.0]]))
    s = fake_strategy(model, [], t=1)
    plugin.before_backward(s)
    # lambda * sum F (theta - theta*)^2 = 2 * (1 * (2-0)^2 + 2 * (3-1)^2) = 24
    assert float(s.loss.detach()) == pytest.approx(24.0)
    # online accumulation: F*_1 = decay * F*_0 (padded) + F_1
    imp1 = {"fc.weight": ParamData("fc.weight", init_tensor=torch.tensor([[1.0, 1.0], [3.0, 4.0]]))}
    plugin.update_importances(imp1, 1)
    torch.testing.assert_close(plugin.importances[1]["fc.weight"].data, torch.tensor([[1.5, 2.0], [3.0, 4.0]]))
    assert 0 not in plugin.importances  # online mode keeps one importance


# ---------------------------------------------------------------------------------------- SI
def test_si_omega_path_integral_clip_and_penalty_by_hand():
    assert float(si_omega(torch.tensor(-0.2), torch.tensor(0.5), eps=0.05)) == pytest.approx(-0.2 / 0.3)
    plugin = SynapticIntelligence(si_lambda=2.0, eps=0.0, clip=10.0)
    model = Lin(torch.tensor([[1.0, 0.0]]))
    s = fake_strategy(model, [])
    plugin.before_training_exp(s)
    # two iterations by hand: gradient g, then the update theta -= 0.5 g
    for g in (torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 0.0]])):
        plugin.before_training_iteration(s)
        model.fc.weight.grad = g.clone()
        with torch.no_grad():
            model.fc.weight -= 0.5 * g
        plugin.after_training_iteration(s)
    plugin.after_training_exp(s)
    # path w = sum g * delta_k = (1*-0.5 + 0.5*-0.25, -2*1) = (-0.625, -2); total delta = (-0.75, 1)
    # Omega = -w / delta^2 = (0.625 / 0.5625, 2 / 1)
    torch.testing.assert_close(plugin.omega["fc.weight"], torch.tensor([[0.625 / 0.5625, 2.0]]))
    torch.testing.assert_close(plugin.anchor["fc.weight"], torch.tensor([[0.25, 1.0]]))
    # penalty lambda/2 * sum Omega (theta - theta*)^2 at theta = (1.25, 0): 1 * (0.625/0.5625 * 1 + 2 * 1)
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([[1.25, 0.0]]))
    s.loss = torch.zeros(())
    plugin.before_backward(s)
    assert float(s.loss) == pytest.approx(0.625 / 0.5625 + 2.0)
    # next step: the penalty's own gradient lambda * Omega * (theta - theta*) is removed from the path integral
    plugin.before_training_exp(s)
    plugin.before_training_iteration(s)
    penalty_grad = 2.0 * plugin.omega["fc.weight"] * (model.fc.weight.detach() - plugin.anchor["fc.weight"])
    model.fc.weight.grad = penalty_grad + torch.tensor([[1.0, 1.0]])  # task gradient (1, 1)
    with torch.no_grad():
        model.fc.weight -= torch.tensor([[0.1, 0.2]])
    plugin.after_training_iteration(s)
    torch.testing.assert_close(plugin.path["fc.weight"], torch.tensor([[-0.1, -0.2]]))
    # the clip bounds the importance from above
    clipped = SynapticIntelligence(si_lambda=1.0, eps=0.0, clip=1.5)
    clipped.cum = {"fc.weight": torch.tensor([[-3.0, -1.0]])}
    clipped.path = {"fc.weight": torch.zeros(1, 2)}
    clipped.start = {"fc.weight": model.fc.weight.detach().clone() - 1}
    clipped.after_training_exp(s)
    torch.testing.assert_close(clipped.omega["fc.weight"], torch.tensor([[1.5, 1.0]]))


# ---------------------------------------------------------------------------------------- MAS
def test_mas_importance_and_alpha_average_by_hand():
    W = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    s = fake_strategy(Lin(W), [({"x": x}, (torch.tensor([0, 1]),))])
    # d mean_i ||W x_i||^2 / dW = (2/B) sum_i W x_i x_i^T
    expected = (2 / 2) * sum(torch.outer(W @ x[i], x[i]) for i in range(2)).abs()
    torch.testing.assert_close(output_norm_importance(s)["fc.weight"].data, expected)
    plugin = StoreMAS(lambda_reg=3.0, alpha=0.25)
    plugin.after_training_exp(s)  # step 0: Omega = Omega_0, theta* = W
    s.clock.train_exp_counter = 1
    with torch.no_grad():
        s.model.fc.weight.add_(1.0)
    plugin.after_training_exp(s)  # Omega = alpha Omega_0 + (1 - alpha) Omega_1
    W1 = W + 1
    omega1 = sum(torch.outer(W1 @ x[i], x[i]) for i in range(2)).abs()
    torch.testing.assert_close(plugin.importance["fc.weight"].data, 0.25 * expected + 0.75 * omega1)
    s.loss = torch.zeros(())
    with torch.no_grad():
        s.model.fc.weight.add_(0.5)
    plugin.before_backward(s)  # lambda * sum Omega (theta - theta*)^2, theta - theta* = 0.5 everywhere
    assert float(s.loss) == pytest.approx(3.0 * 0.25 * float(plugin.importance["fc.weight"].data.sum()))


# ---------------------------------------------------------------------------------------- A-GEM
def test_agem_projection_by_hand():
    g, ref = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    proj = losses.agem_project(g, ref)  # g.ref = -1 < 0: g - (-1 / 2) ref
    torch.testing.assert_close(proj, torch.tensor([0.5, 0.5]))
    assert float(torch.dot(proj, ref)) == pytest.approx(0.0)
    torch.testing.assert_close(losses.agem_project(torch.tensor([1.0, 2.0]), ref), torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(losses.agem_project(g, torch.zeros(2)), g)


# ---------------------------------------------------------------------------------------- ER-ACE
def test_er_ace_masked_loss_by_hand():
    z = torch.tensor([[1.0, 2.0, 3.0], [0.0, 5.0, 1.0]])
    y = torch.tensor([0, 2])  # present: classes 0 and 2; class 1 is masked out of the softmax
    expected = (-math.log(math.e / (math.e + math.e**3)) - math.log(math.e / (1 + math.e))) / 2
    assert float(losses.ace_incoming_ce(z, y)) == pytest.approx(expected)
    assert float(losses.ace_incoming_ce(z[:1], y[:1])) == pytest.approx(0.0)  # one present class: nothing to learn
    zb, yb = torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([1])
    total = losses.ace_loss(z, y, zb, yb)
    assert float(total) == pytest.approx(expected + float(F.cross_entropy(zb, yb)))


# ---------------------------------------------------------------------------------------- DER++
def test_derpp_logit_terms_by_hand():
    z = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 4.0]])
    stored = torch.tensor([[0.0, 2.0, float("nan")], [1.0, 1.0, 1.0]])  # row 0 recorded over 2 classes only
    # recorded squared errors: 1, 0 | 1, 1, 9 -> 12 / 5
    assert float(losses.stored_logit_mse(z, stored)) == pytest.approx(12 / 5)
    narrow = torch.tensor([[1.0], [2.0]])  # logits recorded when the head had one class
    assert float(losses.stored_logit_mse(z, narrow)) == pytest.approx((0 + 4) / 2)
    zc, yc, yb = torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([1]), torch.tensor([2, 0])
    got = losses.derpp_loss(zc, yc, z, stored, yb, alpha=0.1, beta=0.5)
    want = F.cross_entropy(zc, yc) + 0.1 * 12 / 5 + 0.5 * F.cross_entropy(z, yb)
    assert float(got) == pytest.approx(float(want))


# ---------------------------------------------------------------------------------------- BiC
def test_bic_bias_layer_and_losses_by_hand():
    layer = BiasLayer([1, 2])
    with torch.no_grad():
        layer.alpha.fill_(2.0)
        layer.beta.fill_(-1.0)
    out = layer(torch.tensor([[1.0, 2.0, 3.0]]))
    torch.testing.assert_close(out, torch.tensor([[1.0, 3.0, 5.0]]))  # columns 1, 2: 2 z - 1; column 0 untouched
    new, old = torch.tensor([[0.0, 2.0], [1.0, 1.0]]), torch.tensor([[2.0, 0.0], [0.0, 4.0]])
    q = torch.softmax(old / 2, dim=1)  # over the classes, not over the batch (avalanche's dim=0)
    want = -(q * torch.log_softmax(new / 2, dim=1)).sum(1).mean()
    assert float(losses.bic_distillation(new, old, T=2.0)) == pytest.approx(float(want))
    avalanche_form = F.cross_entropy(new / 2, torch.softmax(old / 2, dim=0))
    assert float(avalanche_form) != pytest.approx(float(want))
    ce, dist = torch.tensor(1.0), torch.tensor(3.0)
    assert float(losses.bic_stage1_loss(ce, dist, old_classes=2, seen_classes=6)) == pytest.approx(2 / 3 + 1.0)
    assert float(losses.bias_l2(torch.tensor([2.0]))) == pytest.approx(0.2)


# ---------------------------------------------------------------------------------------- SLDA
def avalanche_slda(d, C, shrinkage=1e-4):
    """avalanche's own StreamingLDA state and methods, without its strategy constructor."""
    s = types.SimpleNamespace(
        muK=torch.zeros(C, d), cK=torch.zeros(C), Sigma=torch.ones(d, d), num_updates=0, streaming_update_sigma=True
    )
    s.shrinkage_param, s.input_size, s.device, s.prev_num_updates = shrinkage, d, "cpu", -1
    return s


def test_slda_batched_update_equals_avalanche_streaming_fit():
    g = torch.Generator().manual_seed(0)
    d, C = 4, 3
    ref = avalanche_slda(d, C)
    means, counts, sigma, n = torch.zeros(C, d), torch.zeros(C, dtype=torch.long), torch.ones(d, d), 0
    for batch in range(3):
        x = torch.randn(7, d, generator=g).double()
        y = torch.randint(0, C - (batch == 0), (7,), generator=g)  # class 2 first appears in a later batch
        for xi, yi in zip(x, y):
            StreamingLDA.fit(ref, xi[None].float(), yi[None])
        means, counts, sigma = losses.slda_update(x.float(), y, means, counts, sigma, n)
        n += len(y)
        torch.testing.assert_close(means, ref.muK, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(counts.float(), ref.cK)
        torch.testing.assert_close(sigma, ref.Sigma, atol=1e-5, rtol=1e-5)
    xt = torch.randn(5, d, generator=g)
    W, b = losses.slda_weights(means, sigma, 1e-4)
    torch.testing.assert_close(xt @ W + b, StreamingLDA.predict(ref, xt), atol=1e-3, rtol=1e-4)


def test_slda_two_point_covariance_by_hand():
    # two samples of one class: the first has w = 0; the second d = x2 - x1, w = 1/2, Sigma = (1/2) d d^T / 2
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    means, counts, sigma = losses.slda_update(
        x, torch.tensor([0, 0]), torch.zeros(1, 2), torch.zeros(1), torch.ones(2, 2), 0
    )
    torch.testing.assert_close(sigma, torch.tensor([[1.0, 1.0], [1.0, 1.0]]))
    torch.testing.assert_close(means, torch.tensor([[2.0, 1.0]]))


# ---------------------------------------------------------------------------------------- behaviour on the toy stream
def trained(name, modality, toy_store, toy_protocol, steps=3, **cfg):
    stream = build_stream(toy_store, toy_protocol)
    s = make_strategy(name, modality, toy_store, stream, **{"epochs": 1, **cfg})
    exps = list(stream.benchmark.train_stream)
    for exp in exps[:steps]:
        s.train(exp, eval_streams=[])
    return s, stream, exps


def test_replay_memories_are_class_balanced_store_rows(toy_store, toy_protocol):
    for name in ("er", "derpp", "agem"):
        s, _, _ = trained(name, "audio", toy_store, toy_protocol)
        assert sorted(s.memory) == list(range(6)) and all(len(r) == 12 // 6 for r in s.memory.values())
        for c, rows in s.memory.items():
            assert (toy_store.labels[rows.numpy()] == toy_protocol.class_order[c]).all()
            assert (toy_store.splits[rows.numpy()] == 0).all()


def test_er_batches_join_a_memory_batch_and_agem_trains_on_new_data_only(toy_store, toy_protocol, monkeypatch):
    from methods.er.strategy import ER

    batches = []
    real = ER.loss_fn
    monkeypatch.setattr(
        ER,
        "loss_fn",
        lambda self, out, y: batches.append((self.step_index, self.n_replay, len(y))) or real(self, out, y),
    )
    s, _, _ = trained("er", "audio", toy_store, toy_protocol, steps=2)
    assert len(s.train_rows) == 24  # new data only; the memory comes in its own batches
    # step 0: 24 rows in batches of 8; step 1: each batch of 8 joined by all 12 memory rows (min(256, 12))
    assert batches == [(0, 0, 8)] * 3 + [(1, 12, 20)] * 3
    a, _, _ = trained("agem", "audio", toy_store, toy_protocol, steps=2)
    assert len(a.train_rows) == 24 and a.ref_rows is not None and len(a.ref_rows) == 12


def test_agem_projects_the_step_gradient(toy_store, toy_protocol, monkeypatch):
    seen = []
    real = losses.agem_project

    def spy(g, ref):
        out = real(g, ref)
        seen.append(float(torch.dot(out, ref)))
        return out

    monkeypatch.setattr("methods.agem.strategy.agem_project", spy)
    trained("agem", "visual", toy_store, toy_protocol, steps=2)
    assert seen and min(seen) > -1e-4  # every applied gradient is at most orthogonal to the reference gradient


def test_er_ace_memory_takes_the_new_classes_before_training(toy_store, toy_protocol, monkeypatch):
    from methods.er_ace.strategy import ERACE

    calls = []
    real = losses.ace_loss
    monkeypatch.setattr("methods.er_ace.strategy.ace_loss", lambda *a: calls.append([len(x) for x in a]) or real(*a))
    s, stream, exps = trained("er_ace", "audio", toy_store, toy_protocol, steps=1)
    assert sorted(s.memory) == [0, 1] and calls == []  # step 0: the memory is filled, no replay
    s.train(exps[1], eval_streams=[])
    assert sorted(s.memory) == [0, 1, 2, 3] and all(len(r) == 3 for r in s.memory.values())
    assert calls == [[8, 8, 12, 12]] * 3  # incoming batch of 8, memory batch of all 12 (incl. the new classes')
    assert isinstance(s, ERACE)


def test_derpp_records_the_selected_models_logits(toy_store, toy_protocol):
    s, _, _ = trained("derpp", "audio-visual", toy_store, toy_protocol, steps=2)
    for c in (2, 3):  # recorded after step 1 with its selected model, over its 4 seen classes
        got = s.recorded[c]
        want = s.features_of(s.memory[c], key="logits", normalize=False).cpu()
        assert got.shape == (12 // 4, 4) and torch.allclose(got, want, atol=1e-5)
    assert s.recorded[0].shape == (3, 2)  # old classes keep their narrower logits, cut to the new quota


def test_gdumb_resets_to_the_initial_model_and_trains_on_memory(toy_store, toy_protocol):
    s, _, exps = trained("gdumb", "audio", toy_store, toy_protocol, steps=1)
    init = s.initial_model.state_dict()
    s.train(exps[1], eval_streams=[])
    assert len(s.train_rows) == 12 and sorted(s.memory) == [0, 1, 2, 3]
    assert not torch.equal(s.model.audio_proj.weight, init["audio_proj.weight"])  # trained from the initial weights
    assert s.initial_model.classifier.out_features == 2


def test_bic_holds_out_a_validation_memory_and_corrects_the_new_classes(toy_store, toy_protocol):
    s, _, _ = trained("bic", "visual", toy_store, toy_protocol, steps=2, bic_stage2_epochs=3)
    assert sorted(s.val_memory) == [0, 1, 2, 3] and all(len(r) == 1 for r in s.val_memory.values())
    exemplars = set(torch.cat(list(s.memory.values())).tolist())
    held = set(torch.cat(list(s.val_memory.values())).tolist())
    assert not exemplars & held and not held & set(s.train_rows.tolist())
    assert s.bias_layer is not None and s.bias_layer.clss.tolist() == [2, 3] and s.bias_active
    assert s.step_report().keys() == {"bias_alpha", "bias_beta"}


def test_slda_single_pass_counts_every_training_sample(toy_store, toy_protocol):
    s, _, _ = trained("slda", "audio-visual", toy_store, toy_protocol, epochs=5)
    assert s.model.counts.tolist() == [12] * 6 and int(s.model.updates) == 72
    assert s.model.feature_dim == 8 + 8


@pytest.mark.parametrize("name", ["ewc", "si", "mas", "derpp", "bic", "er_ace"])
def test_resume_after_a_step_trains_the_next_step_identically(name, toy_store, toy_protocol, tmp_path):
    import io

    extra = {"bic_stage2_epochs": 2, "si_lambda": 1e4}  # a strong SI penalty, so a lost SI state would show
    s, stream, exps = trained(name, "audio", toy_store, toy_protocol, steps=2, **extra)
    buf = io.BytesIO()
    torch.save(s.resume_state(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    torch.manual_seed(0)
    r = make_strategy(name, "audio", toy_store, stream, epochs=1, **extra)
    r.load_resume_state(state)
    for strat in (s, r):
        strat.train(exps[2], eval_streams=[])
    for k, v in s.model.state_dict().items():
        torch.testing.assert_close(r.model.state_dict()[k], v)


# ---------------------------------------------------------------------------------------- multi-label rows
def test_multilabel_rows_run_on_a_tiny_synth_tags(tmp_path, monkeypatch):
    import benchmarks.run.grid
    import datasets
    import run_all
    from benchmarks.core.records import iter_records
    from datasets.adapters.synth_tags import SynthTags, SynthTagsConfig

    adapters = {"synth_tags": SynthTags(SynthTagsConfig(train_base=24, train_new=6, test_base=12, test_new=4))}
    monkeypatch.setattr(datasets, "registry", lambda: adapters)
    monkeypatch.setattr(benchmarks.run.grid, "dataset_registry", lambda: adapters)
    argv = ["--suite", "audio-multilabel", "--data-root", str(tmp_path / "data"), "--results-dir", str(tmp_path / "r")]
    argv += ["--no-progress", "--no-leaderboard", "--seeds", "0", "--epochs", "1", "--methods", *ML_NAMES]
    argv += ["--set", "memory_records=10"]
    assert run_all.main(argv) == 0
    recs = {r["cell"]["method"]: r for r in iter_records(tmp_path / "r", "audio-multilabel")}
    assert sorted(recs) == sorted(ML_NAMES)
    for rec in recs.values():
        assert len(rec["results"]["phases"]) == 5 and math.isfinite(rec["results"]["metrics"]["avg_mAP"])
    # ER / DER++: the phase's 6 records, each minibatch (batch 32 > 6) joined by min(32, |memory|) records
    assert [h["train_clips"] for h in recs["ml_er-bn"]["results"]["history"]] == [24, 6, 6, 6, 6]


@pytest.mark.parametrize("name", ["ml_ewc-bn", "ml_derpp-bn"])
def test_multilabel_resume_after_a_phase_trains_the_next_phase_identically(name, tmp_path):
    import io

    from benchmarks.run.cell import GridContext
    from benchmarks.suites import get_suite
    from datasets.adapters.synth_tags import SynthTags, SynthTagsConfig

    adapter = SynthTags(SynthTagsConfig(train_base=24, train_new=6, test_base=12, test_new=4))
    ctx = GridContext(get_suite("audio-multilabel"), tmp_path, tmp_path / "r", torch.device("cpu"), progress=False)
    ctx.adapters = {"synth_tags": adapter}
    stream, store = ctx.stream("synth_tags", adapter.protocols()[0].name), ctx.store("synth_tags")
    spec = registry()[name]
    cfg = {**spec.config("synth_tags", "audio"), "epochs": 1, "batch_size": 4, "memory_records": 8}
    cfg["ewc_lambda"] = 1e6  # a strong penalty, so that a lost EWC state would show within one epoch

    def build():
        torch.manual_seed(0)
        return spec.build(modality="audio", store=store, stream=stream, cfg=cfg, device=torch.device("cpu"), seed=0)

    exps = list(stream.benchmark.train_stream)
    s = build()
    for exp in exps[:2]:
        s.train(exp, eval_streams=[])
    if name == "ml_derpp-bn":  # 8 records over 2 phases: 4 each, with their phase's recorded logits
        assert s.mem_phase.tolist() == [0] * 4 + [1] * 4 and s.mem_logits[:4, 30:].isnan().all()
        assert not s.mem_logits[4:, :35].isnan().any()
    buf = io.BytesIO()
    torch.save(s.resume_state(), buf)
    buf.seek(0)
    r = build()
    r.load_resume_state(torch.load(buf, weights_only=True))
    for strat in (s, r):
        strat.train(exps[2], eval_streams=[])
    for k, v in s.model.state_dict().items():
        torch.testing.assert_close(r.model.state_dict()[k], v)
