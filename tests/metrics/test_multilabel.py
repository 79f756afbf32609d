"""Multi-label metrics against hand-computed values, including undefined cases (never NaN)."""

import math

import numpy as np
import pytest
from sklearn.metrics import label_ranking_average_precision_score

from benchmarks.metrics import multilabel as MM


def test_average_precision_from_scores_by_hand():
    y = np.array([[1], [0], [1], [0]])
    s = np.array([[0.9], [0.8], [0.7], [0.1]])
    # ranks: 0.9 pos (P=1, R=1/2), 0.8 neg, 0.7 pos (P=2/3, R=1): AP = 1/2 * 1 + 1/2 * 2/3
    assert MM.average_precision(y, s) == [pytest.approx(5 / 6)]


def test_class_without_positives_has_no_ap_and_is_left_out_of_map():
    y = np.array([[1, 0], [0, 0], [1, 0]])
    s = np.array([[0.9, 0.7], [0.2, 0.6], [0.8, 0.1]])
    ap = MM.average_precision(y, s)
    assert ap[0] == pytest.approx(1.0) and ap[1] is None
    assert MM.mean_ap(y, s) == pytest.approx(1.0)
    assert MM.mean_ap(np.zeros((2, 2)), s[:2]) is None


def test_binarized_map_is_the_reference_closed_form():
    y = np.array([[1], [0], [1], [0]])
    s = np.array([[0.9], [0.8], [0.2], [0.1]])
    # 1[s > .5] = 1, 1, 0, 0: P = 1/2, R = 1/2, positive rate 1/2 -> AP = R P + (1 - R) pi = 1/4 + 1/4
    assert MM.mean_ap_binarized(y, s) == pytest.approx(0.5)
    assert MM.mean_ap(y, s) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)  # from the scores it differs


def test_micro_and_macro_f1_by_hand():
    y = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0]])
    s = np.array([[0.9, 0.6, 0.1], [0.2, 0.7, 0.4], [0.1, 0.8, 0.3]])
    # predictions (> 0.5): [1,1,0], [0,1,0], [0,1,0]
    # class 0: TP 1, FP 0, FN 1 -> 2/3; class 1: TP 2, FP 1, FN 0 -> 4/5; class 2: 0/0 -> undefined, 0 in macro-F1
    # micro: TP 3, FP 1, FN 1 -> 6/8
    assert MM.micro_f1(y, s) == pytest.approx(0.75)
    assert MM.f1_per_class(y, s) == [pytest.approx(2 / 3), pytest.approx(0.8), None]
    assert MM.macro_f1(y, s) == pytest.approx((2 / 3 + 0.8 + 0) / 3)
    # a class with no positive but a false alarm counts as F1 = 0
    s2 = s.copy()
    s2[0, 2] = 0.9
    assert MM.f1_per_class(y, s2)[2] == 0.0 and MM.macro_f1(y, s2) == pytest.approx((2 / 3 + 0.8 + 0) / 3)
    assert MM.micro_f1(np.zeros((2, 2)), np.zeros((2, 2))) is None
    assert MM.macro_f1(np.zeros((2, 2)), np.zeros((2, 2))) == 0.0  # every class 0/0: 0, as sklearn
    assert MM.macro_f1(np.zeros((2, 0)), np.zeros((2, 0))) is None  # no class at all
    assert MM.binarize([[0.5, 0.51]]).tolist() == [[0, 1]]  # strictly greater than the threshold


def test_macro_f1_is_sklearns_with_zero_division_0():
    """The reference (CIL-ML-Audio main_audioset.py evaluate_bin) calls sklearn `f1_score(Y_ref, Y_predicted,
    average='macro')`: a class with no positive and no predicted positive counts as F1 = 0 (zero_division 'warn'
    sets it to 0), it is not left out."""
    from sklearn.metrics import f1_score

    y = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 0, 1], [0, 0, 0, 1]])
    s = np.array([[0.9, 0.6, 0.1, 0.2], [0.2, 0.7, 0.4, 0.1], [0.1, 0.8, 0.3, 0.6], [0.3, 0.2, 0.5, 0.4]])
    # class 2: no positive, no prediction > 0.5 (0.5 is not above the threshold): 0/0
    yhat = MM.binarize(s)
    assert not y[:, 2].any() and not yhat[:, 2].any()
    want = f1_score(y, yhat, average="macro", zero_division=0)
    assert MM.macro_f1(y, s) == pytest.approx(want)
    assert MM.macro_f1(y, s) == pytest.approx((2 / 3 + 0.8 + 0 + 2 / 3) / 4)
    rng = np.random.default_rng(1)
    for _ in range(20):
        y = (rng.random((15, 8)) < 0.2).astype(int)
        y[:, rng.integers(8)] = 0  # at least one class without positives
        s = rng.random((15, 8)) * rng.choice([0.6, 1.0], size=(1, 8))  # some classes never predicted
        assert MM.macro_f1(y, s) == pytest.approx(f1_score(y, MM.binarize(s), average="macro", zero_division=0))
    pm = MM.phase_metrics(y, s, base=5)
    assert pm["macro_f1"] == pytest.approx(100 * f1_score(y, MM.binarize(s), average="macro", zero_division=0))
    assert pm["base_macro_f1"] == pytest.approx(
        100 * f1_score(y[:, :5], MM.binarize(s[:, :5]), average="macro", zero_division=0)
    )
    formula = next(m for m in MM.PHASE_METRICS if m.key == "macro_f1").formula
    assert "counts as 0" in formula and "left out" not in formula


def test_lwlrap_by_hand_and_against_sklearn_lrap():
    y = np.array([[1, 0, 1], [0, 1, 0]])
    s = np.array([[0.9, 0.8, 0.1], [0.2, 0.3, 0.1]])
    # clip 0: class 0 rank 1 (1/1), class 2 rank 3 with 2 positives at or above (2/3); clip 1: class 1 rank 1 (1/1)
    assert MM.lwlrap(y, s) == pytest.approx((1 + 2 / 3 + 1) / 3)
    # equal label counts per clip: lwlrap = sklearn's LRAP (ties handled the same way)
    rng = np.random.default_rng(0)
    y2 = np.zeros((20, 6), dtype=int)
    for i in range(20):
        y2[i, rng.choice(6, 2, replace=False)] = 1
    s2 = rng.integers(0, 4, size=(20, 6)) / 4.0  # many ties
    assert MM.lwlrap(y2, s2) == pytest.approx(label_ranking_average_precision_score(y2, s2))
    # clips without a positive contribute nothing; none at all -> undefined
    assert MM.lwlrap(np.vstack([y, [[0, 0, 0]]]), np.vstack([s, [[0.5, 0.5, 0.5]]])) == pytest.approx(8 / 9)
    assert MM.lwlrap(np.zeros((2, 3)), s) is None
    # tie: the class is ranked after the tied one
    assert MM.lwlrap(np.array([[1, 0]]), np.array([[0.5, 0.5]])) == pytest.approx(0.5)


def test_phase_metrics_base_columns_and_summary():
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    s = np.array([[0.9, 0.2, 0.6], [0.1, 0.7, 0.2], [0.8, 0.4, 0.1], [0.3, 0.6, 0.9]])
    pm = MM.phase_metrics(y, s, base=2)
    assert pm["n_classes"] == 3 and pm["positives"] == [2, 2, 1] and pm["classes_without_positives"] == []
    assert pm["base_micro_f1"] == pytest.approx(100 * MM.micro_f1(y[:, :2], s[:, :2]))
    assert pm["mAP"] == pytest.approx(100 * np.mean(MM.average_precision(y, s)))
    assert pm["ap"] == [pytest.approx(100 * a) for a in MM.average_precision(y, s)]
    # a new class without positives in this phase: null in the AP list, never NaN
    y[:, 2] = 0
    pm = MM.phase_metrics(y, s, base=2)
    assert pm["ap"][2] is None and pm["classes_without_positives"] == [2] and not math.isnan(pm["mAP"])

    phases = [
        {
            "mAP": 50.0,
            "base_mAP": 50.0,
            "micro_f1": 40.0,
            "base_micro_f1": 40.0,
            "macro_f1": 30.0,
            "base_macro_f1": 30.0,
            "lwlrap": 60.0,
            "base_lwlrap": 60.0,
            "mAP_binarized": 20.0,
            "base_mAP_binarized": 20.0,
            "ap": [50.0],
        },
        {
            "mAP": 44.0,
            "base_mAP": 45.0,
            "micro_f1": 38.0,
            "base_micro_f1": 39.0,
            "macro_f1": 20.0,
            "base_macro_f1": 26.0,
            "lwlrap": 55.0,
            "base_lwlrap": 58.0,
            "mAP_binarized": None,
            "base_mAP_binarized": None,
            "ap": [45.0, None],
        },
        {
            "mAP": 41.0,
            "base_mAP": 42.0,
            "micro_f1": 35.0,
            "base_micro_f1": 37.0,
            "macro_f1": 25.0,
            "base_macro_f1": 32.0,
            "lwlrap": 50.0,
            "base_lwlrap": 57.0,
            "mAP_binarized": 10.0,
            "base_mAP_binarized": 15.0,
            "ap": [42.0, 40.0],
        },
    ]
    out = MM.summarize(phases)
    assert out["avg_mAP"] == pytest.approx((50 + 44 + 41) / 3) and out["final_mAP"] == 41.0
    assert out["fr"]["macro_f1"] == [4.0, -2.0] and out["forgetting_macro_f1"] == pytest.approx(1.0)  # negative Fr kept
    assert out["forgetting_mAP"] == pytest.approx((5 + 8) / 2)
    assert out["avg_mAP_binarized"] == pytest.approx(15.0) and out["fr"]["mAP_binarized"] == [
        None,
        5.0,
    ]  # undefined phase left out
    assert out["forgetting_mAP_binarized"] == 5.0
    assert out["ap_matrix"] == [[50.0], [45.0, None], [42.0, 40.0]]
    assert out["curves"]["base_macro_f1"] == [30.0, 26.0, 32.0]
    one = MM.summarize(phases[:1])
    assert one["forgetting_mAP"] is None and one["final_macro_f1"] == 30.0
