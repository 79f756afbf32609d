"""Mixture-of-Experts adapters (MIFE): bottleneck experts beside a block's MLP, chosen per sample by a router.

One `MoEAdapter` sits in every transformer block of the CLIP image and text towers (and after
each stage of an RN50 image tower; see towers.py). For a sample b with tokens x_b (L, D):

    logits_b = r_b W_{task(b)}                         r_b: the router input (first token), W_t: (D, E)
    (i_1..i_k) = top-k of logits_b; g_b = softmax(logits_b[i_1..i_k])
    y_b = sum_j g_bj * E_{i_j}(x_b),   E_e(x) = scale * up_e(dropout(relu(down_e(x))))

Whole samples are routed (every token of a sample goes to the same experts), as in the
reference's SparseDispatcher (../shared/reference/mcil_audioclip.md 3.4). Experts are held as
stacked weights and only the k chosen experts of each sample are computed (their weights
selected by a one-hot product, one einsum), instead of the reference's per-sample `.item()`
dispatch loop.

Routers: `n_routers` routing matrices; each sample uses the one named by `route_tasks` (set
by the model before a forward: the training task, or the task selected per test sample).
With top_k = 1 the kept gate is softmax of a single logit, i.e. exactly 1, so a router gets
a zero gradient and never moves from its initialisation: the released code's behaviour
(one zero-initialised router, top-1), reproduced in `code` mode and tested. `paper` mode
uses top_k >= 2 and one router per task, so routers learn.

Ties among router logits (the zero-initialised router gives all-equal logits) are broken
by the lowest expert index (a stable sort), so runs are deterministic; the reference's
`torch.topk` on tied values is implementation-defined (it picked index 2 on CPU once).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class MoEAdapter(nn.Module):
    def __init__(
        self,
        d_model: int,
        n_experts: int = 5,
        top_k: int = 1,
        n_routers: int = 1,
        bottleneck: int = 64,
        scale: float = 0.1,
        dropout: float = 0.1,
        router_init_std: float = 0.0,
    ):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must be in [1, n_experts={n_experts}], got {top_k}")
        self.d_model, self.n_experts, self.top_k, self.scale = d_model, n_experts, top_k, scale
        # Experts: "lora" init of the reference adapter: down weight kaiming-uniform(a=sqrt 5),
        # all biases and the up weight zero, so every expert outputs exactly 0 at the start.
        down = torch.empty(n_experts, d_model, bottleneck)
        for e in range(n_experts):
            w = torch.empty(bottleneck, d_model)
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            down[e] = w.t()
        self.down_weight = nn.Parameter(down)
        self.down_bias = nn.Parameter(torch.zeros(n_experts, bottleneck))
        self.up_weight = nn.Parameter(torch.zeros(n_experts, bottleneck, d_model))
        self.up_bias = nn.Parameter(torch.zeros(n_experts, d_model))
        self.dropout = nn.Dropout(dropout)
        router = torch.zeros(n_routers, d_model, n_experts)
        if router_init_std > 0:
            nn.init.normal_(router, std=router_init_std)
        self.routers = nn.Parameter(router)
        self.route_tasks: torch.Tensor | None = None  # (B,) router index per sample; None: router 0
        self.enabled = True  # False: the block runs without its adapter (frozen-tower features)
        self.register_buffer("usage", torch.zeros(n_routers, n_experts), persistent=False)

    @property
    def n_routers(self) -> int:
        return self.routers.shape[0]

    def gates(self, router_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(expert indices (B, k), gate weights (B, k)) for each sample."""
        b = router_input.shape[0]
        tasks = (
            self.route_tasks
            if self.route_tasks is not None
            else torch.zeros(b, dtype=torch.long, device=router_input.device)
        )
        if tasks.shape[0] != b:
            raise ValueError(f"route_tasks has {tasks.shape[0]} entries for a batch of {b}")
        w = pick(self.routers, tasks)  # (B, D, E)
        logits = torch.einsum("bd,bde->be", router_input.to(w.dtype), w)
        order = torch.sort(logits.detach(), dim=1, descending=True, stable=True).indices[:, : self.top_k]
        kept = logits.gather(1, order)
        if self.training:
            self.usage.index_put_(
                (tasks.repeat_interleave(self.top_k), order.reshape(-1)),
                torch.ones(order.numel(), device=self.usage.device),
                accumulate=True,
            )
        return order, torch.softmax(kept.float(), dim=1).to(kept.dtype)

    def forward(self, x: torch.Tensor, router_input: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), router_input (B, D) -> the weighted sum of the chosen experts' outputs (B, L, D)."""
        if not self.enabled:
            return torch.zeros_like(x)
        idx, g = self.gates(router_input)
        dt = x.dtype
        h = (
            torch.einsum("bld,bkdr->bklr", x, pick(self.down_weight, idx).to(dt))
            + pick(self.down_bias, idx).to(dt)[:, :, None]
        )
        h = self.dropout(torch.relu(h))
        y = (
            torch.einsum("bklr,bkrd->bkld", h, pick(self.up_weight, idx).to(dt))
            + pick(self.up_bias, idx).to(dt)[:, :, None]
        )
        return self.scale * torch.einsum("bk,bkld->bld", g.to(dt), y)


def pick(weights: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """weights[idx] as a one-hot product: (E, ...) indexed by (B, ...) -> (B, ..., ...). The gradient of
    advanced indexing accumulates into repeated rows in parallel on CPU, in a varying order, so two runs
    of the same cell drifted apart; a matmul reduces in a fixed order. The extra work is tiny (E <= 10)."""
    onehot = torch.nn.functional.one_hot(idx, weights.shape[0]).to(weights.dtype)
    return torch.tensordot(onehot, weights, dims=([onehot.dim() - 1], [0]))


def moe_modules(model: nn.Module) -> list[MoEAdapter]:
    return [m for m in model.modules() if isinstance(m, MoEAdapter)]


def set_routing(model: nn.Module, route_tasks: torch.Tensor | None, enabled: bool = True) -> None:
    """Point every MoE adapter of `model` at one router per sample (or disable the adapters)."""
    for m in moe_modules(model):
        m.route_tasks, m.enabled = route_tasks, enabled
