"""Loss terms and closed-form steps of the standard continual-learning strategies, as plain tensor functions.

Each one states the avalanche-lib 0.6.0 source it follows (file and line in
`avalanche/training/...`) or the paper where avalanche is wrong or absent, and is tested on
hand-checkable tensors in `tests/methods/test_cl_strategies.py`. None of them syncs the host.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------- A-GEM
def agem_project(grad: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """A-GEM's projection (Chaudhry et al., ICLR 2019, Eq. 11; `plugins/agem.py:94-99`):
    g~ = g - (g.g_ref / g_ref.g_ref) g_ref  when g.g_ref < 0, else g.

    Written with `torch.where` instead of avalanche's `if dotg < 0`, so the decision stays on the device; a zero
    reference gradient leaves g unchanged (avalanche would divide 0 by 0 only when g.g_ref < 0, which cannot be)."""
    dot = torch.dot(grad, ref)
    scale = dot / torch.dot(ref, ref).clamp_min(torch.finfo(ref.dtype).tiny)
    return torch.where(dot < 0, grad - scale * ref, grad)


# ---------------------------------------------------------------------------------------- ER-ACE
def present_class_mask(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes,) bool: the classes that occur in the labels `y`, without `torch.unique` (no host sync)."""
    return torch.zeros(num_classes, dtype=torch.bool, device=y.device).index_fill_(0, y, True)


def ace_incoming_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """ER-ACE's asymmetric CE on the incoming batch (Caccia et al., ICLR 2022, Sec. 4; `regularization.py:202-210`,
    reference `pclucas14/AML methods/er_ace.py` `process_inc`): the softmax runs over the classes present in the
    batch only, so the incoming data does not push the absent (old) classes' logits down:
        l_i = -log( exp z_i[y_i] / sum_{c present in y} exp z_i[c] ),  mean over the batch.
    """
    present = present_class_mask(y, logits.shape[1])
    masked = logits.float().masked_fill(~present, torch.finfo(torch.float32).min)
    return F.cross_entropy(masked, y)


def ace_loss(
    logits_in: torch.Tensor, y_in: torch.Tensor, logits_buf: torch.Tensor, y_buf: torch.Tensor
) -> torch.Tensor:
    """ER-ACE total: masked CE on the incoming batch + plain CE over all seen classes on the replayed batch.

    A sum, as the reference (`methods/er.py` `self.update(inc_loss + re_loss)`) and the paper's L = L_inc + L_re;
    avalanche's ACECriterion returns half of it (`(loss_buffer + loss_current) / 2`, `regularization.py:210`)."""
    return ace_incoming_ce(logits_in, y_in) + F.cross_entropy(logits_buf.float(), y_buf)


# ---------------------------------------------------------------------------------------- DER++
def stored_logit_mse(logits: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
    """DER's logit-matching term (Buzzega et al., NeurIPS 2020, Eq. 3; `supervised/der.py:307-310`) for a growing
    head: `stored` (B, K) holds the logits recorded when each exemplar was stored, NaN beyond the width the head had
    then. Mean of (z - z_stored)^2 over the recorded entries only:
        L = sum_{i,c recorded} (z_ic - s_ic)^2 / #recorded.
    avalanche's `F.mse_loss(mb_output[:bs], batch_logits)` compares the current (wider) output with logits recorded
    at an earlier step, which fails on shape or broadcasts wrongly once the classifier has grown."""
    width = min(logits.shape[1], stored.shape[1])
    s = stored[:, :width].float()
    known = ~torch.isnan(s)
    diff = torch.where(known, logits[:, :width].float() - torch.nan_to_num(s), torch.zeros_like(s))
    return (diff * diff).sum() / known.sum().clamp_min(1)


def derpp_loss(
    logits_cur: torch.Tensor,
    y_cur: torch.Tensor,
    logits_buf: torch.Tensor,
    stored_buf: torch.Tensor,
    y_buf: torch.Tensor,
    alpha: float,
    beta: float,
) -> torch.Tensor:
    """DER++ (`supervised/der.py:300-314`): CE on the current data + alpha * logit MSE on the replayed exemplars +
    beta * CE on the replayed exemplars' labels (one replay batch for both terms, as avalanche)."""
    return (
        F.cross_entropy(logits_cur.float(), y_cur)
        + alpha * stored_logit_mse(logits_buf, stored_buf)
        + beta * F.cross_entropy(logits_buf.float(), y_buf)
    )


# ---------------------------------------------------------------------------------------- BiC
def bic_distillation(new_logits: torch.Tensor, old_logits: torch.Tensor, T: float) -> torch.Tensor:
    """BiC's distillation (Wu et al., CVPR 2019, Eq. 2): soft cross-entropy between the old model's softmax at
    temperature T and the new model's log-softmax at T over the old classes, batch mean, no T^2 factor
    (as avalanche and the original TensorFlow code):
        L_d = -(1/B) sum_i sum_c softmax(z_old_i / T)_c log softmax(z_new_i / T)_c.
    avalanche's `BiCPlugin.cross_entropy` (`plugins/bic.py:292-295`) takes that softmax over dim=0, the batch, and
    divides by a hard-coded 2 whatever `T` is; both are fixed here."""
    q = F.softmax(old_logits.float() / T, dim=1)
    return -(q * F.log_softmax(new_logits.float() / T, dim=1)).sum(1).mean()


def bic_stage1_loss(ce: torch.Tensor, distill: torch.Tensor, old_classes: int, seen_classes: int) -> torch.Tensor:
    """BiC's stage-1 loss with the adaptive weight lambda = n_old / (n_old + n_new) (paper Eq. 3; avalanche's
    `lamb=-1`, `plugins/bic.py:246-248`): (1 - lambda) CE + lambda L_d."""
    lam = old_classes / seen_classes
    return (1.0 - lam) * ce + lam * distill


def bias_l2(beta: torch.Tensor, weight: float = 0.1) -> torch.Tensor:
    """The stage-2 penalty on the bias layer's offset, weight * (sum beta)^2 / 2 (`plugins/bic.py:422`, from the
    original `resnet.py#L636`)."""
    return weight * beta.sum() ** 2 / 2


# ---------------------------------------------------------------------------------------- Streaming LDA
def slda_update(
    x: torch.Tensor,
    y: torch.Tensor,
    means: torch.Tensor,
    counts: torch.Tensor,
    sigma: torch.Tensor,
    num_updates: int | torch.Tensor,
    update_sigma: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deep SLDA's streaming update (Hayes & Kanan, CVPRW 2020; `supervised/deep_slda.py` `fit`) for a whole batch
    at once, equal to avalanche's one-sample-at-a-time loop over the rows of `x` in order.

    Per sample n (n = updates so far), with mu_y the running mean of its class BEFORE the sample (0 for a class never
    seen, as avalanche's zero-initialised `muK`) and d = x - mu_y:
        Sigma_{n+1} = (n Sigma_n + n/(n+1) d d^T) / (n+1),   mu_y <- mu_y + (x - mu_y) / (c_y + 1),   c_y += 1.
    Unrolled: N' Sigma' = N Sigma + sum_i w_i d_i d_i^T with w_i = n_i / (n_i + 1), N' = N + B; the first sample ever
    has w = 0, so avalanche's all-ones initial Sigma never counts. The running means before each sample come from
    per-class exclusive cumulative sums (rows sorted by class). Returns (means, counts, sigma).
    """
    x = x.float()
    B = len(x)
    if B == 0:
        return means, counts, sigma
    order = torch.argsort(y, stable=True)
    xs, ys = x[order], y[order]
    start = torch.searchsorted(ys, ys)  # first sorted position of each row's class
    before_all = torch.cumsum(xs, 0) - xs  # sum of every sorted row before this one
    within = before_all - before_all[start]  # sum of the same class's earlier rows in this batch
    rank = torch.arange(B, device=x.device) - start  # how many of them
    prior = counts[ys].float()
    mu_before = (prior[:, None] * means[ys] + within) / (prior + rank).clamp_min(1)[:, None]
    if update_sigma:
        d = xs - mu_before
        n = num_updates + order.to(x.dtype)  # each row's update index, in the original order
        w = n / (n + 1)
        sigma = (num_updates * sigma + d.T @ (w[:, None] * d)) / (num_updates + B)
    sums = torch.zeros_like(means).index_add_(0, y, x)
    added = torch.bincount(y, minlength=len(counts)).to(counts.dtype)
    new_counts = counts + added
    means = (counts[:, None].float() * means + sums) / new_counts.clamp_min(1)[:, None].float()
    return means, new_counts, sigma


def slda_weights(means: torch.Tensor, sigma: torch.Tensor, shrinkage: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SLDA's linear classifier (`supervised/deep_slda.py` `predict`): Lambda = pinv((1 - eps) Sigma + eps I),
    W = Lambda M^T, b = -1/2 diag(M Lambda M^T); scores = x W + b. Returns (W (d, C), b (C,))."""
    d = sigma.shape[0]
    precision = torch.linalg.pinv((1 - shrinkage) * sigma + shrinkage * torch.eye(d, device=sigma.device))
    M = means.T.float()
    W = precision @ M
    return W, -0.5 * (M * W).sum(0)
