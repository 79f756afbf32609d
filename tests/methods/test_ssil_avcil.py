"""SS-IL and AV-CIL: every loss term on small tensors checked by hand, the exemplar-only VAD,
and end-to-end training on the toy stream."""

import math

import pytest
import torch
import torch.nn.functional as F

from benchmarks.core.streams import build_stream
from datasets.errors import ConfigError
from methods import registry
from methods._avcil.losses import attention_kl_sum, class_infonce, instance_infonce, separated_softmax_ce
from methods._avcil.model import AVCILNet
from methods.av_cil.strategy import AVCIL
from tests.methods.test_contract_smoke import make_strategy

LN2, LN3 = math.log(2), math.log(3)


# ------------------------------------------------------------------ separated-softmax CE
def test_separated_softmax_ce_two_current_one_exemplar_by_hand():
    # 2 old classes (0, 1), 2 new classes (2, 3). Rows 0-1 current, row 2 exemplar.
    logits = torch.tensor(
        [
            [9.0, 9.0, 0.0, 0.0],  # current, y=2: new block (0, 0) -> p = 1/2 -> ln 2 (the big old logits are ignored)
            [0.0, 0.0, LN3, 0.0],  # current, y=3: new block (ln 3, 0) -> p(3) = 1/4 -> ln 4
            [
                0.0,
                LN3,
                7.0,
                7.0,
            ],  # exemplar, y=0: old block (0, ln 3) -> p(0) = 1/4 -> ln 4 (the big new logits are ignored)
        ]
    )
    y = torch.tensor([2, 3, 0])
    is_old = torch.tensor([False, False, True])
    # CE_cur = (ln 2 + ln 4) / 2 = 1.5 ln 2, CE_ex = ln 4 = 2 ln 2;
    # (n_cur CE_cur + n_ex CE_ex) / (n_cur + n_ex) = (2 * 1.5 + 1 * 2) ln 2 / 3 = 5/3 ln 2,
    # not the unweighted mean of the two, (1.5 + 2) / 2 ln 2 = 1.75 ln 2.
    got = separated_softmax_ce(logits, y, is_old, old_classes=2)
    assert got.item() == pytest.approx(5 / 3 * LN2, rel=1e-6)
    assert abs(got.item() - 1.75 * LN2) > 0.05
    # the same as per-part F.cross_entropy with shifted labels
    ref = (2 * F.cross_entropy(logits[:2, 2:], y[:2] - 2) + F.cross_entropy(logits[2:, :2], y[2:])) / 3
    torch.testing.assert_close(got, ref)


def test_separated_softmax_ce_gradients_stay_in_their_block_and_labels_are_checked():
    logits = torch.zeros(3, 4, requires_grad=True)
    y, is_old = torch.tensor([2, 3, 1]), torch.tensor([False, False, True])
    separated_softmax_ce(logits, y, is_old, 2).backward()
    g = logits.grad
    assert (g[:2, :2] == 0).all() and (
        g[2, 2:] == 0
    ).all()  # current rows never touch old logits, exemplars never new ones
    assert (g[:2, 2:] != 0).all() and (g[2, :2] != 0).all()
    with pytest.raises(RuntimeError):  # an exemplar carrying a new-class label
        separated_softmax_ce(torch.zeros(2, 4), torch.tensor([2, 3]), torch.tensor([False, True]), 2)
    # no old classes: plain CE
    z = torch.tensor([[LN3, 0.0]])
    assert separated_softmax_ce(z, torch.tensor([0]), torch.tensor([False]), 0).item() == pytest.approx(math.log(4 / 3))


# ------------------------------------------------------------------ D-AVSC
def test_instance_infonce_2x2_by_hand():
    # Unit-norm after normalisation (the scale of the features is irrelevant), tau = 1 / ln 3:
    # S = diag(ln 3) -> each row softmax (3, 1) / 4 -> p(diagonal) = 3/4 -> L_I = ln(4/3).
    f_a = torch.tensor([[2.0, 0.0], [0.0, 5.0]])
    f_v = torch.tensor([[1.0, 0.0], [0.0, 0.5]])
    assert instance_infonce(f_a, f_v, tau=1 / LN3).item() == pytest.approx(math.log(4 / 3), rel=1e-6)
    # Audio-to-visual only: both audios point at visual 0: S = [[ln 3, 0], [ln 3, 0]].
    # Row 0: p(0) = 3/4 -> ln(4/3); row 1: p(1) = 1/4 -> ln 4; mean = ln 4 - ln(3)/2.
    # (The visual-to-audio direction would give S^T = [[ln 3, ln 3], [0, 0]] -> ln 2 per row.)
    f_a = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    f_v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    got = instance_infonce(f_a, f_v, tau=1 / LN3).item()
    assert got == pytest.approx(math.log(4) - LN3 / 2, rel=1e-6)
    assert abs(got - LN2) > 0.1


def test_class_infonce_both_normalisations_by_hand():
    # y = (0, 0, 1); features e1, e1, e2 in both modalities, tau = 1 / ln 3:
    # S = ln 3 * [[1,1,0],[1,1,0],[0,0,1]]; softmax rows: (3,3,1)/7, (3,3,1)/7, (1,1,3)/5.
    # Positives M = [[1,1,0],[1,1,0],[0,0,1]] (the diagonal always counts).
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    f = torch.tensor([e1, e1, e2])
    y = torch.tensor([0, 0, 1])
    # released: -(1/N^2) sum_ij M_ij log p_ij = (1/9) (4 ln(7/3) + ln(5/3))
    released = (4 * math.log(7 / 3) + math.log(5 / 3)) / 9
    # paper Eq. (7): -(1/N) sum_i (1/|P(i)|) sum_{j in P(i)} log p_ij
    #              = (1/3) ((1/2) 2 ln(7/3) + (1/2) 2 ln(7/3) + ln(5/3)) = (1/3) (2 ln(7/3) + ln(5/3))
    paper = (2 * math.log(7 / 3) + math.log(5 / 3)) / 3
    assert class_infonce(f, f, y, 1 / LN3, "released").item() == pytest.approx(released, rel=1e-6)
    assert class_infonce(f, f, y, 1 / LN3, "paper").item() == pytest.approx(paper, rel=1e-6)
    assert paper - released > 0.25  # ~0.735 vs ~0.433: the two normalisations differ
    with pytest.raises(ValueError):
        class_infonce(f, f, y, 1.0, "other")
    # with all labels distinct, "paper" reduces to the instance InfoNCE and "released" to it / N
    y_distinct = torch.tensor([0, 1, 2])
    inst = instance_infonce(f, f, 1 / LN3)
    torch.testing.assert_close(class_infonce(f, f, y_distinct, 1 / LN3, "paper"), inst)
    torch.testing.assert_close(class_infonce(f, f, y_distinct, 1 / LN3, "released"), inst / 3)


def test_similarities_stay_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    f_a, f_v, y = torch.rand(6, 8), torch.rand(6, 8), torch.tensor([0, 0, 1, 1, 2, 2])
    ref_i, ref_c = instance_infonce(f_a, f_v, 0.05), class_infonce(f_a, f_v, y, 0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got_i, got_c = instance_infonce(f_a, f_v, 0.05), class_infonce(f_a, f_v, y, 0.05)
    assert got_i.dtype == torch.float32
    torch.testing.assert_close(got_i, ref_i)
    torch.testing.assert_close(got_c, ref_c)


# ------------------------------------------------------------------ VAD
def _k():
    # KL((3/4, 1/4) || (1/2, 1/2)) = 3/4 ln(3/2) + 1/4 ln(1/2) = 3/4 ln 3 - ln 2
    return 0.75 * LN3 - LN2


def test_attention_kl_sum_spatial_and_temporal_by_hand():
    # Spatial alpha (B_e=2, T=2, P=2, D=1): distributions over P (dim 2). New: uniform everywhere.
    new = torch.full((2, 2, 2, 1), 0.5)
    old = torch.tensor([[[0.75, 0.25], [0.5, 0.5]], [[0.25, 0.75], [1.0, 0.0]]])[..., None]
    # KLs: sample 0: k + 0; sample 1: k + KL((1, 0) || uniform) = k + ln 2.
    # Sum over the 4 distributions / B_e = (2k + ln 2) / 2.
    assert attention_kl_sum(new, old).item() == pytest.approx(_k() + LN2 / 2, rel=1e-6)
    # Temporal beta (B_e=1, T=2, D=2): distributions over T (dim 1): d=0 -> (3/4, 1/4), d=1 -> uniform.
    beta_old = torch.tensor([[[0.75, 0.5], [0.25, 0.5]]])
    beta_new = torch.full((1, 2, 2), 0.5)
    assert attention_kl_sum(beta_new, beta_old).item() == pytest.approx(_k(), rel=1e-6)
    # a mask keeps only the flagged rows and divides by their count: sample 1 alone -> k + ln 2
    assert attention_kl_sum(new, old, torch.tensor([False, True])).item() == pytest.approx(_k() + LN2, rel=1e-6)
    assert attention_kl_sum(new, old, torch.tensor([False, False])).item() == 0.0


def test_attention_kl_sum_matches_the_reference_layout():
    # The reference transposes alpha to (B_e, T, D, P), flattens to (-1, P) and takes
    # F.kl_div(log new, old, reduction="sum") / B_e; beta to (B_e, D, T) -> (-1, T).
    torch.manual_seed(0)
    alpha_new, alpha_old = torch.softmax(torch.randn(3, 2, 5, 4), 2), torch.softmax(torch.randn(3, 2, 5, 4), 2)
    beta_new, beta_old = torch.softmax(torch.randn(3, 2, 4), 1), torch.softmax(torch.randn(3, 2, 4), 1)
    ref_s = (
        F.kl_div(
            alpha_new.transpose(2, 3).reshape(-1, 5).log(), alpha_old.transpose(2, 3).reshape(-1, 5), reduction="sum"
        )
        / 3
    )
    ref_t = (
        F.kl_div(
            beta_new.transpose(1, 2).reshape(-1, 2).log(), beta_old.transpose(1, 2).reshape(-1, 2), reduction="sum"
        )
        / 3
    )
    torch.testing.assert_close(attention_kl_sum(alpha_new, alpha_old), ref_s)
    torch.testing.assert_close(attention_kl_sum(beta_new, beta_old), ref_t)


def test_attention_weights_are_bounded_away_from_zero():
    # Why log(p) is safe: scores are products of two tanh outputs, in [-1, 1], so every weight is
    # >= e^-2 / (axis length), even for huge inputs.
    torch.manual_seed(0)
    net = AVCILNet("audio-visual", audio_dim=3, visual_dim=4, num_classes=2)
    out = net({"audio": 1e4 * torch.randn(6, 3), "visual": 1e4 * torch.randn(6, 2, 7, 4)})
    assert out["spatial_attention"].min().item() >= math.exp(-2) / 7 * (1 - 1e-5)
    assert out["temporal_attention"].min().item() >= math.exp(-2) / 2 * (1 - 1e-5)


def test_vad_uses_exemplar_rows_only():
    torch.manual_seed(0)
    net, old = AVCILNet("audio-visual", 3, 4, 2), AVCILNet("audio-visual", 3, 4, 2)
    views = {"audio": torch.randn(5, 3), "visual": torch.randn(5, 2, 6, 4)}
    out, old_out = net(views), old(views)
    is_ex = torch.tensor([False, False, False, True, True])
    spatial, temporal = AVCIL.vad_terms(out, old_out, is_ex)
    # = the reference reduction over the exemplar rows alone
    ex_out = {k: v[is_ex] for k, v in out.items()}
    ex_old = {k: v[is_ex] for k, v in old_out.items()}
    torch.testing.assert_close(spatial, attention_kl_sum(ex_out["spatial_attention"], ex_old["spatial_attention"]))
    torch.testing.assert_close(temporal, attention_kl_sum(ex_out["temporal_attention"], ex_old["temporal_attention"]))
    # changing the current rows' attention changes nothing; changing an exemplar row does
    moved = dict(
        out, spatial_attention=out["spatial_attention"].clone(), temporal_attention=out["temporal_attention"].clone()
    )
    moved["spatial_attention"][:3] = torch.softmax(torch.randn(3, 2, 6, 4), 2)
    moved["temporal_attention"][:3] = torch.softmax(torch.randn(3, 2, 4), 1)
    s2, t2 = AVCIL.vad_terms(moved, old_out, is_ex)
    torch.testing.assert_close(s2, spatial)
    torch.testing.assert_close(t2, temporal)
    moved["spatial_attention"][4] = torch.softmax(torch.randn(2, 6, 4), 1)
    assert AVCIL.vad_terms(moved, old_out, is_ex)[0].item() != pytest.approx(spatial.item())
    # gradients reach the exemplar rows only
    a = out["spatial_attention"].detach().clone().requires_grad_(True)
    attention_kl_sum(a, old_out["spatial_attention"].detach(), is_ex).backward()
    assert (a.grad[:3] == 0).all() and (a.grad[3:] != 0).any()


# ------------------------------------------------------------------ end to end
def _record_batches(s):
    """Wrap loss_fn to record (step, is_exemplar, targets, loss) for every minibatch."""
    seen = []
    original = s.loss_fn

    def loss_fn(out, y):
        loss = original(out, y)
        seen.append((s.step_index, s.mb_is_exemplar.clone(), y.clone(), float(loss.detach()), s.old_model))
        return loss

    s.loss_fn = loss_fn
    return seen


@pytest.mark.parametrize(
    "name,modality", [("ssil", "audio"), ("ssil", "visual"), ("ssil", "audio-visual"), ("av_cil", "audio-visual")]
)
def test_ssil_and_avcil_train_with_exemplar_batches(name, modality, toy_store, toy_protocol):
    stream = build_stream(toy_store, toy_protocol)
    s = make_strategy(name, modality, toy_store, stream, epochs=2)
    seen = _record_batches(s)
    for t, exp in enumerate(stream.benchmark.train_stream):
        s.train(exp, eval_streams=[])
        assert s.model.num_classes == toy_protocol.seen_classes(t)
        # random exemplars: memory 12 // seen classes per class, old lists truncated, train-split rows of the right
        # class
        quota = 12 // toy_protocol.seen_classes(t)
        assert sorted(s.memory) == list(range(toy_protocol.seen_classes(t)))
        for c, rows in s.memory.items():
            assert len(rows) == quota and len(set(rows.tolist())) == quota
            assert (toy_store.labels[rows.numpy()] == toy_protocol.class_order[c]).all()
            assert (toy_store.splits[rows.numpy()] == 0).all()
    assert all(math.isfinite(loss) for *_, loss, _ in seen)
    for step, is_ex, y, _, old_model in seen:
        lo, hi = toy_protocol.step_bounds(step)
        if step == 0:
            assert not is_ex.any() and old_model is None
            continue
        # current batch (8) + exemplar batch (all 12 exemplars: min(exemplar batch 128, memory 12))
        assert is_ex.sum() == 12 and (~is_ex).sum() == 8 and not is_ex[:8].any()
        assert (y[is_ex] < lo).all() and ((y[~is_ex] >= lo) & (y[~is_ex] < hi)).all()
        assert old_model.num_classes == lo  # the teacher is the previous step's model
    assert {step for step, *_ in seen} == {0, 1, 2}


def test_avcil_loss_terms_at_step_one(toy_store, toy_protocol):
    stream = build_stream(toy_store, toy_protocol)
    s = make_strategy("av_cil", "audio-visual", toy_store, stream, epochs=1)
    exps = list(stream.benchmark.train_stream)
    s.train(exps[0], eval_streams=[])
    captured = {}
    original = s.loss_terms

    def loss_terms(out, y):
        terms = original(out, y)
        captured.update({k: v.detach() for k, v in terms.items()}, is_ex=s.mb_is_exemplar.clone())
        return terms

    s.loss_terms = loss_terms
    s.train(exps[1], eval_streams=[])
    assert set(captured) == {"ce_ss", "kd", "instance", "class", "spatial", "temporal", "is_ex"}
    assert captured["is_ex"].any() and all(torch.isfinite(v).all() for v in captured.values())
    assert captured["spatial"] >= 0 and captured["temporal"] >= 0 and captured["kd"] >= 0
    assert s.old_model.num_classes == 2 and not any(p.requires_grad for p in s.old_model.parameters())


def test_avcil_is_audio_visual_only(toy_store, toy_protocol, toy_registry, tmp_path):
    spec = registry()["av_cil"]
    assert spec.modalities == ("audio-visual",)
    assert set(registry()["ssil"].modalities) == {"audio", "visual", "audio-visual"}
    stream = build_stream(toy_store, toy_protocol)
    for modality in ("audio", "visual"):
        with pytest.raises(ConfigError, match="does not support modality"):
            make_strategy("av_cil", modality, toy_store, stream)
    from benchmarks.run.grid import build_grid
    from benchmarks.suites import get_suite

    cells = build_grid(get_suite("audio-visual"), tmp_path, methods=["av_cil"]).cells
    assert cells and {c.modality for c in cells} == {"audio-visual"}
    assert not build_grid(get_suite("audio-visual"), tmp_path, methods=["av_cil"], modalities=["audio", "visual"]).cells


def test_configs_resolve_per_dataset_and_modality():
    ssil, avcil = registry()["ssil"], registry()["av_cil"]
    assert [ssil.config("ave", m)["epochs"] for m in ("audio", "visual", "audio-visual")] == [300, 200, 200]
    assert [ssil.config("ksounds", m)["epochs"] for m in ("audio", "visual", "audio-visual")] == [300, 100, 100]
    assert [ssil.config("vggsound100", m)["epochs"] for m in ("audio", "visual", "audio-visual")] == [300, 200, 200]
    for ds, lam_i in (("ave", 0.5), ("ksounds", 0.1), ("vggsound100", 0.1)):
        c = avcil.config(ds, "audio-visual")
        assert (c["epochs"], c["lambda_instance"], c["lambda_class"], c["attention_lambda"]) == (200, lam_i, 1.0, 0.5)
        assert (c["instance_temperature"], c["class_temperature"], c["kd_temperature"]) == (0.05, 0.05, 2.0)
        assert c["class_contrastive_norm"] == "released" and c["exemplar_batching"] == "separate"
        assert (c["batch_size"], c["exemplar_batch_size"]) == (256, 128)
