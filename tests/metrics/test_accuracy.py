"""Hand-computed checks of benchmarks/metrics/accuracy.py.

Every expected value below is worked out in the comments, so a change of formula (e.g. BWT
against the best-so-far instead of R[j][j], or an unweighted A_t) fails here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.metrics import accuracy as M

# ---------------------------------------------------------------- 3 x 3, unequal test counts
# R (rows = after step t, columns = step j's classes):
#   t=0: 90
#   t=1: 60 80
#   t=2: 50 70 85
# n = [10, 20, 30] test samples per step.
R3 = [[90.0], [60.0, 80.0], [50.0, 70.0, 85.0]]
N3 = [10, 20, 30]
# A_0 = 90
# A_1 = (60*10 + 80*20) / 30 = 2200 / 30 = 73.333...
# A_2 = (50*10 + 70*20 + 85*30) / 60 = (500 + 1400 + 2550) / 60 = 4450 / 60 = 74.1666...
A3 = [90.0, 2200 / 30, 4450 / 60]
# avg inc acc = (90 + 73.333 + 74.1667) / 3 = 237.5 / 3 = 79.1666...
# avg forgetting: F_1 = 90-60 = 30 ; F_2 = mean(max(90,60)-50, 80-70) = mean(40, 10) = 25 ; mean = 27.5
# final forgetting: mean(max(90,60)-50, 80-70) = mean(40, 10) = 25
# BWT: mean(50-90, 70-80) = mean(-40, -10) = -25


def test_pooled_accuracy_3x3_weights_by_test_count():
    assert M.pooled_accuracy(R3, N3) == pytest.approx(A3)
    # The unweighted row mean of t=2 would be 68.33, not 74.17: the weighting matters.
    assert M.pooled_accuracy(R3, N3)[2] != pytest.approx(np.mean(R3[2]))


def test_scalar_metrics_3x3():
    assert M.average_incremental_accuracy(A3) == pytest.approx(237.5 / 3)
    assert M.last_accuracy(A3) == pytest.approx(4450 / 60)
    assert M.avg_forgetting(R3) == pytest.approx(27.5)
    assert M.final_forgetting(R3) == pytest.approx(25.0)
    assert M.backward_transfer(R3) == pytest.approx(-25.0)


# ---------------------------------------------------------------- 4 x 4, forgetting that goes negative
# R:
#   t=0: 60
#   t=1: 80 90          <- step 0 goes UP (60 -> 80): negative forgetting at t=1
#   t=2: 70 60 70
#   t=3: 75 65 50 60
# n = [5, 5, 10, 20].
R4 = [[60.0], [80.0, 90.0], [70.0, 60.0, 70.0], [75.0, 65.0, 50.0, 60.0]]
N4 = [5, 5, 10, 20]
# A_0 = 60
# A_1 = (80*5 + 90*5) / 10 = 85
# A_2 = (70*5 + 60*5 + 70*10) / 20 = 1350 / 20 = 67.5
# A_3 = (75*5 + 65*5 + 50*10 + 60*20) / 40 = 2400 / 40 = 60   (unweighted row mean: 62.5)
A4 = [60.0, 85.0, 67.5, 60.0]
# avg inc acc = (60 + 85 + 67.5 + 60) / 4 = 272.5 / 4 = 68.125
# avg forgetting:
#   F_1 = 60 - 80 = -20
#   F_2 = mean(max(60,80)-70, 90-60)            = mean(10, 30)     = 20
#   F_3 = mean(max(60,80,70)-75, max(90,60)-65, 70-50) = mean(5, 25, 20) = 50/3
#   mean = (-20 + 20 + 50/3) / 3 = 50/9 = 5.555...
# final forgetting = mean(80-75, 90-65, 70-50) = 50/3 = 16.666...   (max is R[1][0]=80, not R[0][0])
# BWT = mean(75-60, 65-90, 50-70) = mean(15, -25, -20) = -10        (uses R[j][j]=60 for step 0)


def test_pooled_accuracy_4x4():
    assert M.pooled_accuracy(R4, N4) == pytest.approx(A4)


def test_scalar_metrics_4x4_max_over_history_not_diagonal():
    assert M.average_incremental_accuracy(A4) == pytest.approx(68.125)
    assert M.last_accuracy(A4) == pytest.approx(60.0)
    assert M.avg_forgetting(R4) == pytest.approx(50 / 9)
    assert M.final_forgetting(R4) == pytest.approx(50 / 3)
    assert M.backward_transfer(R4) == pytest.approx(-10.0)


def test_negative_forgetting_when_old_accuracy_rises():
    # R = [[50], [70, 90]]: step 0 improves from 50 to 70 after step 1.
    # avg forgetting = F_1 = 50 - 70 = -20 ; final forgetting = 50 - 70 = -20 ; BWT = 70 - 50 = +20
    R = [[50.0], [70.0, 90.0]]
    assert M.avg_forgetting(R) == pytest.approx(-20.0)
    assert M.final_forgetting(R) == pytest.approx(-20.0)
    assert M.backward_transfer(R) == pytest.approx(20.0)


def test_summarize_4x4():
    s = M.summarize(R4, A4)
    assert list(s) == [m.key for m in M.METRICS]  # the registry entries, in their order
    assert s == pytest.approx(
        {"avg_inc_acc": 68.125, "last_acc": 60.0, "avg_forgetting": 50 / 9, "final_forgetting": 50 / 3, "bwt": -10.0}
    )


# ---------------------------------------------------------------- T = 1
def test_single_step_forgetting_is_none():
    R = [[70.0]]
    assert M.avg_forgetting(R) is None
    assert M.final_forgetting(R) is None
    assert M.backward_transfer(R) is None
    assert M.pooled_accuracy(R, [7]) == [70.0]
    assert M.summarize(R, [70.0]) == {
        "avg_inc_acc": 70.0,
        "last_acc": 70.0,
        "avg_forgetting": None,
        "final_forgetting": None,
        "bwt": None,
    }


# ---------------------------------------------------------------- input shapes
def test_none_or_junk_above_diagonal_is_ignored():
    square_none = [
        [60.0, None, None, None],
        [80.0, 90.0, None, None],
        [70.0, 60.0, 70.0, None],
        [75.0, 65.0, 50.0, 60.0],
    ]
    square_junk = [[60.0, 1.0, 2.0, 3.0], [80.0, 90.0, 4.0, 5.0], [70.0, 60.0, 70.0, 6.0], [75.0, 65.0, 50.0, 60.0]]
    for R in (square_none, square_junk, np.array(square_junk)):
        assert M.summarize(R, A4) == pytest.approx(M.summarize(R4, A4))
        assert M.pooled_accuracy(R, N4) == pytest.approx(A4)


@pytest.mark.parametrize(
    "bad",
    [
        [[60.0], [None, 90.0]],  # missing below the diagonal
        [[60.0], [80.0]],  # row 1 lacks its diagonal entry
        [[60.0], [80.0, math.nan]],  # NaN on the diagonal
        [[60.0, 1.0, 2.0], [80.0, 90.0, 3.0]],  # not square
    ],
)
def test_missing_or_malformed_entries_raise(bad):
    with pytest.raises(ValueError):
        M.avg_forgetting(bad)
    with pytest.raises(ValueError):
        M.pooled_accuracy(bad, [1, 1, 1])


# ---------------------------------------------------------------- from predictions
def test_accuracy_matrix_from_predictions():
    # Two steps of two classes: positions 0,1 -> step 0 ; 2,3 -> step 1.
    # sample:   0  1  2  3  4  5
    # target:   0  1  2  3  3  3
    # pred:     0  1  2  2  3  0
    # correct:  y  y  y  n  y  n
    # step 0: 2/2 = 100 % ; step 1: 2/4 = 50 % ; A_1 = 4/6 = 66.67 % ; counts [2, 4]
    pred = [0, 1, 2, 2, 3, 0]
    target = [0, 1, 2, 3, 3, 3]
    step = [0, 0, 1, 1, 1, 1]
    row, a, counts = M.accuracy_matrix_from_predictions(pred, target, step, t=1)
    assert row == pytest.approx([100.0, 50.0])
    assert a == pytest.approx(400 / 6)
    assert counts == [2, 4]
    # A_t agrees with the pooled accuracy of the row: (100*2 + 50*4) / 6.
    assert M.pooled_accuracy([[100.0], row], counts)[1] == pytest.approx(a)


def test_accuracy_matrix_from_predictions_step_zero():
    # t = 0: only step 0's samples; 1 of 3 right.
    row, a, counts = M.accuracy_matrix_from_predictions(
        np.array([1, 1, 0]), np.array([0, 1, 1]), np.array([0, 0, 0]), t=0
    )
    assert row == pytest.approx([100 / 3])
    assert a == pytest.approx(100 / 3)
    assert counts == [3]
