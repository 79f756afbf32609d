"""The pretrained-feature baselines (simplecil, ranpac, fecam, slca): each closed-form step on hand-checkable
tensors, the pooling and fusion of the frozen views, and resume after a step."""

import io

import pytest
import torch
import torch.nn.functional as F

from benchmarks.core.streams import build_stream
from methods import registry
from methods._frozen.model import FrozenPooling
from methods.fecam.strategy import correlation_normalise, mahalanobis, shrink_covariance
from methods.ranpac.strategy import ridge_grid, ridge_weights, select_ridge
from methods.simplecil.strategy import PrototypeHead
from methods.slca.strategy import class_gaussians, gaussian_samples, mean_factors, step_normalised_logits

BASELINES = ("simplecil", "ranpac", "fecam", "slca")


def make_strategy(name, modality, store, stream, **overrides):
    spec = registry()[name]
    cfg = spec.config("toy", modality, {"epochs": 2})
    cfg.update(batch_size=8, eval_batch_size=16, memory=12, **overrides)
    return spec.build(
        modality=modality, store=store, stream=stream, cfg=cfg, device=torch.device("cpu"), seed=0, progress=False
    )


def test_feature_baselines_are_registered_as_their_family():
    reg = registry("audio-visual")
    for name in BASELINES:
        assert reg[name].family == "feature-baseline"
        assert reg[name].modalities == ("audio", "visual", "audio-visual")


# ---------------------------------------------------------------------------------------------- pooling and fusion
def test_pooling_and_fusion_of_the_frozen_views():
    audio = torch.tensor([[3.0, 4.0]])
    visual = torch.tensor([[[[1.0, 0.0], [3.0, 0.0]], [[0.0, 2.0], [0.0, 6.0]]]])  # (B, T=2, P=2, D=2)
    views = {"audio": audio, "visual": visual}
    # mean over frames x tokens: (1, 2) -> L2 (1, 2)/sqrt(5); max: (3, 6) -> (1, 2)/sqrt(5) as well; raw differs
    av = FrozenPooling("audio-visual", 2, 2, "mean", "l2")(views)
    s5 = 5**0.5
    torch.testing.assert_close(av, torch.tensor([[0.6, 0.8, 1 / s5, 2 / s5]]))
    assert FrozenPooling("audio-visual", 2, 2, "mean", "l2").feature_dim == 4
    torch.testing.assert_close(FrozenPooling("visual", 2, 2, "mean", "none")(views), torch.tensor([[1.0, 2.0]]))
    torch.testing.assert_close(FrozenPooling("visual", 2, 2, "max", "none")(views), torch.tensor([[3.0, 6.0]]))
    torch.testing.assert_close(FrozenPooling("audio", 2, 2, "mean", "none")(views), audio)
    with pytest.raises(Exception, match="view_norm"):
        FrozenPooling("audio", 2, 2, "mean", "l1")


# ---------------------------------------------------------------------------------------------- SimpleCIL
def test_simplecil_predicts_the_prototype_of_highest_cosine():
    head = PrototypeHead(2, 2)
    head.weight.data = torch.tensor([[2.0, 0.0], [1.0, 1.0]])  # prototypes: angles 0 and 45 degrees
    x = torch.tensor([[1.0, 0.1], [0.1, 1.0], [5.0, 4.0]])  # angles ~6, ~84, ~39 degrees
    s2 = 2**0.5
    expected = torch.tensor([[1 / 1.01**0.5, 1.1 / s2 / 1.01**0.5], [0.1 / 1.01**0.5, 1.1 / s2 / 1.01**0.5]])
    torch.testing.assert_close(head(x)[:2], expected)
    assert head(x).argmax(1).tolist() == [0, 1, 1]
    head.expand(3)
    assert head.num_classes == 3 and head.weight[:2].tolist() == [[2.0, 0.0], [1.0, 1.0]]


def test_simplecil_prototypes_are_the_class_means_of_the_pooled_features(toy_store, toy_protocol):
    stream = build_stream(toy_store, toy_protocol)
    s = make_strategy("simplecil", "audio-visual", toy_store, stream)
    for exp in stream.benchmark.train_stream:
        s.train(exp, eval_streams=[])
    rows, targets = stream.seen("train", 2)
    feats = s.pooled_features(rows)
    for c in range(6):
        torch.testing.assert_close(s.model.head.weight[c], feats[targets == c].mean(0))
    test_rows, _ = stream.seen("test", 2)
    direct = (F.normalize(s.pooled_features(test_rows), dim=1) @ F.normalize(s.model.head.weight, dim=1).T).argmax(1)
    assert s.predict_rows(test_rows).tolist() == direct.tolist()
    assert [h["best_val_epoch"] for h in s.history] == [1, 1, 1]  # the one statistics pass per step


# ---------------------------------------------------------------------------------------------- RanPAC
def test_ranpac_ridge_solution_matches_a_direct_solve():
    g = torch.Generator().manual_seed(0)
    h = torch.rand(5, 8, generator=g, dtype=torch.float64)  # fewer samples than M: G is rank-deficient
    gram, q = h.T @ h, h.T @ F.one_hot(torch.tensor([0, 1, 2, 0, 1]), 3).double()
    for ridge in (1e-6, 1e-2, 1.0, 1e4):
        direct = torch.linalg.solve(gram + ridge * torch.eye(8, dtype=torch.float64), q)
        torch.testing.assert_close(ridge_weights(gram, q, ridge), direct, rtol=1e-6, atol=1e-8)
    # a matrix whose Cholesky factorisation fails takes the LU path and still solves the system
    indefinite = torch.diag(torch.tensor([-1.0, 2.0, 3.0], dtype=torch.float64))
    rhs = torch.ones(3, 1, dtype=torch.float64)
    torch.testing.assert_close(ridge_weights(indefinite, rhs, 0.5), torch.tensor([[-2.0], [0.4], [1 / 3.5]]).double())


def test_ranpac_lambda_is_the_grid_value_of_least_val_mse():
    g = torch.Generator().manual_seed(1)
    h = torch.rand(40, 6, generator=g, dtype=torch.float64)
    w_true = torch.randn(6, 3, generator=g, dtype=torch.float64)
    gram, q = h.T @ h, h.T @ (h @ w_true)  # noise-free targets: the least-squares W is exact
    h_val = torch.rand(10, 6, generator=g, dtype=torch.float64)
    ridges = ridge_grid(-8, 8)
    assert len(ridges) == 17 and ridges[0] == 1e-8 and ridges[-1] == 1e8
    # val targets that the exact W fits: the smallest lambda wins; all-zero targets: the largest (W -> 0) wins
    for y_val, expected in ((h_val @ w_true, 0), (torch.zeros(10, 3, dtype=torch.float64), 16)):
        best, w, losses = select_ridge(gram, q, h_val, y_val, ridges)
        direct = [F.mse_loss(h_val @ torch.linalg.solve(gram + r * torch.eye(6).double(), q), y_val) for r in ridges]
        torch.testing.assert_close(losses, torch.stack(direct))
        assert best == int(torch.argmin(torch.stack(direct))) == expected
        torch.testing.assert_close(w, ridge_weights(gram, q, float(ridges[best])))


def test_ranpac_accumulates_gram_and_prototypes_over_steps(toy_store, toy_protocol):
    stream = build_stream(toy_store, toy_protocol)
    s = make_strategy("ranpac", "audio", toy_store, stream, rp_dim=32)
    for exp in stream.benchmark.train_stream:
        s.train(exp, eval_streams=[])
    rows, targets = stream.seen("train", 2)
    h = s.model.head.project(s.pooled_features(rows)).double()
    torch.testing.assert_close(s.model.head.gram, h.T @ h)
    torch.testing.assert_close(s.model.head.prototypes, h.T @ F.one_hot(targets, 6).double())
    ridge = s.step_report()["ridge"]
    direct = torch.linalg.solve(s.model.head.gram + ridge * torch.eye(32).double(), s.model.head.prototypes)
    torch.testing.assert_close(s.model.head.weight, direct.T.float())
    assert ridge in ridge_grid(-8, 8).tolist()


# ---------------------------------------------------------------------------------------------- FeCAM
def test_fecam_distance_on_a_hand_computed_example():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    cov = torch.cov(x.T)  # by hand: mean (2/3, 2/3); S = [[1/3, -1/6], [-1/6, 1/3]]
    torch.testing.assert_close(cov, torch.tensor([[1 / 3, -1 / 6], [-1 / 6, 1 / 3]], dtype=torch.float64))
    # gamma_1 = gamma_2 = 1: + mean variance 1/3 on the diagonal, + mean off-diagonal -1/6 off it
    shrunk = shrink_covariance(cov, 1.0, 1.0)
    torch.testing.assert_close(shrunk, torch.tensor([[2 / 3, -1 / 3], [-1 / 3, 2 / 3]], dtype=torch.float64))
    corr = correlation_normalise(shrunk)  # sd = sqrt(2/3): [[1, -1/2], [-1/2, 1]], inverse (4/3) [[1, 1/2], [1/2, 1]]
    torch.testing.assert_close(corr, torch.tensor([[1.0, -0.5], [-0.5, 1.0]], dtype=torch.float64))
    precision = torch.linalg.inv(corr)[None]
    mean = x.mean(0, keepdim=True)
    queries = mean + torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(mahalanobis(queries, mean, precision)[:, 0], torch.tensor([4 / 3, 4.0, 4 / 3]).double())
    # the reference's ViT default gamma_2 = 0 leaves the off-diagonal alone
    torch.testing.assert_close(shrink_covariance(cov, 1.0, 0.0), cov + torch.eye(2).double() / 3)


def test_fecam_head_matches_a_direct_computation(toy_store, toy_protocol):
    stream = build_stream(toy_store, toy_protocol)
    s = make_strategy("fecam", "visual", toy_store, stream, shrink_diag=0.5, shrink_offdiag=0.25)
    for exp in list(stream.benchmark.train_stream)[:2]:
        s.train(exp, eval_streams=[])
    rows, targets = stream.seen("train", 1)
    train = F.normalize(s.pooled_features(rows), dim=1).double()
    test_rows, _ = stream.seen("test", 1)
    x = F.normalize(s.pooled_features(test_rows), dim=1).double()
    d = train.shape[1]
    distances = []
    for c in range(4):
        xc = train[targets == c]
        mu = xc.mean(0)
        cov = (xc - mu).T @ (xc - mu) / (len(xc) - 1)
        off = [cov[i, j] for i in range(d) for j in range(d) if i != j and cov[i, j] != 0]
        shrunk = cov + 0.5 * torch.diagonal(cov).mean() * torch.eye(d).double()
        shrunk = shrunk + 0.25 * (sum(off) / len(off)) * (1 - torch.eye(d).double())
        corr = shrunk.clone()  # correlation normalisation, entry by entry
        for i in range(d):
            for j in range(d):
                corr[i, j] = shrunk[i, j] / (shrunk[i, i] * shrunk[j, j]).sqrt()
        p = torch.linalg.inv(corr.double())
        distances.append(torch.stack([(v - mu) @ p @ (v - mu) for v in x]))
    direct = torch.stack(distances, 1)
    torch.testing.assert_close(-s.model.head(s.pooled_features(test_rows)).double(), direct, rtol=1e-4, atol=1e-4)
    assert s.predict_rows(test_rows).tolist() == direct.argmin(1).tolist()


# ---------------------------------------------------------------------------------------------- SLCA
def test_slca_alignment_samples_have_the_class_statistics():
    means = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]], dtype=torch.float64)
    a = torch.tensor([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.2, -0.3, 0.7]], dtype=torch.float64)
    covs = torch.stack([a @ a.T, torch.diag(torch.tensor([0.25, 4.0, 1.0], dtype=torch.float64))])
    x, y = gaussian_samples(means, covs, 20000, torch.Generator().manual_seed(0))
    assert x.shape == (40000, 3) and x.dtype == torch.float32 and y.tolist() == [0] * 20000 + [1] * 20000
    for c in range(2):
        xc = x[y == c].double()
        torch.testing.assert_close(xc.mean(0), means[c], atol=0.05, rtol=0)
        torch.testing.assert_close(torch.cov(xc.T), covs[c], atol=0.1, rtol=0.05)
    again, _ = gaussian_samples(means, covs, 20000, torch.Generator().manual_seed(0))
    assert torch.equal(x, again)  # reproducible from the per-step seed


def test_slca_class_statistics_mean_factors_and_logit_norm():
    feats = torch.tensor([[1.0, 2.0], [3.0, 2.0], [0.0, 0.0], [2.0, 4.0], [4.0, 0.0]])
    targets = torch.tensor([5, 5, 6, 6, 6])
    means, covs = class_gaussians(feats, targets, range(5, 7), eps=1e-4)
    torch.testing.assert_close(means, torch.tensor([[2.0, 2.0], [2.0, 4 / 3]]).double())
    eye = torch.eye(2).double() * 1e-4
    torch.testing.assert_close(covs[0], torch.tensor([[2.0, 0.0], [0.0, 0.0]]).double() + eye)
    torch.testing.assert_close(covs[1], torch.cov(feats[2:].T.double()) + eye)
    # 0.9 + 0.1 (t_c + 1)/(t + 1) after step t = 2 (slca.py:201-202)
    torch.testing.assert_close(
        mean_factors(torch.tensor([0, 1, 2]), 2, 0.1), torch.tensor([0.9 + 0.1 / 3, 0.9 + 0.2 / 3, 1.0]).double()
    )
    logits = torch.tensor([[3.0, 4.0, 6.0, 8.0]])  # step norms 5 and 10, mean 7.5; tau 0.1 -> divide by 0.75
    torch.testing.assert_close(step_normalised_logits(logits, [(0, 2), (2, 4)], 0.1), logits / 0.75)


def test_slca_slow_projections_frozen_old_rows_and_alignment(toy_store, toy_protocol):
    stream = build_stream(toy_store, toy_protocol)
    s = make_strategy("slca", "audio-visual", toy_store, stream, ca_samples_per_class=32)
    exps = list(stream.benchmark.train_stream)
    s.train(exps[0], eval_streams=[])
    lrs0 = [g["lr"] for g in s.optimizer.param_groups]
    head0 = {k: v.clone() for k, v in s.head_before_alignment.items()}
    torch.testing.assert_close(s.model.classifier.weight, head0["weight"])  # no alignment after step 0
    s.train(exps[1], eval_streams=[])
    assert lrs0 == [1e-3, 1e-3] and [g["lr"] for g in s.optimizer.param_groups] == [1e-5, 1e-3]
    # the slow learner never moved the old classes' rows; the alignment did, and is kept apart from them
    torch.testing.assert_close(s.head_before_alignment["weight"][:2], head0["weight"])
    assert not torch.allclose(s.model.classifier.weight[:2], head0["weight"])
    assert s.stat_means.shape == (4, s.model.feature_dim) and s.stat_covs.shape[0] == 4
    # the next step trains on from the classifier before the alignment (reference `fc.recall()`)
    before = {k: v.clone() for k, v in s.head_before_alignment.items()}
    s.train(exps[2], eval_streams=[])
    torch.testing.assert_close(s.head_before_alignment["weight"][:4], before["weight"])


# ---------------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("name", BASELINES)
def test_a_resumed_run_equals_an_uninterrupted_one(name, toy_store, toy_protocol):
    stream = build_stream(toy_store, toy_protocol)
    opts = {"rp_dim": 32} if name == "ranpac" else {"ca_samples_per_class": 32} if name == "slca" else {}
    exps = list(stream.benchmark.train_stream)
    torch.manual_seed(0)
    whole = make_strategy(name, "audio-visual", toy_store, stream, **opts)
    for exp in exps:
        whole.train(exp, eval_streams=[])
    torch.manual_seed(0)
    first = make_strategy(name, "audio-visual", toy_store, stream, **opts)
    for exp in exps[:2]:
        first.train(exp, eval_streams=[])
    buf = io.BytesIO()
    torch.save(first.resume_state(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    torch.manual_seed(123)  # a new process: another global RNG state
    resumed = make_strategy(name, "audio-visual", toy_store, stream, **opts)
    resumed.load_resume_state(state)
    resumed.train(exps[2], eval_streams=[])
    for k, v in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, msg=f"{name}: {k}")
    rows, _ = stream.seen("test", 2)
    assert resumed.predict_rows(rows).tolist() == whole.predict_rows(rows).tolist()
    assert resumed.history == whole.history


@pytest.mark.parametrize("name", BASELINES)
def test_every_key_read_is_configured_for_synth_av(name):
    spec = registry()[name]
    for modality in spec.modalities:
        spec.check_config({**spec.config("synth_av", modality), "memory": 120}, "synth_av")
