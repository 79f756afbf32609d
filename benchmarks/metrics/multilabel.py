"""Multi-label CIL metrics (../shared/reference/multilabel_audio.md section 7; cil_toolboxes.md 3.6).

Evaluated after every phase t on that phase's cumulative test set, over the classes seen so far
(30 + 5t columns), from sigmoid scores s in [0, 1] and multi-hot labels y. Values in percent.

- **mAP**: mean over classes of AP_c = sklearn `average_precision_score(y_c, s_c)` from the scores
  (step-wise precision-recall area, the standard definition).
- **mAP_binarized**: the reference's number: the same AP computed on the thresholded predictions
  1[s > 0.5] instead of the scores, which reduces to AP_c = R_c P_c + (1 - R_c) pi_c (pi_c = the
  class's positive rate). Reported for comparison with the reference's tables only.
- **micro-F1** = 2 sum TP / (2 sum TP + sum FP + sum FN) over all (clip, class) pairs, threshold 0.5
  (prediction = 1[s > 0.5], as the reference).
- **macro-F1** = mean over classes of F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c), threshold 0.5.
- **lwlrap** (label-weighted label-ranking average precision, DCASE 2019 task 2): the mean over all
  positive (clip, class) pairs of (positives of the clip scored >= s_c) / (classes of the clip
  scored >= s_c), from the scores. Ties count against the class (as sklearn's
  `label_ranking_average_precision_score`); clips without a positive label contribute nothing.
- **base_<metric>**: the same on the 30 base-class columns only (the reference's `_ini` values).

Undefined values, never NaN: a class with no positive test clip in a phase has no AP (it is left
out of mAP, and its entry in the per-class AP matrix is null); a class whose F1 is 0/0 (no
positive and no predicted positive) is left out of macro-F1; micro-F1 with no positive and no
predicted positive at all, or a mean over no defined class, is null (shown n/a). A class with no
positive but with false alarms has F1_c = 0 and counts.

Summary over the phases t = 0..T-1 (`summarize`):
- avg_<m> = (1/T) sum_t m_t (the paper's "average F1 over the five phases"; phases where m_t is
  undefined are left out);
- final_<m> = m_{T-1};
- forgetting_<m> = mean over t >= 1 of Fr_t, Fr_t = base_m_0 - base_m_t: the drop on the base
  classes relative to phase 0 (the reference's Fr; the ICASSP abstract's 0.7 points is this mean
  for F1). Positive = forgetting.
"""
from __future__ import annotations

import math

import numpy as np

METRICS = ("mAP", "micro_f1", "macro_f1", "lwlrap", "mAP_binarized")
NAMES = {"mAP": "mAP", "micro_f1": "micro-F1", "macro_f1": "macro-F1", "lwlrap": "lwlrap", "mAP_binarized": "mAP (binarised, reference)"}


def _pct(v):
    return None if v is None else 100.0 * float(v)


def average_precision(y: np.ndarray, s: np.ndarray) -> list[float | None]:
    """AP per class (column) from scores; None for a class without positives."""
    from sklearn.metrics import average_precision_score

    y, s = np.asarray(y), np.asarray(s, dtype=np.float64)
    out: list[float | None] = []
    for c in range(y.shape[1]):
        out.append(float(average_precision_score(y[:, c], s[:, c])) if y[:, c].any() else None)
    return out


def mean_defined(values) -> float | None:
    v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(v)) if v else None


def mean_ap(y, s) -> float | None:
    return mean_defined(average_precision(y, s))


def binarize(s, threshold: float = 0.5) -> np.ndarray:
    return (np.asarray(s) > threshold).astype(np.int64)


def mean_ap_binarized(y, s, threshold: float = 0.5) -> float | None:
    """The reference's mAP: AP of the thresholded predictions (see the module docstring)."""
    return mean_ap(y, binarize(s, threshold).astype(np.float64))


def f1_counts(y, yhat) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y, yhat = np.asarray(y).astype(bool), np.asarray(yhat).astype(bool)
    return (y & yhat).sum(0), (~y & yhat).sum(0), (y & ~yhat).sum(0)


def micro_f1(y, s, threshold: float = 0.5) -> float | None:
    tp, fp, fn = (int(v.sum()) for v in f1_counts(y, binarize(s, threshold)))
    den = 2 * tp + fp + fn
    return 2 * tp / den if den else None


def f1_per_class(y, s, threshold: float = 0.5) -> list[float | None]:
    tp, fp, fn = f1_counts(y, binarize(s, threshold))
    den = 2 * tp + fp + fn
    return [float(2 * a / d) if d else None for a, d in zip(tp, den)]


def macro_f1(y, s, threshold: float = 0.5) -> float | None:
    return mean_defined(f1_per_class(y, s, threshold))


def lwlrap(y, s) -> float | None:
    """Label-weighted LRAP from scores; ties ranked against the class (see the module docstring)."""
    y, s = np.asarray(y).astype(bool), np.asarray(s, dtype=np.float64)
    total, acc = 0, 0.0
    for yi, si in zip(y, s):
        pos = np.flatnonzero(yi)
        if not len(pos):
            continue
        for c in pos:
            above = si >= si[c]
            acc += above[yi].sum() / above.sum()
        total += len(pos)
    return acc / total if total else None


def phase_metrics(y, s, base: int, threshold: float = 0.5) -> dict:
    """Every metric of one phase, in percent, on all columns and on the first `base` columns,
    plus the per-class AP and F1 (percent, null where undefined) and positive counts."""
    y, s = np.asarray(y), np.asarray(s, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    ap = average_precision(y, s)
    out = {"n_clips": int(len(y)), "n_classes": int(y.shape[1]), "threshold": threshold}
    for prefix, cols in (("", slice(None)), ("base_", slice(0, base))):
        yy, ss = y[:, cols], s[:, cols]
        out[prefix + "mAP"] = _pct(mean_defined(ap[cols]))
        out[prefix + "mAP_binarized"] = _pct(mean_ap_binarized(yy, ss, threshold))
        out[prefix + "micro_f1"] = _pct(micro_f1(yy, ss, threshold))
        out[prefix + "macro_f1"] = _pct(macro_f1(yy, ss, threshold))
        out[prefix + "lwlrap"] = _pct(lwlrap(yy, ss))
    out["ap"] = [_pct(v) for v in ap]
    out["f1"] = [_pct(v) for v in f1_per_class(y, s, threshold)]
    out["positives"] = [int(v) for v in y.sum(0)]
    out["classes_without_positives"] = [int(c) for c in np.flatnonzero(y.sum(0) == 0)]
    return out


def forgetting(phases: list[dict], metric: str) -> list[float | None]:
    """Fr_t = base_<metric> at phase 0 minus at phase t, for t = 1..T-1 (None where undefined)."""
    first = phases[0].get("base_" + metric) if phases else None
    out = []
    for p in phases[1:]:
        v = p.get("base_" + metric)
        out.append(None if first is None or v is None else first - v)
    return out


def summarize(phases: list[dict]) -> dict:
    """avg_/final_/forgetting_ of every metric, the per-phase curves, Fr_t and the AP matrix."""
    out: dict = {}
    for m in METRICS:
        curve = [p.get(m) for p in phases]
        out[f"avg_{m}"] = mean_defined(curve)
        out[f"final_{m}"] = curve[-1] if curve else None
        fr = forgetting(phases, m)
        out[f"forgetting_{m}"] = mean_defined(fr)
        out.setdefault("curves", {})[m] = curve
        out["curves"]["base_" + m] = [p.get("base_" + m) for p in phases]
        out.setdefault("fr", {})[m] = fr
    out["ap_matrix"] = [p.get("ap") for p in phases]
    return out


HEADLINE = ("avg_mAP", "avg_micro_f1", "avg_macro_f1", "final_mAP", "final_micro_f1", "final_macro_f1", "forgetting_macro_f1", "forgetting_mAP")
HEADLINE_NAMES = {
    "avg_mAP": "Avg mAP", "avg_micro_f1": "Avg micro-F1", "avg_macro_f1": "Avg macro-F1",
    "final_mAP": "Final mAP", "final_micro_f1": "Final micro-F1", "final_macro_f1": "Final macro-F1",
    "forgetting_macro_f1": "Forgetting macro-F1", "forgetting_mAP": "Forgetting mAP",
}
FORMULAS = {
    "avg_mAP": "(1/T) Σ_t mAP_t; mAP_t = mean over the seen classes with ≥ 1 positive test clip of AP_c from the sigmoid scores (sklearn average_precision_score), on phase t's cumulative test set.",
    "avg_micro_f1": "(1/T) Σ_t micro-F1_t; micro-F1 = 2ΣTP / (2ΣTP + ΣFP + ΣFN) over all (clip, seen class) pairs, prediction = 1[σ(z) > 0.5].",
    "avg_macro_f1": "(1/T) Σ_t macro-F1_t; macro-F1 = mean over the seen classes of 2TP_c / (2TP_c + FP_c + FN_c) at 0.5 (classes with 0/0 left out).",
    "final_mAP": "mAP after the last phase (all 50 classes).",
    "final_micro_f1": "micro-F1 after the last phase.",
    "final_macro_f1": "macro-F1 after the last phase.",
    "forgetting_macro_f1": "mean over t ≥ 1 of Fr_t = macro-F1 on the 30 base classes at phase 0 − at phase t (the reference's Fr; positive = forgetting).",
    "forgetting_mAP": "mean over t ≥ 1 of base-class mAP at phase 0 − at phase t.",
}
