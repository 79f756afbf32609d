"""Exemplar selection on cached features. Memories hold store rows, never copies of data."""

from __future__ import annotations

import torch


def herding(features: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of up to m samples whose running mean best matches the class mean (iCaRL).

    `features` should be L2-normalised. Greedy: at step k pick the sample minimising
    ||mu - (sum of picked + x) / k||. Already-picked samples are excluded (the AV-CIL
    reference does not exclude them and can pick duplicates; fixed here).
    """
    n = len(features)
    m = min(m, n)
    features = features.float()
    mu = features.mean(0)
    running = torch.zeros_like(mu)
    available = torch.ones(n, dtype=torch.bool, device=features.device)
    picked = []
    for k in range(1, m + 1):
        dist = (mu[None, :] - (running[None, :] + features) / k).norm(dim=1)
        dist[~available] = float("inf")
        i = int(dist.argmin())
        picked.append(i)
        available[i] = False
        running += features[i]
    return torch.tensor(picked, dtype=torch.long)


def random_exemplars(num: int, m: int, generator: torch.Generator) -> torch.Tensor:
    """m random indices out of num, without replacement (SS-IL / AV-CIL exemplars)."""
    return torch.randperm(num, generator=generator)[: min(m, num)]
