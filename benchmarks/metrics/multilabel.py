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
- **macro-F1** = mean over all seen classes of F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c), threshold 0.5; a class
  with 0/0 (no positive and no predicted positive) counts as F1_c = 0. This is sklearn's
  `f1_score(average="macro", zero_division=0)`, the reference's call (`main_audioset.py` `evaluate_bin`:
  `f1_score(Y_ref, Y_predicted, average='macro')`, whose default zero_division "warn" gives 0).
- **lwlrap** (label-weighted label-ranking average precision, DCASE 2019 task 2): the mean over all
  positive (clip, class) pairs of (positives of the clip scored >= s_c) / (classes of the clip
  scored >= s_c), from the scores. Ties count against the class (as sklearn's
  `label_ranking_average_precision_score`); clips without a positive label contribute nothing.
- **base_<metric>**: the same on the 30 base-class columns only (the reference's `_ini` values).

Undefined values, never NaN: a class with no positive test clip in a phase has no AP (it is left
out of mAP, and its entry in the per-class AP matrix is null); a class whose F1 is 0/0 (no
positive and no predicted positive) has a null entry in the per-class F1 list but counts as 0 in
macro-F1 (as sklearn and the reference); micro-F1 with no positive and no predicted positive at all,
or a mean over no class, is null (shown n/a). A class with no positive but with false alarms has
F1_c = 0.

Summary over the phases t = 0..T-1 (`summarize`):
- avg_<m> = (1/T) sum_t m_t (the paper's "average F1 over the five phases"; phases where m_t is
  undefined are left out);
- final_<m> = m_{T-1};
- forgetting_<m> = mean over t >= 1 of Fr_t, Fr_t = base_m_0 - base_m_t: the drop on the base
  classes relative to phase 0 (the reference's Fr; the ICASSP abstract's 0.7 points is this mean
  for F1). Positive = forgetting.

Every per-phase metric is one entry of `PHASE_METRICS` and every summary one entry of `METRICS` (key, display
name, formula, function): `summarize` stores what the `METRICS` entries compute, and the leaderboard footnotes
print the formulas of both, so code and page cannot drift.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from benchmarks.metrics.registry import Metric, evaluate


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
    """Mean over every class of F1_c, a 0/0 class counting 0: sklearn `f1_score(average="macro",
    zero_division=0)`, as the reference computes it. None when there is no class."""
    f1 = f1_per_class(y, s, threshold)
    return float(np.mean([0.0 if v is None else v for v in f1])) if f1 else None


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


def phase_average(phases: list[dict], metric: str) -> float | None:
    """avg_<metric>: the mean over the phases where the metric is defined."""
    return mean_defined([p.get(metric) for p in phases])


def phase_final(phases: list[dict], metric: str) -> float | None:
    """final_<metric>: the value after the last phase."""
    curve = [p.get(metric) for p in phases]
    return curve[-1] if curve else None


def phase_forgetting(phases: list[dict], metric: str) -> float | None:
    """forgetting_<metric>: the mean of Fr_t over t >= 1 (`forgetting`)."""
    return mean_defined(forgetting(phases, metric))


#: the metrics of one phase (stored x 100 in percent by `phase_metrics`; `compute` returns the fraction)
PHASE_METRICS = (
    Metric(
        "mAP",
        "mAP (scores)",
        "mAP_t = mean over the seen classes with ≥ 1 positive test clip of AP_c from the sigmoid scores (sklearn "
        "average_precision_score), after phase t on its cumulative test set.",
        mean_ap,
        ("y", "s"),
    ),
    Metric(
        "micro_f1",
        "micro-F1",
        "micro_f1_t = 2ΣTP / (2ΣTP + ΣFP + ΣFN) over all (clip, seen class) pairs, prediction = 1[σ(z) > 0.5].",
        micro_f1,
        ("y", "s"),
    ),
    Metric(
        "macro_f1",
        "macro-F1",
        "macro_f1_t = mean over all seen classes of 2TP_c / (2TP_c + FP_c + FN_c) at 0.5; a class with no positive "
        "and no predicted positive (0/0) counts as 0 (sklearn f1_score(average='macro', zero_division=0), as the "
        "reference).",
        macro_f1,
        ("y", "s"),
    ),
    Metric(
        "lwlrap",
        "lwlrap",
        "lwlrap_t = mean over the positive (clip, seen class) pairs of (positives of the clip scored ≥ s_c) / "
        "(classes of the clip scored ≥ s_c), from the scores (label-weighted LRAP, DCASE 2019 task 2).",
        lwlrap,
        ("y", "s"),
    ),
    Metric(
        "mAP_binarized",
        "mAP (thresholded, as the papers)",
        "mAP_binarized_t = the mean of AP_c as for mAP_t, but computed on the thresholded predictions "
        "1[σ(z) > 0.5] instead of the scores, which reduces to AP_c = R_c P_c + (1 − R_c) π_c (recall, precision "
        "and positive rate of class c). The number the reference's tables report: compare the papers with this "
        "one, not with mAP (scores).",
        mean_ap_binarized,
        ("y", "s"),
    ),
)

#: how a per-phase curve becomes one number: (key prefix, display prefix, formula of {m} (the per-phase key),
#: function, higher is better)
SUMMARIES = (
    ("avg", "Avg", "(1/T) Σ_t {m}_t over the phases t = 0..T-1 where it is defined.", phase_average, True),
    ("final", "Final", "{m}_{{T-1}}: after the last phase, over all classes.", phase_final, True),
    (
        "forgetting",
        "Forgetting",
        "mean over t ≥ 1 of Fr_t = {m} on the base classes at phase 0 − at phase t (the reference's Fr; positive = "
        "forgetting).",
        phase_forgetting,
        False,
    ),
)


def summary_metrics(phase: Metric) -> tuple[Metric, ...]:
    """The avg_ / final_ / forgetting_ entries of one per-phase metric."""
    return tuple(
        Metric(
            f"{prefix}_{phase.key}",
            f"{title} {phase.name}",
            formula.format(m=phase.key),
            partial(reduce, metric=phase.key),
            ("phases",),
            higher_is_better=better,
            per_phase=phase.key,
        )
        for prefix, title, formula, reduce, better in SUMMARIES
    )


#: the summaries of each per-phase metric
SUMMARIES_OF = {phase.key: summary_metrics(phase) for phase in PHASE_METRICS}
#: the summaries stored in a record's results.metrics, grouped by per-phase metric (the records' order)
METRICS = tuple(m for group in SUMMARIES_OF.values() for m in group)


def summarize(phases: list[dict]) -> dict:
    """The `METRICS` summaries of every per-phase metric, the per-phase curves, Fr_t and the AP matrix."""
    out: dict = {}
    for phase in PHASE_METRICS:
        m = phase.key
        out.update(evaluate(SUMMARIES_OF[m], phases=phases))
        out.setdefault("curves", {})[m] = [p.get(m) for p in phases]
        out["curves"]["base_" + m] = [p.get("base_" + m) for p in phases]
        out.setdefault("fr", {})[m] = forgetting(phases, m)
    out["ap_matrix"] = [p.get("ap") for p in phases]
    return out
