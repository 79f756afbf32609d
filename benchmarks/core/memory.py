"""Exemplar selection on cached features. Memories hold store rows, never copies of data."""

from __future__ import annotations

import torch


def herding(features: torch.Tensor, m: int) -> torch.Tensor:
    """Indices (on the features' device) of up to m samples whose running mean best matches the class mean (iCaRL).

    `features` should be L2-normalised. Greedy: at step k pick the sample minimising
    ||mu - (sum of picked + x) / k||. Already-picked samples are excluded (the AV-CIL
    reference does not exclude them and can pick duplicates; fixed here). Runs where the
    features are, with no host synchronisation per pick (the chosen index stays a device tensor).
    """
    n = len(features)
    m = min(m, n)
    features = features.float()
    mu = features.mean(0)
    running = torch.zeros_like(mu)
    available = torch.ones(n, dtype=torch.bool, device=features.device)
    picked = torch.empty(m, dtype=torch.long, device=features.device)
    for k in range(1, m + 1):
        dist = (mu[None, :] - (running[None, :] + features) / k).norm(dim=1)
        i = dist.masked_fill(~available, float("inf")).argmin().view(1)
        picked[k - 1 : k] = i
        available.index_fill_(0, i, False)
        running += features.index_select(0, i)[0]
    return picked


def random_exemplars(num: int, m: int, generator: torch.Generator) -> torch.Tensor:
    """m random indices out of num, without replacement (SS-IL / AV-CIL exemplars)."""
    return torch.randperm(num, generator=generator)[: min(m, num)]
