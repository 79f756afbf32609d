"""The harness's own class-incremental metrics, computed from the accuracy matrix.

Notation (all accuracies in percent):
- T steps, t = 0..T-1.
- R[t][j]: accuracy on the test samples of step j's classes after training step t, with every
  class seen so far (steps 0..t) as a candidate. Defined for j <= t.
- A_t: pooled accuracy after step t over all test samples of the seen classes (sample-weighted:
  A_t = sum_j n_j R[t][j] / sum_j n_j for j <= t, n_j = number of test samples of step j).

Every metric is one entry of `METRICS` (key, display name, formula, function): `summarize` stores what
those entries compute and the leaderboard footnotes print their formulas, so the two cannot drift.
Avalanche's metrics are not used. The MCIL-AudioCLIP metrics are in `benchmarks.metrics.mcil`.
"""

from __future__ import annotations

import math

import numpy as np

from benchmarks.metrics.registry import Metric, evaluate


def as_matrix(R) -> np.ndarray:
    """Lower-triangular R as a float array; entries above the diagonal are ignored (NaN)."""
    R = np.array([[np.nan if v is None else v for v in row] + [np.nan] * (len(R) - len(row)) for row in R], dtype=float)
    if R.ndim != 2 or R.shape[0] != R.shape[1]:
        raise ValueError(f"R must be square T x T (rows may be ragged lower-triangular), got shape {R.shape}")
    R[np.triu_indices(len(R), k=1)] = np.nan
    if np.isnan(R[np.tril_indices(len(R))]).any():
        raise ValueError("R has missing entries on or below the diagonal")
    return R


def pooled_accuracy(R, counts) -> list[float]:
    """A_t from R and the per-step test counts n_j (sample-weighted mean of the row)."""
    R = as_matrix(R)
    n = np.asarray(counts, dtype=float)
    return [float((R[t, : t + 1] * n[: t + 1]).sum() / n[: t + 1].sum()) for t in range(len(R))]


def average_incremental_accuracy(A) -> float:
    return float(np.mean(A))


def last_accuracy(A) -> float:
    return float(A[-1])


def avg_forgetting(R) -> float | None:
    """AV-CIL's average forgetting: mean over t >= 1 of the mean over old steps of best-so-far minus now."""
    R = as_matrix(R)
    T = len(R)
    if T < 2:
        return None
    per_step = [np.mean([R[j:t, j].max() - R[t, j] for j in range(t)]) for t in range(1, T)]
    return float(np.mean(per_step))


def final_forgetting(R) -> float | None:
    """Chaudhry's max-based forgetting at the last step."""
    R = as_matrix(R)
    T = len(R)
    if T < 2:
        return None
    return float(np.mean([R[j : T - 1, j].max() - R[T - 1, j] for j in range(T - 1)]))


def backward_transfer(R) -> float | None:
    """GEM's BWT: mean over old steps of (final accuracy - accuracy right after learning it)."""
    R = as_matrix(R)
    T = len(R)
    if T < 2:
        return None
    return float(np.mean([R[T - 1, j] - R[j, j] for j in range(T - 1)]))


#: the scalar metrics of one run, in the order the records store them
METRICS = (
    Metric(
        "avg_inc_acc",
        "Avg inc. acc.",
        "Average incremental accuracy = (1/T) sum_{t=0}^{T-1} A_t (step 0 included), A_t = pooled top-1 accuracy "
        "over the test samples of all classes seen after step t.",
        average_incremental_accuracy,
        ("A",),
    ),
    Metric("last_acc", "Last acc.", "Last accuracy = A_{T-1}.", last_accuracy, ("A",)),
    Metric(
        "avg_forgetting",
        "Avg forgetting",
        "Average forgetting (AV-CIL) = (1/(T-1)) sum_{t=1}^{T-1} F_t, "
        "F_t = mean_{j<t} (max_{j<=l<=t-1} R[l][j] - R[t][j]); may be negative.",
        avg_forgetting,
        ("R",),
        higher_is_better=False,
    ),
    Metric(
        "final_forgetting",
        "Final forgetting",
        "Final forgetting (Chaudhry et al. 2018) = (1/(T-1)) sum_{j=0}^{T-2} (max_{j<=l<=T-2} R[l][j] - R[T-1][j]).",
        final_forgetting,
        ("R",),
        higher_is_better=False,
    ),
    Metric(
        "bwt",
        "BWT",
        "BWT (Lopez-Paz & Ranzato 2017, GEM) = (1/(T-1)) sum_{j=0}^{T-2} (R[T-1][j] - R[j][j]).",
        backward_transfer,
        ("R",),
    ),
)


def summarize(R, A) -> dict[str, float | None]:
    """All scalar metrics of one run (`METRICS`, in order); None where a metric is undefined (a single step)."""
    return evaluate(METRICS, R=R, A=A)


def accuracy_matrix_from_predictions(pred, target, step_of_target, t: int):
    """Row t of R and A_t from predictions on the seen-class test set.

    `target` holds class-order positions and `step_of_target` the step of each sample's class.
    Returns (row, A_t, counts) with row[j] = accuracy (%) on step j's samples, j <= t.
    """
    pred, target, step = (np.asarray(x) for x in (pred, target, step_of_target))
    correct = pred == target
    row, counts = [], []
    for j in range(t + 1):
        m = step == j
        counts.append(int(m.sum()))
        row.append(float(100.0 * correct[m].mean()) if m.any() else math.nan)
    return row, float(100.0 * correct.mean()), counts
