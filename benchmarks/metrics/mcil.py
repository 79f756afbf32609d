"""MCIL-AudioCLIP's metrics: continuum-1.2.7 forgetting / BWT / FWT, the task similarity and Metrics 1 and 2.

Why a module of their own: they reproduce one reference's code, quirks included (continuum 1.2.7's off-by-one
forgetting, its "FWT" that is a mean past accuracy, the softmax "mutual information"), so they must never be
mistaken for the harness's standard metrics in `benchmarks.metrics.accuracy`.

Sources (see ../shared/reference/mcil_audioclip.md, sections 3.8, 3.9 and 4):
- continuum 1.2.7 `continuum/metrics/metrics.py` (Continvvm/continuum): `backward_transfer`
  (lines 57-84), `forward_transfer` (123-147), `forgetting` (150-174). The MCIL code reads
  them through `continuum.metrics.Logger` after evaluating task t and before `end_task()`, so
  the value "after task t" is the function applied to R[:t+1, :t+1].
- chenyukun924/MCIL-AudioCLIP @ dd7723f: `main.py:66-93` (task similarity, per-task
  forgetting/BWT/FWT), `main.py:114-121` (Metric 1 and Metric 2), `continual_clip/models.py`
  `MyLoss.mutual_information` (:89-94) and `normalized_mutual_information` (:114-124).

Scale convention used throughout: every *input* accuracy is in percent, like `accuracy` (R, A).
The continuum functions return percent too (= continuum's fraction x 100; exact, since they are
linear in R). The metric functions convert explicitly: Metric 1 works in percent (as main.py does:
`100 * forgetting`, avg in %), Metric 2 converts A, BWT_t and FWT_t to fractions (as main.py does:
`acc_list1`, un-scaled bwt/fwt).

Every metric is one entry of `METRICS`; the leaderboard prints their formulas (M1, M2 columns).
"""

from __future__ import annotations

import numpy as np

from benchmarks.metrics.accuracy import as_matrix
from benchmarks.metrics.registry import Metric


def continuum_forgetting(R) -> float:
    """continuum 1.2.7's `forgetting` over the full T x T matrix, in percent.

        F = (1/(T-1)) * sum_{j=0}^{T-3} [ max_{l=j..T-3} R[l][j] - R[T-1][j] ],   F = 0 for T <= 2.

    Source: continuum 1.2.7 `continuum/metrics/metrics.py:150-174` (`for j in range(k - 2)`,
    `max(... for l in range(k - 2) if l >= j)`, `f / (k - 1)`); this off-by-one was fixed on
    continuum master after 1.2.7 (continuum issues #281, #291), but 1.2.7 is what MCIL pins.

    How it differs from `accuracy.final_forgetting` (Chaudhry et al. 2018):
    - the last previous task j = T-2 is never scored (its term is dropped);
    - the "best previous" max excludes row T-2 (l <= T-3, not l <= T-2);
    - the sum of T-2 terms is still divided by T-1.
    Hence it is 0 at T = 2 whatever R is, and shrunk towards 0 afterwards. It can be negative.
    The T = 1 value is 0 (continuum returns 0., not None) so that `continuum_series` starts at 0.
    """
    R = as_matrix(R)
    T = len(R)
    if T <= 2:
        return 0.0
    total = sum(R[j : T - 2, j].max() - R[T - 1, j] for j in range(T - 2))
    return float(total / (T - 1))


def continuum_backward_transfer(R) -> float:
    """continuum 1.2.7's `backward_transfer` over the full T x T matrix, in percent.

        BWT = sum_{i=1}^{T-1} sum_{j=0}^{i-2} (R[i][j] - R[j][j]) / (T(T-1)/2),   BWT = 0 for T <= 2.

    Source: continuum 1.2.7 `continuum/metrics/metrics.py:57-84` (`for i in range(1, T)`,
    `for j in range(0, i - 1)`, `bwt / (T * (T - 1) / 2)`).

    How it differs from `accuracy.backward_transfer` (GEM, last row only, / (T-1)):
    - it averages over every row i, not only the final one;
    - it skips j = i-1 (the task learnt just before i), so it is 0 at T = 2;
    - it divides the (T-1)(T-2)/2 summed terms by T(T-1)/2, the number of pairs j < i.
    """
    R = as_matrix(R)
    T = len(R)
    if T <= 1:
        return 0.0
    total = sum(R[i, j] - R[j, j] for i in range(1, T) for j in range(i - 1))
    return float(total / (T * (T - 1) / 2))


def continuum_forward_transfer(R) -> float:
    """continuum 1.2.7's `forward_transfer` over the full T x T matrix, in percent.

        FWT = sum_{i=0}^{T-1} sum_{j=0}^{i-1} R[i][j] / (T(T-1)/2),   FWT = 0 for T <= 1.

    Source: continuum 1.2.7 `continuum/metrics/metrics.py:123-147` (`for i in range(T)`,
    `for j in range(i)`, `fwt / (T * (T - 1) / 2)`).

    Despite its docstring (GEM), this is the mean of the strictly-below-diagonal entries of R,
    i.e. the mean accuracy on *past* tasks; GEM's FWT (accuracy on a task before training on it,
    minus a random-init baseline) is not computed. It is >= 0 and grows with retained accuracy.
    """
    R = as_matrix(R)
    T = len(R)
    if T <= 1:
        return 0.0
    total = sum(R[i, j] for i in range(T) for j in range(i))
    return float(total / (T * (T - 1) / 2))


def continuum_series(R) -> dict[str, list[float]]:
    """The continuum-1.2.7 values after every task t, each computed on R[:t+1, :t+1] (percent).

    Returns {"forgetting": [F_0..F_{T-1}], "bwt": [...], "fwt": [...]}, each of length T; the
    t = 0 entries are 0 and F_1 = BWT_1 = 0 by construction. This is what the MCIL code stores in
    `forgetting_dict` / `bwt_dict` / `fwt_dict` (`main.py:91-93`), up to its scale and rounding:
    it keeps forgetting x100 rounded to 4 decimals and bwt/fwt as fractions rounded to 4 decimals.
    """
    R = as_matrix(R)
    T = len(R)
    subs = [R[: t + 1, : t + 1] for t in range(T)]
    return {
        "forgetting": [continuum_forgetting(r) for r in subs],
        "bwt": [continuum_backward_transfer(r) for r in subs],
        "fwt": [continuum_forward_transfer(r) for r in subs],
    }


def _softmax_terms(x, y):
    """(p_xy, log p_xy, p_x, log p_x, p_y, log p_y) along the last dim, as torch tensors."""
    import torch
    import torch.nn.functional as F

    x = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    y = y if isinstance(y, torch.Tensor) else torch.as_tensor(y)
    z = x * y
    return (
        F.softmax(z, dim=-1),
        F.log_softmax(z, dim=-1),
        F.softmax(x, dim=-1),
        F.log_softmax(x, dim=-1),
        F.softmax(y, dim=-1),
        F.log_softmax(y, dim=-1),
    )


def softmax_mutual_information(x, y):
    """The MCIL "mutual information" of two feature batches (torch, differentiable; 0-dim tensor).

        p_xy = softmax(x * y), p_x = softmax(x), p_y = softmax(y)   (elementwise product; softmax
                                                                     over the last/feature dim)
        MI(x, y) = sum_{b, d} p_xy[b, d] * (log p_xy[b, d] - log p_x[b, d] - log p_y[b, d])

    summed over the batch and the feature dim (not averaged). Source: MCIL-AudioCLIP
    `continual_clip/models.py:89-94` (`MyLoss.mutual_information`, which returns -MI: the
    training loss is L_MI = -MI(f, v) - MI(f, a)); this function returns +MI.

    Inputs: torch tensors (anything else goes through `torch.as_tensor`), shape (..., D), same
    shape for x and y. Gradients flow to both inputs. Logs use `log_softmax`, mathematically equal
    to the reference's `torch.log(F.softmax(.))` and with no epsilon either; it only differs where
    a softmax entry underflows to 0, where the reference gives NaN (0 * -inf) and this gives the
    0 contribution of the limit. Not a true mutual information: p_xy is not a joint of p_x and p_y;
    each row's term is KL(p_xy || p_x p_y) against a sub-normalised product, so it is >= 0.
    """
    p_xy, lp_xy, _, lp_x, _, lp_y = _softmax_terms(x, y)
    return (p_xy * (lp_xy - lp_x - lp_y)).sum()


def softmax_nmi(x, y):
    """The MCIL "normalised mutual information" NMI(x, y) (torch; 0-dim tensor).

        NMI(x, y) = MI(x, y) / sqrt(H(x) * H(y)),
        H(x) = -sum_{b, d} p_x log p_x,  H(y) = -sum_{b, d} p_y log p_y

    with MI from `softmax_mutual_information` and the entropies of the same softmax
    distributions, each summed over the batch and the feature dim (so NMI is a ratio of batch
    sums, not a mean of per-sample NMIs). No epsilon (as in the reference). Source: MCIL-AudioCLIP
    `continual_clip/models.py:114-124` (`normalized_mutual_information`), called at inference as
    NMI(v, f) and NMI(a, f) (`models.py` `AudioCLIP.forward`). Symmetric in x, y.

    It is not bounded by 1 and NMI(x, x) != 1 in general (it is 1 when every row of x is
    constant, i.e. all three softmaxes are uniform). In the released code f = v, so the
    reference's NMI(v, f) is NMI(v, v).
    """
    p_xy, lp_xy, p_x, lp_x, p_y, lp_y = _softmax_terms(x, y)
    mi = (p_xy * (lp_xy - lp_x - lp_y)).sum()
    h_x = -(p_x * lp_x).sum()
    h_y = -(p_y * lp_y).sum()
    return mi / (h_x * h_y).sqrt()


def _vec64(v):
    import torch

    if isinstance(v, torch.Tensor):
        return v.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    return torch.as_tensor(np.asarray(v, dtype=np.float64)).reshape(-1)


def task_similarity_parts(text_means, image_means) -> tuple[list[float], list[float]]:
    """(text part, image part) of the MCIL task similarity, each cos/2 + 1/2 against the previous step.

    text_t = cos(e_t, e_{t-1})/2 + 1/2, image_t = cos(p_t, p_{t-1})/2 + 1/2 for t >= 1, both 1 at
    t = 0. The cosine is `torch.nn.functional.cosine_similarity` (eps 1e-8) in float64, as the
    reference uses (`models.py` `ClassIncremental.cosine_similarity`, dim=0). The reference logs
    only the image part as `task_similarity` (`main.py:98`).
    """
    import torch.nn.functional as F

    if len(text_means) != len(image_means):
        raise ValueError(
            f"text_means and image_means must have one vector per step, got {len(text_means)} and {len(image_means)}"
        )

    def half_cos(a, b):
        return float(F.cosine_similarity(_vec64(a), _vec64(b), dim=0)) / 2 + 0.5

    text = [1.0] + [half_cos(text_means[t], text_means[t - 1]) for t in range(1, len(text_means))]
    image = [1.0] + [half_cos(image_means[t], image_means[t - 1]) for t in range(1, len(image_means))]
    return text, image


def task_similarity(text_means, image_means) -> list[float]:
    """MCIL task similarity s_t for every step (in [0, 1]).

        s_0 = 1,
        s_t = 1/2 (cos(e_t, e_{t-1})/2 + 1/2) + 1/2 (cos(p_t, p_{t-1})/2 + 1/2),   t >= 1.

    Source: MCIL-AudioCLIP `main.py:72-88`. Inputs are one vector per step (numpy arrays, lists
    or torch tensors; converted to float64):
    - e_t: mean of the *unnormalised* text embeddings (single eval prompt) of all classes seen up
      to t (`embeddings_dict`; the reference encodes them in `adaptation()` before training step
      t, i.e. with the model of step t-1);
    - p_t: mean L2-normalised image feature after step t. The reference takes the mean over the
      *last eval batch* only; the harness default is the whole test set of the seen classes.
    Consecutive steps are compared (t with t-1), not each step with step 0.
    """
    text, image = task_similarity_parts(text_means, image_means)
    return [t / 2 + i / 2 for t, i in zip(text, image)]


def mcil_metric1(A, F_series, s, *, reference_rounding: bool = False) -> float:
    """MCIL Metric 1 (0-100 scale): similarity-weighted, forgetting-aware accuracy.

        M1 = Abar / 2 + [ (1/T) sum_{t=0}^{T-1} (1 - s_t) (100 - F_t) ] / 2

    - A: A_t in percent (Abar = mean_t A_t, the average incremental accuracy, step 0 included);
    - F_series: continuum-1.2.7 forgetting after each t, in percent (`continuum_series`);
    - s: task similarities s_t (`task_similarity`), s_0 = 1 so the t = 0 term is 0.
    Source: MCIL-AudioCLIP `main.py:114` (acc_avg) and `main.py:117-118`. With
    `reference_rounding`, Abar is rounded to 2 decimals and every F_t to 4 decimals first, as
    main.py does (`round(statistics.mean(acc_list), 2)`, `round(100 * forgetting, 4)`).
    """
    T = len(A)
    if not (len(F_series) == len(s) == T) or T == 0:
        raise ValueError(f"A, F_series and s must have one entry per step, got {len(A)}, {len(F_series)}, {len(s)}")
    abar = float(np.mean(A))
    F = [float(f) for f in F_series]
    if reference_rounding:
        abar = round(abar, 2)
        F = [round(f, 4) for f in F]
    weighted = sum((1 - float(st)) * (100 - ft) for st, ft in zip(s, F)) / T
    return abar / 2 + weighted / 2


def mcil_metric2(A, bwt_series, fwt_series, nmi_vf, nmi_af, *, reference_rounding: bool = False) -> float:
    """MCIL Metric 2 (about 0-1 scale): transfer + fusion-information score.

        M2 = 1/2 [ 1/2 Abar_frac + 1/2 (1/T) sum_{t=0}^{T-1} (BWT_t + FWT_t) ] + 1/2 [ 1/2 NMI(v,f) + 1/2 NMI(a,f) ]

    - A: A_t in percent; converted here: Abar_frac = mean_t A_t / 100;
    - bwt_series, fwt_series: continuum-1.2.7 values after each t in percent (`continuum_series`);
      converted here to fractions (/ 100), as main.py uses the raw continuum fractions;
    - nmi_vf, nmi_af: `softmax_nmi(v, f)` and `softmax_nmi(a, f)` (floats or 0-dim tensors). The
      reference uses the values of the last eval batch of the last task.
    Source: MCIL-AudioCLIP `main.py:115` (acc_avg1) and `main.py:120-121`. With
    `reference_rounding`, Abar_frac and every BWT_t, FWT_t (as fractions) are rounded to 4
    decimals first, as main.py does (`round(..., 4)` at `main.py:92-93, 115`).
    """
    T = len(A)
    if not (len(bwt_series) == len(fwt_series) == T) or T == 0:
        raise ValueError(
            "A, bwt_series and fwt_series must have one entry per step, "
            f"got {len(A)}, {len(bwt_series)}, {len(fwt_series)}"
        )
    abar = float(np.mean(A)) / 100
    bwt = [float(b) / 100 for b in bwt_series]
    fwt = [float(f) / 100 for f in fwt_series]
    if reference_rounding:
        abar = round(abar, 4)
        bwt = [round(b, 4) for b in bwt]
        fwt = [round(f, 4) for f in fwt]
    transfer = sum(b + f for b, f in zip(bwt, fwt)) / T
    return (abar / 2 + transfer / 2) / 2 + (float(nmi_vf) * 0.5 + float(nmi_af) * 0.5) / 2


def mcil_metrics(R, A, text_means, image_means, nmi_vf, nmi_af, *, reference_rounding: bool = False) -> dict:
    """Both MCIL metrics of one run plus the continuum series they are built from.

    R (percent, T x T lower-triangular) gives the continuum-1.2.7 series (`continuum_series`),
    A (percent) the accuracies, text_means / image_means (one vector per step) the task
    similarity, nmi_vf / nmi_af the fusion NMIs. Returns
    {"m1", "m2", "avg_inc_acc" (%), "task_similarity", "forgetting", "bwt", "fwt" (series, %)}.

    The function does not care where the prototypes and NMIs come from. The reference
    (MCIL-AudioCLIP main.py) uses the *last eval batch*: p_t = mean normalised image feature of
    the last batch evaluated after step t, NMIs of the last batch after the last step. The harness
    default is the *whole evaluation set* (p_t over the whole test set of the seen classes, NMI
    over the whole test set); that is the variant shown, and the caller records which was used
    (`variant: "whole-set" | "last-batch"`).
    """
    R_ = as_matrix(R)
    T = len(R_)
    if not (len(A) == len(text_means) == len(image_means) == T):
        raise ValueError(
            f"R, A, text_means and image_means must cover the same {T} steps, "
            f"got {len(A)}, {len(text_means)}, {len(image_means)}"
        )
    series = continuum_series(R_)
    s = task_similarity(text_means, image_means)
    return {
        "m1": mcil_metric1(A, series["forgetting"], s, reference_rounding=reference_rounding),
        "m2": mcil_metric2(A, series["bwt"], series["fwt"], nmi_vf, nmi_af, reference_rounding=reference_rounding),
        "avg_inc_acc": float(np.mean(A)),
        "task_similarity": s,
        **series,
    }


#: the MCIL metrics and the continuum-1.2.7 quantities they are built from; M1 and M2 are leaderboard columns
#: (results.csv `mcil_m1`, `mcil_m2`), stored in records as results.method_metrics[variant]["m1" | "m2"]
METRICS = (
    Metric(
        "mcil_m1",
        "MCIL M1",
        "M1 = Ā/2 + (1/T) Σ_t (1 − s_t)(100 − F_t)/2, Ā the average incremental accuracy (%), F_t continuum-1.2.7 "
        "forgetting after step t (%), s_t the task similarity (s_0 = 1; mean of the rescaled cosines of consecutive "
        "steps' mean text embedding and mean test image feature). MCIL-AudioCLIP's Metric 1 as released, with the "
        "image mean over the whole test set (the release: its last batch; that form is in results.csv as "
        "*_last_batch).",
        mcil_metric1,
        ("A", "F_series", "s"),
        source='results.method_metrics["whole-set"]["m1"]',
    ),
    Metric(
        "mcil_m2",
        "MCIL M2",
        "M2 = ½[½Ā_frac + ½(1/T) Σ_t (BWT_t + FWT_t)] + ½[½NMI(v,f) + ½NMI(a,f)] (0–1 scale), continuum-1.2.7 "
        "BWT/FWT (fractions), softmax NMIs of image v / audio a against the fused feature f over the whole test set "
        "after the last step (the release: its last batch). Only methods with text prototypes and a fusion report "
        "them.",
        mcil_metric2,
        ("A", "bwt_series", "fwt_series", "nmi_vf", "nmi_af"),
        source='results.method_metrics["whole-set"]["m2"]',
    ),
    Metric(
        "continuum_forgetting",
        "continuum forgetting",
        "continuum-1.2.7 forgetting after T tasks = (1/(T-1)) sum_{j=0}^{T-3} "
        "(max_{j<=l<=T-3} R[l][j] - R[T-1][j]); 0 for T <= 2 (the last previous task is skipped, the denominator "
        "is not reduced).",
        continuum_forgetting,
        ("R",),
        higher_is_better=False,
        source='results.method_metrics[variant]["forgetting"]',
    ),
    Metric(
        "continuum_bwt",
        "continuum BWT",
        "continuum-1.2.7 BWT after T tasks = sum_{i=1}^{T-1} sum_{j=0}^{i-2} (R[i][j] - R[j][j]) / (T(T-1)/2); "
        "0 for T <= 2 (j = i-1 is skipped).",
        continuum_backward_transfer,
        ("R",),
        source='results.method_metrics[variant]["bwt"]',
    ),
    Metric(
        "continuum_fwt",
        "continuum FWT",
        "continuum-1.2.7 FWT after T tasks = sum_{i=1}^{T-1} sum_{j=0}^{i-1} R[i][j] / (T(T-1)/2): the mean "
        "below-diagonal accuracy (accuracy on past tasks), not GEM's FWT; 0 for T <= 1.",
        continuum_forward_transfer,
        ("R",),
        source='results.method_metrics[variant]["fwt"]',
    ),
    Metric(
        "task_similarity",
        "task similarity",
        "s_0 = 1; s_t = (cos(e_t, e_{t-1})/2 + 1/2)/2 + (cos(p_t, p_{t-1})/2 + 1/2)/2, e_t = mean text embedding of "
        "the classes seen up to t, p_t = mean normalised image feature after t.",
        task_similarity,
        ("text_means", "image_means"),
        higher_is_better=None,
        source='results.method_metrics[variant]["task_similarity"]',
    ),
    Metric(
        "softmax_nmi",
        "softmax NMI",
        "MI(x,y) = sum_{b,d} p_xy (log p_xy - log p_x - log p_y), p_xy = softmax(x*y), p_x = softmax(x), "
        "p_y = softmax(y) over the feature dim; NMI = MI / sqrt(H(x) H(y)), H summed over batch and dims.",
        softmax_nmi,
        ("x", "y"),
        higher_is_better=None,
        source="the nmi_vf / nmi_af inputs of mcil_m2",
    ),
)
