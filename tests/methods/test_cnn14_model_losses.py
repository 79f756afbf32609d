"""CNN14 (shapes, growth, pretrained weights), the BN/GN/CN variants' train/eval behaviour, and every loss term by "
"hand."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from benchmarks.core.protocols import Protocol
from benchmarks.suites.multilabel import masked_bce, scalar_pos_weight
from methods._cnn14.losses import adaptive_lambda, feature_cosine, kd_kl
from methods._cnn14.model import CNN14, ContinualNorm, ConvBlock, groups_for, load_pretrained
from methods.ml_indl.strategy import MLIndL

SMALL = (4, 8, 16, 32, 64, 128)


# ----------------------------------------------------------------------------- model
def test_reference_cnn14_shapes():
    m = CNN14(30).eval()
    with torch.no_grad():
        out = m(torch.randn(1, 1001, 64))
    assert out["z"].shape == (1, 2048, 15, 1) and out["features"].shape == (1, 2048) and out["logits"].shape == (1, 30)
    assert [b.conv1.out_channels for b in m.blocks()] == [64, 128, 256, 512, 1024, 2048]
    assert isinstance(m.bn0, torch.nn.BatchNorm2d) and m.bn0.num_features == 64


def test_small_inputs_stop_pooling_at_length_one():
    m = CNN14(5, widths=SMALL).eval()
    with torch.no_grad():
        out = m({"logmel": torch.randn(3, 33, 64)})
    assert out["z"].shape == (3, 128, 1, 1) and out["logits"].shape == (3, 5)


def test_expand_classifier_keeps_old_rows():
    m = CNN14(30, widths=SMALL)
    w, b = m.fc.weight.detach().clone(), m.fc.bias.detach().clone()
    m.expand_classifier(35)
    assert m.num_classes == 35 and torch.equal(m.fc.weight[:30], w) and torch.equal(m.fc.bias[:30], b)
    with pytest.raises(ValueError):
        m.expand_classifier(10)


def test_groups():
    assert groups_for(4) == 4 and groups_for(64) == 32 and groups_for(2048) == 32
    with pytest.raises(ValueError):
        groups_for(48)


def test_pretrained_weights_report_missing_and_unexpected_keys(tmp_path):
    src = CNN14(527, widths=SMALL)
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("fc.")}
    state.update(
        {
            "fc1.weight": torch.zeros(128, 128),
            "fc_audioset.weight": torch.zeros(527, 128),
            "spectrogram_extractor.stft.conv_real.weight": torch.zeros(513, 1, 1024),
            "bn0.weight": torch.full((64,), 2.0),
        }
    )
    torch.save({"model": state, "iteration": 100}, tmp_path / "panns.pth")
    m = CNN14(30, widths=SMALL)
    report = load_pretrained(m, str(tmp_path / "panns.pth"))
    assert report["missing"] == ["fc.bias", "fc.weight"]
    assert {"fc1.weight", "fc_audioset.weight", "spectrogram_extractor.stft.conv_real.weight"} <= set(
        report["unexpected"]
    )
    assert torch.equal(m.bn0.weight, torch.full((64,), 2.0)) and torch.equal(
        m.conv_block3.conv2.weight, src.conv_block3.conv2.weight
    )
    cn = CNN14(30, widths=SMALL, norm="cn")
    r = load_pretrained(cn, str(tmp_path / "panns.pth"))
    assert "conv_block1.bn1.bn.weight" in r["missing"] and "conv_block1.bn1.weight" in r["unexpected"]


# ----------------------------------------------------------------------------- normalisation variants
def _block(norm):
    torch.manual_seed(0)
    return ConvBlock(1, 8, norm)


@pytest.mark.parametrize("norm", ["bn", "gn", "cn"])
def test_norm_variants_train_and_eval(norm):
    blk = _block(norm)
    x = torch.randn(6, 1, 8, 8) * 3 + 1
    running = [m for m in blk.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    blk.train()
    y_train = blk(x)
    blk.eval()
    y_eval = blk(x)
    if norm == "gn":
        assert not running and not [b for b in blk.buffers()]  # no running statistics at all
        assert torch.allclose(y_train, y_eval)  # train and test behave the same
    else:
        assert len(running) == 2 and [int(r.num_batches_tracked) for r in running] == [1, 1]  # train mode updates them
        assert not torch.equal(running[1].running_var, torch.ones(8))
        assert not torch.allclose(y_train, y_eval, atol=1e-4)  # batch statistics vs running statistics
        snap = running[1].running_var.clone()
        blk(x)
        assert (
            torch.equal(snap, running[1].running_var) and int(running[0].num_batches_tracked) == 1
        )  # eval leaves them alone


def test_continual_norm_is_groupnorm_without_affine_then_batchnorm():
    cn = ContinualNorm(8, groups=4).train()
    assert not list(cn.gn.parameters()) and cn.gn.num_groups == 4 and cn.bn.affine
    with torch.no_grad():
        cn.bn.weight.uniform_(0.5, 2)
        cn.bn.bias.uniform_(-1, 1)
    x = torch.randn(5, 8, 3, 3) * 2 + 3
    want = F.batch_norm(F.group_norm(x, 4), None, None, cn.bn.weight, cn.bn.bias, training=True)
    assert torch.allclose(cn(x), want, atol=1e-5)
    gn_block = ConvBlock(1, 8, "gn")
    assert isinstance(gn_block.bn1, torch.nn.GroupNorm) and gn_block.bn1.affine and gn_block.bn1.num_groups == 8


# ----------------------------------------------------------------------------- loss terms
def test_scalar_pos_weight():
    y = torch.tensor([[1.0, 0, 0], [0, 1, 0]])
    assert scalar_pos_weight(y) == 2.0  # 4 zeros / 2 ones
    assert scalar_pos_weight(y, torch.tensor([[1, 0, 0], [1, 0, 0]], dtype=torch.bool)) == 1.0
    assert scalar_pos_weight(torch.zeros(2, 2)) == 1.0


def test_masked_bce_by_hand():
    z, y = torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 0.0]])
    assert math.isclose(float(masked_bce(z, y, 3.0)), (3 * math.log(2) + math.log(1 + math.e**2)) / 2, rel_tol=1e-6)
    assert math.isclose(float(masked_bce(z, y, 3.0, torch.tensor([[True, False]]))), 3 * math.log(2), rel_tol=1e-6)


def test_unmasked_bce_has_the_reference_loss_gradient_to_the_last_bit():
    """The reference trains with BCEWithLogitsLoss(pos_weight) (CIL-ML-Audio main_audioset.py:96). Its fused mean
    and `reduction="none"` + `.mean()` agree in value but not in the last bit of the gradient, which phase-0
    training amplifies into seeds several points apart (README, "Fidelity")."""
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        logits, y = torch.randn(32, 30, generator=g) * 3, (torch.rand(32, 30, generator=g) < 0.1).float()
        ours, ref = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        masked_bce(ours, y, 4.7).backward()
        torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(4.7))(ref, y).backward()
        assert torch.equal(ours.grad, ref.grad)


def test_kd_kl_by_hand_batchmean_and_reference_mean():
    T = 2.0
    student = torch.zeros(2, 2)
    teacher = torch.tensor([[2 * math.log(3), 0.0]] * 2)  # softmax(teacher / T) = (3/4, 1/4); student (1/2, 1/2)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert math.isclose(float(kd_kl(student, teacher, T, "batchmean")), T * T * kl, rel_tol=1e-5)
    assert math.isclose(float(kd_kl(student, teacher, T, "mean")), T * T * kl / 2, rel_tol=1e-5)  # / |C_old|
    assert float(kd_kl(teacher, teacher, T)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        kd_kl(student, teacher, T, "sum")


def test_feature_cosine_per_sample_and_whole_batch():
    zs, zt = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert math.isclose(float(feature_cosine(zs, zt, "per_sample")), 1 - (1 + 0) / 2, rel_tol=1e-6)
    assert math.isclose(float(feature_cosine(zs, zt, "batch")), 1 - 2 / math.sqrt(10), rel_tol=1e-6)
    assert float(feature_cosine(zs.view(2, 2, 1, 1), zs.view(2, 2, 1, 1) * 5)) == pytest.approx(0.0, abs=1e-6)


def test_adaptive_lambda_matches_the_reference_values():
    assert [round(adaptive_lambda(30 + 5 * t, 5), 2) for t in range(1, 5)] == [18.06, 19.72, 21.32, 22.85]


def _indl(step, cfg_over=None):
    s = object.__new__(MLIndL)  # the loss needs only these attributes
    s.cfg = {
        "w_cls": 1.0,
        "w_kd": 1.0,
        "w_fd": 1.0,
        "kd_temperature": 2.0,
        "kd_lambda_base": 5.0,
        "kd_lambda_power": 0.66,
        "kd_reduction": "mean",
        "fd_mode": "batch",
        **(cfg_over or {}),
    }
    s.stream = SimpleNamespace(protocol=Protocol("p", tuple(range(40)), (30, 5, 5)), seen=lambda t: (30, 35, 40)[t])
    s.step_index, s.pos_weight = step, 2.0
    return s


def test_indl_total_loss_is_the_sum_of_its_terms():
    torch.manual_seed(0)
    out = {"logits": torch.randn(4, 35), "z": torch.randn(4, 8, 2, 1)}
    teacher = {"logits": torch.randn(4, 30), "z": torch.randn(4, 8, 2, 1)}
    y = torch.zeros(4, 35)
    y[:, 30:] = (torch.rand(4, 5) > 0.5).float()
    s = _indl(1)
    s._teacher = teacher
    total = s.loss_fn(out, y, None)
    lam = 5.0 * (35 / 5) ** 0.66
    want = (
        masked_bce(out["logits"][:, 30:], y[:, 30:], 2.0)
        + feature_cosine(out["z"], teacher["z"])
        + lam * kd_kl(out["logits"][:, :30], teacher["logits"], 2.0)
    )
    assert torch.allclose(total, want)
    # independent learning: the old outputs get no BCE gradient, only distillation
    logits = out["logits"].clone().requires_grad_(True)
    s._teacher = {
        "logits": logits.detach()[:, :30].clone(),
        "z": out["z"],
    }  # teacher = student: KD and FD gradients vanish
    s.loss_fn({"logits": logits, "z": out["z"]}, y, None).backward()
    assert logits.grad[:, :30].abs().max() < 1e-6 and logits.grad[:, 30:].abs().max() > 0
    # phase 0: BCE over the 30 base outputs only
    s0 = _indl(0)
    y0 = (torch.rand(4, 30) > 0.8).float()
    assert torch.allclose(
        s0.loss_fn({"logits": out["logits"][:, :30]}, y0, None), masked_bce(out["logits"][:, :30], y0, 2.0)
    )
    # the per-sample reductions (ml_indl-persample) are selectable
    per_sample = _indl(1, {"kd_reduction": "batchmean", "fd_mode": "per_sample"})
    per_sample._teacher = teacher
    want = (
        masked_bce(out["logits"][:, 30:], y[:, 30:], 2.0)
        + feature_cosine(out["z"], teacher["z"], "per_sample")
        + lam * kd_kl(out["logits"][:, :30], teacher["logits"], 2.0, "batchmean")
    )
    assert torch.allclose(per_sample.loss_fn(out, y, None), want)


def test_fine_tuning_takes_unlabelled_columns_as_negatives_and_joint_masks_them():
    from methods.ml_fine_tuning.strategy import MLFineTuning
    from methods.ml_joint.strategy import MLJoint

    z = torch.tensor([[3.0, -1.0, 0.5]])
    y = torch.tensor([[0.0, 0.0, 1.0]])
    mask = torch.tensor([[False, False, True]])
    ft, joint = object.__new__(MLFineTuning), object.__new__(MLJoint)
    ft.pos_weight = joint.pos_weight = 1.5
    assert torch.allclose(ft.loss_fn({"logits": z}, y, mask), masked_bce(z, y, 1.5))
    assert torch.allclose(joint.loss_fn({"logits": z}, y, mask), masked_bce(z[:, 2:], y[:, 2:], 1.5))


def _reference_indl_loss(logits, z, teacher_logits, teacher_z, y, pos_weight, seen, new, T=2.0):
    """The reference's phase-t loss, written out from CIL-ML-Audio main_audioset.py `_train` (ed8e0d0):
    BCE on the last `new` logits + 1 - cos(normalize(vec(z_old)), normalize(vec(z))) over the whole flattened
    batch + 5 (seen / new)^0.66 * nn.KLDivLoss() (default reduction 'mean': over batch x old classes) * T^2."""
    bce = F.binary_cross_entropy_with_logits(logits[:, -new:], y[:, -new:], pos_weight=torch.tensor(pos_weight))
    a, b = F.normalize(teacher_z.reshape(-1), dim=0), F.normalize(z.reshape(-1), dim=0)
    feat = 1 - torch.dot(a, b) / (a.norm() * b.norm())
    log_p = F.log_softmax(logits[:, :-new] / T, dim=1)
    q = F.softmax(teacher_logits / T, dim=1)
    kl = (q * (q.log() - log_p)).sum() / q.numel() * T * T
    return bce + feat + 5.0 * (seen / new) ** 0.66 * kl


@pytest.mark.parametrize("norm", ["bn", "gn", "cn"])
def test_indl_default_loss_is_the_reference_formula(norm):
    """ml_indl-<norm>'s resolved config reproduces the reference's reductions exactly; ml_indl-persample-bn keeps the
    per-sample forms (KL per clip averaged over the batch, cosine per clip)."""
    from methods import registry

    torch.manual_seed(1)
    out = {"logits": torch.randn(4, 35) * 3, "z": torch.randn(4, 8, 2, 1)}
    teacher = {"logits": torch.randn(4, 30) * 3, "z": torch.randn(4, 8, 2, 1) + 0.5}
    y = torch.zeros(4, 35)
    y[:, 30:] = (torch.rand(4, 5) > 0.5).float()
    cfg = registry()[f"ml_indl-{norm}"].config("audioset50", "audio")
    s = _indl(1, {k: cfg[k] for k in _indl(1).cfg})
    s._teacher = teacher
    want = _reference_indl_loss(out["logits"], out["z"], teacher["logits"], teacher["z"], y, 2.0, 35, 5)
    torch.testing.assert_close(s.loss_fn(out, y, None), want)

    variant = registry()["ml_indl-persample-bn"]
    vcfg = variant.config("audioset50", "audio")
    assert vcfg["norm"] == "bn" and vcfg["method"] == "ml_indl-persample" and variant.strategy is MLIndL
    v = _indl(1, {k: vcfg[k] for k in _indl(1).cfg})
    v._teacher = teacher
    lam = 5.0 * (35 / 5) ** 0.66
    kl = (
        F.softmax(teacher["logits"] / 2, 1)
        * (F.log_softmax(teacher["logits"] / 2, 1) - F.log_softmax(out["logits"][:, :30] / 2, 1))
    ).sum(1).mean() * 4
    cos = F.cosine_similarity(out["z"].flatten(1), teacher["z"].flatten(1), dim=1).mean()
    bce = masked_bce(out["logits"][:, 30:], y[:, 30:], 2.0)
    torch.testing.assert_close(v.loss_fn(out, y, None), bce + (1 - cos) + lam * kl)
