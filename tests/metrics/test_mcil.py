"""Hand-computed checks of the MCIL-AudioCLIP metrics in benchmarks/metrics/mcil.py.

continuum-1.2.7 forgetting / BWT / FWT, the softmax "MI"/"NMI" of the MCIL code, the task
similarity and Metrics 1 and 2. Every expected value is worked out in the comments, so a change
of index range, normalisation, scale or grouping fails here. All accuracies are in percent.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmarks.metrics import accuracy
from benchmarks.metrics import mcil as M

LN2, LN3 = math.log(2), math.log(3)


# ================================================================ continuum 1.2.7 F / BWT / FWT
# ---------------------------------------------------------------- T = 1 and T = 2
def test_single_task_is_zero_not_none():
    # continuum returns 0. for T <= 1 (the harness's own forgetting returns None there).
    R = [[70.0]]
    assert M.continuum_forgetting(R) == 0.0
    assert M.continuum_backward_transfer(R) == 0.0
    assert M.continuum_forward_transfer(R) == 0.0
    assert M.continuum_series(R) == {"forgetting": [0.0], "bwt": [0.0], "fwt": [0.0]}


def test_two_tasks_forgetting_and_bwt_are_zero_even_under_total_forgetting():
    # R = [[100], [0, 100]]: step 0 is completely forgotten.
    # continuum F: sum over j in range(T-2) = range(0) -> empty -> 0 / 1 = 0
    # continuum BWT: i = 1, j in range(0) -> empty -> 0 / 1 = 0
    # continuum FWT: R[1][0] / (2*1/2) = 0 / 1 = 0
    # The harness's Chaudhry forgetting is 100 - 0 = 100 and its GEM BWT is 0 - 100 = -100.
    R = [[100.0], [0.0, 100.0]]
    assert M.continuum_forgetting(R) == 0.0
    assert M.continuum_backward_transfer(R) == 0.0
    assert M.continuum_forward_transfer(R) == 0.0
    assert accuracy.final_forgetting(R) == pytest.approx(100.0)
    assert accuracy.backward_transfer(R) == pytest.approx(-100.0)


def test_two_tasks_fwt_is_the_below_diagonal_entry():
    # R = [[50], [70, 90]]: FWT = R[1][0] / 1 = 70 (the accuracy on the PAST task, not a transfer).
    R = [[50.0], [70.0, 90.0]]
    assert M.continuum_forgetting(R) == 0.0
    assert M.continuum_backward_transfer(R) == 0.0
    assert M.continuum_forward_transfer(R) == pytest.approx(70.0)


# ---------------------------------------------------------------- 3 x 3 (same R as tests/metrics/test_accuracy.py)
#   t=0: 90
#   t=1: 60 80
#   t=2: 50 70 85
R3 = [[90.0], [60.0, 80.0], [50.0, 70.0, 85.0]]
A3 = [90.0, 2200 / 30, 4450 / 60]  # pooled accuracies with n = [10, 20, 30] (tests/metrics/test_accuracy.py)
# T = 3:
#   F   : j in range(1) = {0}: max_{l in range(1), l>=0} R[l][0] = R[0][0] = 90 ; 90 - R[2][0] = 40 ; / (T-1 = 2) = 20
#         (j = 1 is skipped: R[1][1] - R[2][1] = 10 never counts)          harness final_forgetting = 25
#   BWT : i=1: j in range(0) none ; i=2: j=0: R[2][0] - R[0][0] = -40 ; / (3*2/2 = 3) = -40/3
#         (j = i-1 skipped: R[2][1] - R[1][1] = -10 never counts)         harness GEM BWT = -25
#   FWT : (R[1][0] + R[2][0] + R[2][1]) / 3 = (60 + 50 + 70) / 3 = 60
# Series (R[:t+1, :t+1]): t=0 -> 0, 0, 0 ; t=1 -> F 0, BWT 0, FWT R[1][0] = 60 ; t=2 -> above.
F3 = [0.0, 0.0, 20.0]
BWT3 = [0.0, 0.0, -40 / 3]
FWT3 = [0.0, 60.0, 60.0]


def test_continuum_3x3():
    assert M.continuum_forgetting(R3) == pytest.approx(20.0)
    assert M.continuum_backward_transfer(R3) == pytest.approx(-40 / 3)
    assert M.continuum_forward_transfer(R3) == pytest.approx(60.0)
    # ... and they really differ from the harness's standard definitions on the same matrix.
    assert accuracy.final_forgetting(R3) == pytest.approx(25.0)
    assert accuracy.backward_transfer(R3) == pytest.approx(-25.0)


def test_continuum_series_3x3():
    s = M.continuum_series(R3)
    assert s["forgetting"] == pytest.approx(F3)
    assert s["bwt"] == pytest.approx(BWT3)
    assert s["fwt"] == pytest.approx(FWT3)


# ---------------------------------------------------------------- 4 x 4, max range and negative forgetting
#   t=0: 80
#   t=1: 70 90
#   t=2: 95 85 75     <- R[2][0] = 95 is the best value of column 0, but row T-2 = 2 is outside
#   t=3: 55 70 65 95     continuum's max range at T = 4 (l <= T-3 = 1)
R4 = [[80.0], [70.0, 90.0], [95.0, 85.0, 75.0], [55.0, 70.0, 65.0, 95.0]]
# T = 4:
#   F   : j=0: max(R[0][0], R[1][0]) = max(80, 70) = 80 ; 80 - 55 = 25
#         j=1: max(R[1][1]) = 90 ; 90 - 70 = 20
#         (j=2 skipped) ; (25 + 20) / 3 = 15
#         (a max over l <= T-2 would give 95 - 55 = 40 for j=0 -> 20 ; harness final_forgetting: (40+20+10)/3 = 70/3)
#   BWT : i=2: j=0: 95 - 80 = 15 ; i=3: j=0: 55 - 80 = -25, j=1: 70 - 90 = -20 ; sum -30 ; / (4*3/2 = 6) = -5
#   FWT : (70 + 95 + 85 + 55 + 70 + 65) / 6 = 440 / 6 = 220/3
# T = 3 (R[:3, :3]):
#   F   : j=0: R[0][0] - R[2][0] = 80 - 95 = -15 ; / 2 = -7.5      (negative: column 0 went UP)
#   BWT : i=2, j=0: 95 - 80 = 15 ; / 3 = 5
#   FWT : (70 + 95 + 85) / 3 = 250/3
# T = 2: F 0, BWT 0, FWT 70 ; T = 1: 0, 0, 0
F4 = [0.0, 0.0, -7.5, 15.0]
BWT4 = [0.0, 0.0, 5.0, -5.0]
FWT4 = [0.0, 70.0, 250 / 3, 220 / 3]


def test_continuum_4x4_excludes_row_T_minus_2_from_the_max():
    assert M.continuum_forgetting(R4) == pytest.approx(15.0)
    assert M.continuum_backward_transfer(R4) == pytest.approx(-5.0)
    assert M.continuum_forward_transfer(R4) == pytest.approx(220 / 3)
    assert accuracy.final_forgetting(R4) == pytest.approx(70 / 3)
    assert accuracy.backward_transfer(R4) == pytest.approx(-55 / 3)  # mean(55-80, 70-90, 65-75)


def test_continuum_series_4x4_with_negative_forgetting():
    s = M.continuum_series(R4)
    assert s["forgetting"] == pytest.approx(F4)
    assert s["bwt"] == pytest.approx(BWT4)
    assert s["fwt"] == pytest.approx(FWT4)


def test_continuum_accepts_square_input_with_junk_above_diagonal():
    square = [[80.0, 1.0, 2.0, 3.0], [70.0, 90.0, 4.0, 5.0], [95.0, 85.0, 75.0, 6.0], [55.0, 70.0, 65.0, 95.0]]
    expected = M.continuum_series(R4)
    for R in (square, np.array(square)):
        got = M.continuum_series(R)
        for key in ("forgetting", "bwt", "fwt"):
            assert got[key] == pytest.approx(expected[key])
    with pytest.raises(ValueError):
        M.continuum_forgetting([[60.0], [None, 90.0]])


# ================================================================ softmax MI / NMI (MCIL models.py)
def _t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_uniform_identical_inputs():
    # x = y = zeros (B=3, D=4): x*y = 0 too, so p_xy = p_x = p_y = 1/4 everywhere.
    # per row: sum_d 1/4 * (ln 1/4 - ln 1/4 - ln 1/4) = ln 4 ; over 3 rows MI = 3 ln 4
    # H(x) = H(y) = 3 * (-sum_d 1/4 ln 1/4) = 3 ln 4 ; NMI = 3 ln 4 / sqrt(3 ln 4 * 3 ln 4) = 1
    x = torch.zeros(3, 4, dtype=torch.float64)
    assert M.softmax_mutual_information(x, x).item() == pytest.approx(3 * math.log(4))
    assert M.softmax_nmi(x, x).item() == pytest.approx(1.0)
    # Any constant row is as uniform: x = y = 0.5 -> x*y = 0.25, all softmaxes still uniform.
    c = torch.full((3, 4), 0.5, dtype=torch.float64)
    assert M.softmax_mutual_information(c, c).item() == pytest.approx(3 * math.log(4))
    assert M.softmax_nmi(c, c).item() == pytest.approx(1.0)


def test_mi_and_nmi_1x2_by_hand():
    # x = [0, ln 3], y = [1, 1]:
    #   p_x = softmax([0, ln 3]) = [1/4, 3/4] ; p_y = [1/2, 1/2] ; x*y = [0, ln 3] -> p_xy = [1/4, 3/4]
    #   MI = sum p_xy (ln p_xy - ln p_x - ln p_y) = sum p_xy * (-ln 1/2) = ln 2
    #   H(x) = 1/4 ln 4 + 3/4 ln(4/3) = 2 ln 2 - 3/4 ln 3 ; H(y) = ln 2
    #   NMI = ln 2 / sqrt(ln 2 (2 ln 2 - 3/4 ln 3)) = sqrt(ln 2 / (2 ln 2 - 3/4 ln 3)) = 1.11024... (> 1!)
    x, y = _t([[0.0, LN3]]), _t([[1.0, 1.0]])
    assert M.softmax_mutual_information(x, y).item() == pytest.approx(LN2)
    nmi = math.sqrt(LN2 / (2 * LN2 - 0.75 * LN3))
    assert nmi == pytest.approx(1.11024, abs=1e-5)
    assert M.softmax_nmi(x, y).item() == pytest.approx(nmi)
    assert M.softmax_nmi(y, x).item() == pytest.approx(nmi)  # symmetric


def test_mi_1x2_with_zero_y():
    # x = [0, ln 3], y = [0, 0]: x*y = [0, 0] -> p_xy = [1/2, 1/2] ; p_x = [1/4, 3/4] ; p_y = [1/2, 1/2]
    # MI = 1/2 (ln 1/2 - ln 1/4 - ln 1/2) + 1/2 (ln 1/2 - ln 3/4 - ln 1/2) = 1/2 ln 4 + 1/2 ln 4/3 = 2 ln 2 - 1/2 ln 3
    x, y = _t([[0.0, LN3]]), _t([[0.0, 0.0]])
    assert M.softmax_mutual_information(x, y).item() == pytest.approx(2 * LN2 - 0.5 * LN3)


def test_batch_sums_not_per_sample_means():
    # Rows: (x=[0, ln 3], y=[1, 1]) as above, and (x=[0, 0], y=[0, 0]): MI ln 2, H(x) = H(y) = ln 2, own NMI 1.
    # MI = ln 2 + ln 2 = 2 ln 2 (summed, not averaged over the batch)
    # H(x) = (2 ln 2 - 3/4 ln 3) + ln 2 = 3 ln 2 - 3/4 ln 3 ; H(y) = ln 2 + ln 2 = 2 ln 2
    # NMI = 2 ln 2 / sqrt((3 ln 2 - 3/4 ln 3) * 2 ln 2) = sqrt(2 ln 2 / (3 ln 2 - 3/4 ln 3)) = 1.05081
    # (the mean of the two per-row NMIs would be (1.11024 + 1) / 2 = 1.05512)
    x, y = _t([[0.0, LN3], [0.0, 0.0]]), _t([[1.0, 1.0], [0.0, 0.0]])
    assert M.softmax_mutual_information(x, y).item() == pytest.approx(2 * LN2)
    expected = math.sqrt(2 * LN2 / (3 * LN2 - 0.75 * LN3))
    assert M.softmax_nmi(x, y).item() == pytest.approx(expected)
    per_row_mean = (M.softmax_nmi(x[:1], y[:1]).item() + M.softmax_nmi(x[1:], y[1:]).item()) / 2
    assert per_row_mean == pytest.approx(1.05512, abs=1e-5)
    assert M.softmax_nmi(x, y).item() != pytest.approx(per_row_mean)


def test_nmi_of_x_with_itself_is_not_one_in_general():
    # x = [0, ln 3]: x*x = [0, (ln 3)^2] -> p_xy = [q, 1-q], q = 1 / (1 + exp((ln 3)^2)) = 0.23025 ;
    # p_x = [1/4, 3/4] ; MI = q (ln q - 2 ln 1/4) + (1-q)(ln(1-q) - 2 ln 3/4) ; H(x) = 2 ln 2 - 3/4 ln 3
    # NMI(x, x) = MI / sqrt(H H) = MI / H = 0.9633
    x = _t([[0.0, LN3]])
    q = 1 / (1 + math.exp(LN3**2))
    mi = q * (math.log(q) - 2 * math.log(0.25)) + (1 - q) * (math.log(1 - q) - 2 * math.log(0.75))
    h = 2 * LN2 - 0.75 * LN3
    assert M.softmax_mutual_information(x, x).item() == pytest.approx(mi)
    assert M.softmax_nmi(x, x).item() == pytest.approx(mi / h)
    assert M.softmax_nmi(x, x).item() == pytest.approx(0.9633, abs=1e-4)


def test_mi_accepts_numpy_and_float32():
    x = np.array([[0.0, LN3]])
    y = np.array([[1.0, 1.0]])
    assert float(M.softmax_mutual_information(x, y)) == pytest.approx(LN2)
    x32, y32 = torch.tensor([[0.0, LN3]], dtype=torch.float32), torch.ones(1, 2)
    assert M.softmax_mutual_information(x32, y32).dtype == torch.float32
    assert M.softmax_mutual_information(x32, y32).item() == pytest.approx(LN2, rel=1e-6)


def test_mi_is_differentiable():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randn(3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(M.softmax_mutual_information, (x, y))
    assert torch.autograd.gradcheck(M.softmax_nmi, (x, y))
    # Gradients reach both inputs and are not zero (the MCIL loss is -MI(f, v) - MI(f, a)).
    loss = -M.softmax_mutual_information(x, y)
    loss.backward()
    assert x.grad is not None and y.grad is not None
    assert x.grad.abs().sum() > 0 and y.grad.abs().sum() > 0


def test_mi_gradient_of_1x2_example_by_hand():
    # y = [1, 1] fixed: p_y uniform, x*y = x, so p_xy = p_x and MI = sum p_x (-ln p_y) = ln 2 for every x:
    # the gradient with respect to x is exactly 0.
    x = _t([[0.0, LN3]]).requires_grad_(True)
    M.softmax_mutual_information(x, _t([[1.0, 1.0]])).backward()
    assert torch.allclose(x.grad, torch.zeros_like(x), atol=1e-12)
    # y = [0, 0]: MI(x) = sum_d 1/2 (ln 1/2 - log_softmax(x)_d - ln 1/2) = -1/2 sum_d log_softmax(x)_d
    # d/dx_k = -1/2 sum_d (delta_dk - p_k) = -1/2 (1 - 2 p_k) = p_k - 1/2 ; p = [1/4, 3/4] -> [-1/4, 1/4]
    x = _t([[0.0, LN3]]).requires_grad_(True)
    M.softmax_mutual_information(x, _t([[0.0, 0.0]])).backward()
    assert x.grad[0].tolist() == pytest.approx([-0.25, 0.25])


# ================================================================ task similarity
def test_task_similarity_identical_orthogonal_opposite():
    # s_0 = 1 always.
    # t=1: e identical (cos 1 -> 1), p orthogonal (cos 0 -> 1/2) -> 1/2 * 1 + 1/2 * 1/2 = 3/4
    # t=2: e orthogonal (1/2), p orthogonal (1/2)                  -> 1/2
    # t=3: e opposite (cos -1 -> 0), p identical up to scale (1)   -> 1/2 * 0 + 1/2 * 1 = 1/2
    # t=4: e opposite (0), p opposite (0)                          -> 0
    e = [[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, -5.0], [0.0, 1.0]]
    p = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 7.0], [0.0, 0.0, -1.0]]
    assert M.task_similarity(e, p) == pytest.approx([1.0, 0.75, 0.5, 0.5, 0.0])
    text, image = M.task_similarity_parts(e, p)
    assert text == pytest.approx([1.0, 1.0, 0.5, 0.0, 0.0])
    assert image == pytest.approx([1.0, 0.5, 0.5, 1.0, 0.0])


def test_task_similarity_compares_consecutive_steps_not_step_zero():
    # e: a, b, b with a _|_ b ; p the same. s_2 compares step 2 with step 1 (identical -> 1),
    # not with step 0 (orthogonal -> 1/2).
    a, b = [1.0, 0.0], [0.0, 1.0]
    assert M.task_similarity([a, b, b], [a, b, b]) == pytest.approx([1.0, 0.5, 1.0])


def test_task_similarity_45_degrees_and_tensor_inputs():
    # cos 45 deg = 1/sqrt 2 -> 1/(2 sqrt 2) + 1/2 = 0.853553 for both parts -> s_1 = 0.853553
    e = [torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0], requires_grad=True)]
    p = [np.array([2.0, 0.0]), np.array([3.0, 3.0])]
    assert M.task_similarity(e, p) == pytest.approx([1.0, 1 / (2 * math.sqrt(2)) + 0.5])
    with pytest.raises(ValueError):
        M.task_similarity(e, p[:1])


# ================================================================ Metric 1 and Metric 2
# Inputs: the 3x3 run above. Abar = (90 + 73.333 + 74.1667) / 3 = 237.5 / 3 = 79.1667 %.
# s = [1, 0.5, 0.75] (given directly here; reproduced from vectors in test_mcil_metrics_end_to_end).
S3 = [1.0, 0.5, 0.75]
# M1 = Abar/2 + (1/3) [ (1-1)(100-0) + (1-0.5)(100-0) + (1-0.75)(100-20) ] / 2
#    = 237.5/6 + (1/3)(0 + 50 + 20)/2 = 237.5/6 + 70/6 = 307.5/6 = 51.25
M1_3 = 51.25
# M2: Abar_frac = 237.5/300 = 19/24 ; BWT+FWT as fractions: t0 0, t1 0 + 0.6, t2 -2/15 + 0.6 ; mean = (16/15)/3 = 16/45
#     with NMI(v,f) = 1, NMI(a,f) = 0.2:
#     M2 = 1/2 (19/48 + 8/45) + 1/2 (1/2 + 1/10) = 413/1440 + 432/1440 = 845/1440 = 169/288 = 0.586806
M2_3 = 169 / 288


def test_metric1_by_hand():
    assert M.mcil_metric1(A3, F3, S3) == pytest.approx(M1_3)
    # s_t = 1 everywhere: no forgetting term at all -> Abar / 2
    assert M.mcil_metric1(A3, F3, [1.0, 1.0, 1.0]) == pytest.approx(237.5 / 6)
    with pytest.raises(ValueError):
        M.mcil_metric1(A3, F3[:2], S3)


def test_metric2_by_hand():
    assert M.mcil_metric2(A3, BWT3, FWT3, 1.0, 0.2) == pytest.approx(M2_3)
    # NMIs given as 0-dim tensors work the same.
    assert M.mcil_metric2(A3, BWT3, FWT3, torch.tensor(1.0), torch.tensor(0.2)) == pytest.approx(M2_3)
    # Only the NMI half changes with the NMIs: 0.5 * (0.5 * 0.4 + 0.5 * 0.4) - 0.5 * 0.6 = -0.1
    assert M.mcil_metric2(A3, BWT3, FWT3, 0.4, 0.4) == pytest.approx(M2_3 - 0.1)


def test_reference_rounding():
    # A = [70.004, 70.004] -> Abar 70.004 (rounded: 70.00) ; F = [0, 12.345678] (rounded: 12.3457) ; s = [1, 0.5]
    # M1 raw     = 35.002 + (0.5 * 87.654322 / 2) / 2 = 35.002 + 10.95679025 = 45.95879025
    # M1 rounded = 35.0   + (0.5 * 87.6543   / 2) / 2 = 35.0   + 10.9567875  = 45.9567875
    A, F, s = [70.004, 70.004], [0.0, 12.345678], [1.0, 0.5]
    assert M.mcil_metric1(A, F, s) == pytest.approx(45.95879025)
    assert M.mcil_metric1(A, F, s, reference_rounding=True) == pytest.approx(45.9567875)
    # M2 with BWT = [0, 0], FWT = [0, 12.34567] %, NMIs 0:
    #   raw     = (0.70004/2 + (0.1234567/2)/2)/2 = 0.17501 + 0.0154320875 = 0.1904420875
    #   rounded = (0.7000/2  + (0.1235/2)/2)/2    = 0.175   + 0.0154375    = 0.1904375
    assert M.mcil_metric2(A, [0.0, 0.0], [0.0, 12.34567], 0.0, 0.0) == pytest.approx(0.1904420875)
    assert M.mcil_metric2(A, [0.0, 0.0], [0.0, 12.34567], 0.0, 0.0, reference_rounding=True) == pytest.approx(0.1904375)


def test_mcil_metrics_end_to_end():
    # Vectors reproducing s = [1, 0.5, 0.75]:
    #   t=1: e orthogonal (1/2), p orthogonal (1/2) -> 1/2
    #   t=2: e parallel (1), p orthogonal (1/2)     -> 3/4
    e = [[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]]
    p = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]]
    out = M.mcil_metrics(R3, A3, e, p, 1.0, 0.2)
    assert out["m1"] == pytest.approx(M1_3)
    assert out["m2"] == pytest.approx(M2_3)
    assert out["avg_inc_acc"] == pytest.approx(237.5 / 3)
    assert out["task_similarity"] == pytest.approx(S3)
    assert out["forgetting"] == pytest.approx(F3)
    assert out["bwt"] == pytest.approx(BWT3)
    assert out["fwt"] == pytest.approx(FWT3)
    with pytest.raises(ValueError):
        M.mcil_metrics(R3, A3[:2], e, p, 1.0, 0.2)
