"""Loss terms, herding and the AV-CIL network on small tensors checked by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from benchmarks.core.memory import herding
from methods._avcil.losses import (
    double_sigmoid_distillation,
    icarl_distillation,
    sigmoid_distillation,
    taskwise_kd,
)
from methods._avcil.model import AVCILNet


def test_taskwise_kd_by_hand():
    # One sample, one old block of 2 logits, T = 2.
    # old logits (0, 0) -> q = (1/2, 1/2); new logits (2 ln 3, 0) / T = (ln 3, 0) -> p = (3/4, 1/4).
    # KL(q || p) = 1/2 ln((1/2)/(3/4)) + 1/2 ln((1/2)/(1/4)) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3);
    # times T^2 = 2 ln(4/3).
    new = torch.tensor([[2 * math.log(3), 0.0, 5.0]])
    old = torch.tensor([[0.0, 0.0]])
    got = taskwise_kd(new, old, [(0, 2)], T=2.0)
    assert got.item() == pytest.approx(2 * math.log(4 / 3), rel=1e-6)


def test_taskwise_kd_sums_blocks_and_is_batch_mean():
    # Two blocks; the second block matches exactly (KL 0); the batch holds the same sample twice.
    new = torch.tensor([[2 * math.log(3), 0.0, 1.0, 2.0]] * 2)
    old = torch.tensor([[0.0, 0.0, 1.0, 2.0]] * 2)
    got = taskwise_kd(new, old, [(0, 2), (2, 4)], T=2.0)
    assert got.item() == pytest.approx(2 * math.log(4 / 3), rel=1e-6)


def test_taskwise_kd_softmax_is_within_block():
    # Shifting a whole block by a constant changes nothing (softmax per block), shifting one logit does.
    new = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert taskwise_kd(new, new.clone(), [(0, 2), (2, 4)]).item() == pytest.approx(0.0, abs=1e-6)
    shifted = new + torch.tensor([[10.0, 10.0, -3.0, -3.0]])
    assert taskwise_kd(shifted, new, [(0, 2), (2, 4)]).item() == pytest.approx(0.0, abs=1e-6)


def test_sigmoid_distillation_single_sigmoid_by_hand():
    # new logit 0 -> p = 1/2; old logit ln 3 -> target q = 3/4.
    # BCE = -(q ln p + (1-q) ln(1-p)) = -ln(1/2) = ln 2, whatever q is, because p = 1/2.
    assert sigmoid_distillation(torch.tensor([[0.0]]), torch.tensor([[math.log(3)]])).item() == pytest.approx(
        math.log(2)
    )
    # new logit ln 3 -> p = 3/4; old logit 0 -> q = 1/2: BCE = -(1/2 ln 3/4 + 1/2 ln 1/4) = ln 4 - 1/2 ln 3.
    got = sigmoid_distillation(torch.tensor([[math.log(3)]]), torch.tensor([[0.0]]))
    assert got.item() == pytest.approx(math.log(4) - 0.5 * math.log(3), rel=1e-6)
    # The reference's double sigmoid would give a different value: BCE-with-logits(sigmoid(ln 3), sigmoid(0)).
    double = F.binary_cross_entropy_with_logits(torch.sigmoid(torch.tensor([[math.log(3)]])), torch.tensor([[0.5]]))
    assert abs(double.item() - got.item()) > 0.05


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_reference_distillation_is_the_double_sigmoid_by_hand():
    # The reference: BCE-with-logits(sigmoid(z), sigmoid(z_old)), i.e. p = sigmoid(sigmoid(z)), q = sigmoid(z_old),
    # l = -(q ln p + (1 - q) ln(1 - p)), mean over samples and old classes. z = 0, z_old = 0: p = sigmoid(1/2),
    # q = 1/2: l = 1/2 (ln(1 + e^-1/2) + ln(1 + e^1/2)).
    got = double_sigmoid_distillation(torch.tensor([[0.0]]), torch.tensor([[0.0]]))
    assert got.item() == pytest.approx(0.5 * (math.log1p(math.exp(-0.5)) + math.log1p(math.exp(0.5))), rel=1e-6)
    # 2 samples x 3 old classes, against the formula computed directly in Python floats.
    z = [[2.0, -1.0, 0.5], [-3.0, 4.0, 0.0]]
    z_old = [[1.0, 0.0, -2.0], [0.5, 3.0, -1.0]]
    terms = [
        -(sig(b) * math.log(sig(sig(a))) + (1 - sig(b)) * math.log(1 - sig(sig(a))))
        for ra, rb in zip(z, z_old)
        for a, b in zip(ra, rb)
    ]
    expected = sum(terms) / len(terms)
    reference = icarl_distillation(torch.tensor(z), torch.tensor(z_old), "reference")
    assert reference.item() == pytest.approx(expected, rel=1e-6)
    # ... and exactly the reference's torch call.
    direct = F.binary_cross_entropy_with_logits(torch.sigmoid(torch.tensor(z)), torch.sigmoid(torch.tensor(z_old)))
    assert torch.equal(reference, direct)
    # The default is the single sigmoid, unchanged: p = sigmoid(z).
    single = [
        -(sig(b) * math.log(sig(a)) + (1 - sig(b)) * math.log(1 - sig(a)))
        for ra, rb in zip(z, z_old)
        for a, b in zip(ra, rb)
    ]
    default = icarl_distillation(torch.tensor(z), torch.tensor(z_old))
    assert default.item() == pytest.approx(sum(single) / len(single), rel=1e-6)
    assert torch.equal(default, sigmoid_distillation(torch.tensor(z), torch.tensor(z_old)))
    assert torch.equal(icarl_distillation(torch.tensor(z), torch.tensor(z_old), "single-sigmoid"), default)
    with pytest.raises(ValueError, match="single-sigmoid"):
        icarl_distillation(torch.tensor(z), torch.tensor(z_old), "double")


def test_reference_distillation_gradient_is_the_chain_through_two_sigmoids():
    # d/dz of BCE-with-logits(u, q) at u = sigmoid(z) is (sigmoid(u) - q) * sigmoid'(z), sigmoid'(z) = s (1 - s).
    z = torch.tensor([[0.7, -1.2]], requires_grad=True)
    z_old = torch.tensor([[0.3, 2.0]])
    double_sigmoid_distillation(z, z_old).backward()
    for j in range(2):
        s, q = sig(z[0, j].item()), sig(z_old[0, j].item())
        assert z.grad[0, j].item() == pytest.approx((sig(s) - q) * s * (1 - s) / 2, rel=1e-5)


def test_herding_picks_by_hand_and_never_repeats():
    # Points on a line: mean 1.0. k=1 picks the point closest to the mean (1.0);
    # k=2: running sum 1.0, candidates (1+x)/2 closest to 1 -> x = 1.0 again would be best but is taken,
    # so the next closest is 0.9 or 1.2: |1 - 1.9/2| = 0.05, |1 - 2.2/2| = 0.1 -> 0.9.
    x = torch.tensor([[0.0], [0.9], [1.0], [1.2], [1.9]])
    picked = herding(x, 3)
    assert picked[:2].tolist() == [2, 1]
    assert len(set(herding(x, 5).tolist())) == 5
    assert len(herding(x, 10)) == 5  # never more than the class has


def test_av_attention_is_normalised_and_pools_raw_tokens():
    torch.manual_seed(0)
    net = AVCILNet("audio-visual", audio_dim=3, visual_dim=4, num_classes=2)
    audio, visual = torch.randn(5, 3), torch.randn(5, 2, 6, 4)
    out = net({"audio": audio, "visual": visual})
    assert out["spatial_attention"].shape == (5, 2, 6, 4)
    assert out["temporal_attention"].shape == (5, 2, 4)
    torch.testing.assert_close(out["spatial_attention"].sum(2), torch.ones(5, 2, 4))
    torch.testing.assert_close(out["temporal_attention"].sum(1), torch.ones(5, 4))
    # pooled = sum_t beta sum_k alpha V over the raw tokens
    expected = (out["temporal_attention"] * (out["spatial_attention"] * visual).sum(2)).sum(1)
    torch.testing.assert_close(out["pooled_visual"], expected)
    torch.testing.assert_close(out["features"], F.relu(net.audio_proj(audio)) + F.relu(net.visual_proj(expected)))


def test_visual_only_uses_token_mean_and_audio_only_the_vector():
    torch.manual_seed(0)
    vnet = AVCILNet("visual", audio_dim=3, visual_dim=4, num_classes=2)
    visual = torch.randn(2, 2, 3, 4)
    torch.testing.assert_close(vnet({"visual": visual})["features"], F.relu(vnet.visual_proj(visual.mean((1, 2)))))
    anet = AVCILNet("audio", audio_dim=3, visual_dim=4, num_classes=2)
    audio = torch.randn(2, 3)
    torch.testing.assert_close(anet({"audio": audio})["logits"], anet.classifier(F.relu(anet.audio_proj(audio))))


def test_expand_classifier_keeps_old_rows():
    net = AVCILNet("audio", audio_dim=3, visual_dim=3, num_classes=2)
    w, b = net.classifier.weight.detach().clone(), net.classifier.bias.detach().clone()
    net.expand_classifier(5)
    assert net.num_classes == 5
    torch.testing.assert_close(net.classifier.weight[:2], w)
    torch.testing.assert_close(net.classifier.bias[:2], b)
    with pytest.raises(ValueError):
        net.expand_classifier(3)
