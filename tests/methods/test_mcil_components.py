"""MCIL-AudioCLIP components on small tensors: MoE routing, the fusion gate and branch, the loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from methods.mcil_audioclip.fusion import AdaptiveFusion, pearson_r
from methods.mcil_audioclip.losses import cwcl, cwcl_as_released, mcil_loss, similarity_weights
from methods.mcil_audioclip.moe import MoEAdapter, set_routing


def _make_experts_nonzero(moe: MoEAdapter, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        moe.up_weight.copy_(torch.randn(moe.up_weight.shape, generator=g))
        moe.up_bias.copy_(torch.randn(moe.up_bias.shape, generator=g))


def test_moe_outputs_zero_at_init_and_matches_hand_computed_mixture():
    torch.manual_seed(0)
    moe = MoEAdapter(
        8, n_experts=3, top_k=2, n_routers=1, bottleneck=4, scale=0.5, dropout=0.0, router_init_std=0.5
    ).eval()
    x, r = torch.randn(2, 5, 8), torch.randn(2, 8)
    assert torch.equal(moe(x, r), torch.zeros_like(x))  # zero-initialised up projections
    _make_experts_nonzero(moe)
    out = moe(x, r)
    # by hand: top-2 experts of each sample's router logits, softmax over the two kept logits
    logits = r @ moe.routers[0]
    for b in range(2):
        top = torch.argsort(logits[b], descending=True)[:2]
        g = torch.softmax(logits[b, top], 0)
        want = 0
        for w, e in zip(g, top):
            h = torch.relu(x[b] @ moe.down_weight[e] + moe.down_bias[e])
            want = want + w * (h @ moe.up_weight[e] + moe.up_bias[e])
        torch.testing.assert_close(out[b], 0.5 * want, rtol=1e-5, atol=1e-5)


def _router_grad(top_k: int) -> torch.Tensor:
    torch.manual_seed(0)
    moe = MoEAdapter(8, n_experts=4, top_k=top_k, n_routers=1, bottleneck=4, dropout=0.0, router_init_std=0.0)
    _make_experts_nonzero(moe)
    x = torch.randn(3, 5, 8)
    moe(x, x[:, 0]).pow(2).sum().backward()
    return moe.routers.grad


def test_router_gradient_is_zero_under_top1_and_nonzero_under_top2():
    assert torch.count_nonzero(_router_grad(1)) == 0  # code mode: the release's router never learns
    assert torch.count_nonzero(_router_grad(2)) > 0  # paper mode: routers learn


def test_zero_router_picks_lowest_expert_index_deterministically():
    moe = MoEAdapter(4, n_experts=5, top_k=1, router_init_std=0.0)
    idx, g = moe.gates(torch.randn(6, 4))
    assert idx.flatten().tolist() == [0] * 6 and torch.all(g == 1)


def test_per_task_routers_are_selected_per_sample():
    torch.manual_seed(1)
    moe = MoEAdapter(6, n_experts=4, top_k=2, n_routers=3, bottleneck=3, dropout=0.0, router_init_std=1.0).eval()
    _make_experts_nonzero(moe)
    x = torch.randn(4, 2, 6)
    set_routing(moe, torch.tensor([0, 1, 2, 1]))
    mixed = moe(x, x[:, 0])
    for b, t in enumerate([0, 1, 2, 1]):
        set_routing(moe, torch.tensor([t]))
        torch.testing.assert_close(mixed[b : b + 1], moe(x[b : b + 1], x[b : b + 1, 0]))
    set_routing(moe, None, enabled=False)
    assert torch.equal(moe(x, x[:, 0]), torch.zeros_like(x))


def test_pearson_r_by_hand():
    v = torch.tensor([[1.0, 2.0, 3.0], [1.0, 0.0, 1.0]])
    a = torch.tensor([[2.0, 4.0, 6.0], [0.0, 1.0, 0.0]])
    torch.testing.assert_close(pearson_r(v, a), torch.tensor([1.0, -1.0]))


def test_fusion_gate_per_sample_and_per_batch():
    v = F.normalize(torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, -1.0, 1.0, -1.0]]), dim=1)
    a = F.normalize(torch.tensor([[1.0, 2.0, 3.0, 4.1], [-1.0, 1.0, -1.0, 1.0]]), dim=1)  # r ~ 1 and r = -1
    per_sample = AdaptiveFusion(4, tau=0.5, gate="sample")
    _, info = per_sample(v, a)
    assert info["fired"].tolist() == [True, False]
    per_batch = AdaptiveFusion(4, tau=0.5, gate="batch")  # mean r ~ 0 < 0.5: nothing fires
    f, info = per_batch(v, a)
    assert info["fired"].tolist() == [False, False]
    torch.testing.assert_close(f, v)  # the bypass: f = v


def test_fusion_branch_runs_trains_and_starts_as_identity():
    torch.manual_seed(0)
    fusion = AdaptiveFusion(16, tau=0.8, gate="batch")
    v, a = F.normalize(torch.randn(5, 16), dim=1), F.normalize(torch.randn(5, 16), dim=1)
    f, info = fusion(v, a, force=True)
    assert info["fired"].all()
    torch.testing.assert_close(f, v)  # zero-initialised last layer: identity on v at the start
    f.pow(3).sum().backward()
    assert fusion.mlp[2].weight.grad.abs().sum() > 0  # the branch is in the graph
    with torch.no_grad():
        fusion.mlp[2].weight.normal_()
    f2, _ = fusion(v, a, force=True)
    assert not torch.allclose(f2, v)
    # the branch depends on the audio
    f3, _ = fusion(v, F.normalize(torch.randn(5, 16), dim=1), force=True)
    assert not torch.allclose(f2, f3)


def test_released_weighting_equals_plain_ce():
    torch.manual_seed(0)
    logits, y, v = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1]), torch.randn(6, 8)
    torch.testing.assert_close(cwcl_as_released(logits, y, v), F.cross_entropy(logits, y))


def test_weighted_cwcl_by_hand_and_effective():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    v = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    logits = torch.cat([logits, torch.tensor([[0.5, 0.5]])])
    y = torch.tensor([0, 1, 1])
    kappa = 0.5
    # batch-centred features: v~_i = e_i - 1/3; cos(v~_i, v~_j) = -1/2 for i != j
    w = math.exp((-0.5 - 1) / kappa)
    lp = torch.log_softmax(logits, 1)
    # sample 0 (class 0): target (1, 2w)/(1+2w); samples 1, 2 (class 1): (w, 1+w)/(1+2w)
    z = 1 + 2 * w
    want = (
        -(
            (lp[0, 0] + 2 * w * lp[0, 1]) / z
            + (w * lp[1, 0] + (1 + w) * lp[1, 1]) / z
            + (w * lp[2, 0] + (1 + w) * lp[2, 1]) / z
        )
        / 3
    )
    torch.testing.assert_close(cwcl(logits, y, v, kappa), want)
    assert not torch.isclose(cwcl(logits, y, v, kappa), F.cross_entropy(logits, y))  # the weighting changes the loss
    torch.testing.assert_close(similarity_weights(v, kappa).diagonal(), torch.ones(3))
    # a shared component (e.g. CLIP's common direction) does not change the weights: they use centred features
    torch.testing.assert_close(similarity_weights(v + 5.0, kappa), similarity_weights(v, kappa))


def test_weighted_cwcl_reduces_to_ce_for_dissimilar_samples_or_one_class():
    torch.manual_seed(0)
    logits = torch.randn(4, 3)
    v = torch.eye(4)  # distinct samples: off-diagonal w -> 0 as kappa -> 0
    y = torch.tensor([0, 1, 2, 0])
    torch.testing.assert_close(cwcl(logits, y, v, 1e-3), F.cross_entropy(logits, y))
    same = torch.zeros(4, dtype=torch.long)
    torch.testing.assert_close(cwcl(logits, same, torch.randn(4, 5), 0.3), F.cross_entropy(logits, same))


def test_total_loss_weights_and_mi_term():
    torch.manual_seed(0)
    logits, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    f, v, a = (F.normalize(torch.randn(4, 8), dim=1) for _ in range(3))
    cfg = {"cwcl": "released", "cwcl_kappa": 0.1, "ce_weight": 0.7, "mi_weight": 0.3}
    total, parts = mcil_loss(logits, y, f, v, a, cfg)
    torch.testing.assert_close(parts["cls"], F.cross_entropy(logits, y))
    torch.testing.assert_close(total, 0.7 * parts["cls"] + 0.3 * parts["mi"])
    with pytest.raises(ValueError):
        mcil_loss(logits, y, f, v, a, {**cfg, "cwcl": "other"})
