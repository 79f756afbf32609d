"""MoE-adapter dispatch benchmark: the harness's gathered-expert einsum vs the reference's per-sample dispatch.

    python -m benchmarks.tools.moe_speed                      # ViT-B/16-sized block on CUDA, reduced on CPU
    python -m benchmarks.tools.moe_speed --preset vit-b16     # force the full size
    python -m benchmarks.tools.moe_speed --precision bf16

One MoE adapter layer (methods.mcil_audioclip.moe.MoEAdapter) forward + backward, the same
weights and inputs, measured in one process on one device:

- gathered: the harness's implementation: each sample's top-k experts' weights selected by a
  one-hot product (a deterministic gradient on CPU), then one einsum for all samples (no host
  synchronisation);
- dispatch: the reference's pattern (MoE-Adapters4CL SparseDispatcher, as released in
  MCIL-AudioCLIP `clip/model.py`): group the samples by expert with a per-expert index and a
  Python loop over experts, plus the release's per-(sample, expert) `.item()` reads of the
  gate that decide which experts to freeze (one host synchronisation each);
- dense: every expert on every sample, weighted by the (mostly zero) gates: the simplest
  correct form, for scale.

It checks that the three outputs agree, then prints ms per call and the ratios to `gathered`.
"""

from __future__ import annotations

import argparse
import time

import torch

from datasets.io import pick_device
from methods.mcil_audioclip.moe import MoEAdapter

PRESETS = {
    # batch, tokens, width, experts, top_k
    "vit-b16": dict(batch=32, tokens=197, width=768, experts=5, top_k=2),
    "cpu-small": dict(batch=32, tokens=50, width=256, experts=5, top_k=2),
}


def expert_out(moe: MoEAdapter, x: torch.Tensor, e: int) -> torch.Tensor:
    h = torch.relu(x @ moe.down_weight[e] + moe.down_bias[e])
    return h @ moe.up_weight[e] + moe.up_bias[e]


def dispatch(moe: MoEAdapter, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Per-expert grouping with a Python loop and per-sample `.item()` gate reads (the reference's shape)."""
    idx, g = moe.gates(r)
    gates = torch.zeros(len(x), moe.n_experts, device=x.device, dtype=g.dtype).scatter(1, idx, g)
    for b in range(len(x)):  # the release reads every gate on the host to decide which experts to freeze
        for e in range(moe.n_experts):
            _ = gates[b, e].item() == 0
    out = torch.zeros_like(x)
    for e in range(moe.n_experts):
        rows = torch.nonzero(gates[:, e] > 0).squeeze(1)
        if len(rows):
            out = out.index_add(0, rows, gates[rows, e, None, None] * expert_out(moe, x[rows], e))
    return moe.scale * out


def dense(moe: MoEAdapter, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    idx, g = moe.gates(r)
    gates = torch.zeros(len(x), moe.n_experts, device=x.device, dtype=g.dtype).scatter(1, idx, g)
    return moe.scale * sum(gates[:, e, None, None] * expert_out(moe, x, e) for e in range(moe.n_experts))


def timed(fn, moe, x, r, device, repeats: int, precision: str) -> float:
    def once():
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            y = fn(moe, x, r)
        y.float().pow(2).mean().backward()

    for _ in range(2):  # warm-up
        once()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        once()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1000 * (time.perf_counter() - t0) / repeats


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), help="default: vit-b16 on CUDA, cpu-small on CPU")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)
    device = pick_device(args.device)
    preset = args.preset or ("vit-b16" if device.type == "cuda" else "cpu-small")
    cfg = PRESETS[preset]
    torch.manual_seed(0)
    moe = MoEAdapter(cfg["width"], cfg["experts"], cfg["top_k"], 1, 64, 0.1, 0.0, router_init_std=0.02).to(device)
    with torch.no_grad():
        moe.up_weight.normal_(std=0.02)
    x = torch.randn(cfg["batch"], cfg["tokens"], cfg["width"], device=device)
    r = x[:, 0]
    with torch.no_grad():
        ref = moe(x, r)
        for name, fn in (("dispatch", dispatch), ("dense", dense)):
            err = (fn(moe, x, r) - ref).abs().max().item()
            assert err < 1e-4, f"{name} differs from gathered by {err}"
    print(
        f"device {device}, preset {preset} {cfg}, precision {args.precision}, {args.repeats} repeats (forward + "
        "backward)"
    )
    times = {
        name: timed(fn, moe, x, r, device, args.repeats, args.precision)
        for name, fn in (("gathered", lambda m, a, b: m(a, b)), ("dispatch", dispatch), ("dense", dense))
    }
    for name, ms in times.items():
        print(f"  {name:9s} {ms:9.2f} ms/call   ratio to gathered {ms / times['gathered']:.2f}")


if __name__ == "__main__":
    main()
