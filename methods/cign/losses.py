"""CIGN loss terms and the audio-visual prediction rule (formulas in README.md; each is tested by hand).

Notation: B samples, C seen classes (class tokens), C_old classes of the earlier steps,
z_m (B, C) the per-class logits of branch m (p_m = sigmoid(z_m)), G_m (B, C, D) the grouped
class features, l_m (B, C, N) the assignment logits of the N modality tokens over the C groups.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_ce(token_logits: torch.Tensor) -> torch.Tensor:
    """L_token = CE(W_cls Z, [0..C-1]): every class token must be classified as its own class."""
    c = token_logits.shape[0]
    return F.cross_entropy(token_logits.float(), torch.arange(c, device=token_logits.device))


def group_bce(logits: torch.Tensor, y: torch.Tensor, lo: int = 0) -> torch.Tensor:
    """L_pred,m = BCE-with-logits(z_m[:, lo:], onehot(y)[:, lo:]), mean over samples and columns.

    lo = 0: every seen class is a column (the reference's BCE over all C classes; in class-incremental
    training the old classes are negatives of the new data). lo = first new class: new columns only.
    """
    target = F.one_hot(y, logits.shape[1]).float()
    return F.binary_cross_entropy_with_logits(logits[:, lo:].float(), target[:, lo:])


def class_token_feature_distillation(groups: torch.Tensor, old_groups: torch.Tensor) -> torch.Tensor:
    """mean over b and old classes c of 1 - cos(G_m[b, c], G_m^old[b, c]) (old classes: the teacher's C_old)."""
    c_old = old_groups.shape[1]
    return (1.0 - F.cosine_similarity(groups[:, :c_old].float(), old_groups.float(), dim=-1)).mean()


def class_token_logit_distillation(logits: torch.Tensor, old_logits: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits(z_m[:, :C_old], sigmoid(z_m^old)), mean over b and old classes (soft targets)."""
    c_old = old_logits.shape[1]
    return F.binary_cross_entropy_with_logits(logits[:, :c_old].float(), torch.sigmoid(old_logits.float()))


def continual_grouping(
    assign_logits: torch.Tensor, old_assign_logits: torch.Tensor, blocks: list[int] | None = None, tau: float = 1.0
) -> torch.Tensor:
    """Old-group assignment consistency, per modality token and per block of old groups:
    mean over b, n of
        sum_j KL( softmax_{c in j}(l^old[b, c, n] / tau) || softmax_{c in j}(l[b, c, n] / tau) ) * tau^2 / J.

    blocks: sizes of the old groups' blocks (one per old step, when the assignment is normalised per
    step); None = one block of all C_old old groups. In either case the student's distribution is
    taken over the old groups of the block only, so new groups may take tokens (new-class data)
    while the old groups keep their relative share of every token.
    """
    c_old = old_assign_logits.shape[1]
    blocks = list(blocks) if blocks else [c_old]
    if sum(blocks) != c_old:
        raise ValueError(f"blocks {blocks} do not cover the {c_old} old groups")
    total = assign_logits.new_zeros((), dtype=torch.float32)
    for s, o in zip(
        assign_logits[:, :c_old].float().split(blocks, dim=1), old_assign_logits.float().split(blocks, dim=1)
    ):
        log_p = F.log_softmax(s / tau, dim=1)
        q = F.softmax(o / tau, dim=1)
        total = total + (q * (torch.log(q.clamp_min(1e-12)) - log_p)).sum(1).mean()
    return total / len(blocks) * tau * tau


@torch.no_grad()
def predict(audio_logits: torch.Tensor | None, visual_logits: torch.Tensor | None) -> torch.Tensor:
    """audio: argmax p_a; visual: argmax p_v; audio-visual: argmax p_a * p_v (p = sigmoid(z))."""
    if audio_logits is None:
        return visual_logits.argmax(1)
    if visual_logits is None:
        return audio_logits.argmax(1)
    # log p_a + log p_v: the same argmax as the product, without underflow for very negative logits
    return (F.logsigmoid(audio_logits.double()) + F.logsigmoid(visual_logits.double())).argmax(1)
