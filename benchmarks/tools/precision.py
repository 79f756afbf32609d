"""Does the bf16 autocast path match fp32? Same model, same inputs, both precisions.

    python -m benchmarks.tools.precision                 # AVE-sized inputs on CUDA, reduced on CPU
    python -m benchmarks.tools.precision --device cpu --grid 8,49,256
    python -m benchmarks.tools.precision --json out.json   # every figure, and the verdict, in one JSON file

Reports, for each modality: the relative error of the logits (||bf16 - fp32|| / ||fp32||), the
max abs error of the attention weights, top-1 agreement of the predictions, the relative error
of the CE loss, the cosine similarity and the relative error of the parameter gradients. `check()` is what the test
suite asserts on: bf16 within TOLERANCES of fp32.

The same figures for MCIL-AudioCLIP's towers (`compare_mcil`): image, text and audio towers with
MoE adapters (random, non-zero experts), logits = 100 * cos(image, text prototype), CE, and the
adapters' gradients; the scaled-down presets on CPU, the real ones (random weights) on CUDA.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from datasets.io import pick_device
from methods._avcil.model import MODALITIES, AVCILNet

TOLERANCES = {
    "logits_rel": 0.05,
    "loss_rel": 0.05,
    "grad_cos": 0.98,
    "agreement": 0.9,
    "attention_abs": 0.05,
    "audio_rel": 0.05,
}


def compare(
    modality: str, audio_dim: int, grid: tuple[int, int, int], batch: int, n_classes: int, device, seed: int = 0
) -> dict:
    torch.manual_seed(seed)
    T, P, D = grid
    model = AVCILNet(modality, audio_dim, D, n_classes).to(device)
    views = {
        "audio": torch.randn(batch, audio_dim, device=device),
        "visual": torch.randn(batch, T, P, D, device=device),
    }
    y = torch.randint(0, n_classes, (batch,), device=device)
    results = {}
    for precision in ("fp32", "bf16"):
        model.zero_grad()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(views)
            loss = F.cross_entropy(out["logits"].float(), y)
        loss.backward()
        results[precision] = {
            "logits": out["logits"].float().detach(),
            "loss": loss.detach(),
            "grad": torch.cat([p.grad.flatten().float() for p in model.parameters()]),
            "attention": out["spatial_attention"].detach() if "spatial_attention" in out else None,
        }
    a, b = results["fp32"], results["bf16"]
    report = {
        "logits_rel": float((b["logits"] - a["logits"]).norm() / a["logits"].norm()),
        "loss_rel": float((b["loss"] - a["loss"]).abs() / a["loss"].abs()),
        "grad_cos": float(F.cosine_similarity(a["grad"], b["grad"], dim=0)),
        "grad_rel": float((b["grad"] - a["grad"]).norm() / a["grad"].norm()),
        "agreement": float((a["logits"].argmax(1) == b["logits"].argmax(1)).float().mean()),
    }
    if a["attention"] is not None:
        report["attention_abs"] = float((b["attention"].float() - a["attention"].float()).abs().max())
    return report


def compare_mcil(
    preset: str, batch: int, device, n_classes: int = 8, audio_samples: int = 16000, seed: int = 0
) -> dict:
    from methods.mcil_audioclip.moe import MoEAdapter, moe_modules
    from methods.mcil_audioclip.towers import build_towers

    torch.manual_seed(seed)
    towers = build_towers(preset, lambda d: MoEAdapter(d, 4, 2, 1, 64, 0.1, 0.0, router_init_std=0.02)).to(device)
    adapters = [p for m in moe_modules(towers) for p in m.parameters()]
    with torch.no_grad():
        for m in moe_modules(towers):
            m.up_weight.normal_(std=0.02)
    images = torch.randn(batch, 3, towers.image_size, towers.image_size, device=device)
    tokens = towers.tokenizer([f"a photo of class {c}." for c in range(n_classes)]).to(device)
    waves = 3000 * torch.randn(batch, audio_samples, device=device)
    y = torch.randint(0, n_classes, (batch,), device=device)
    towers.eval()
    results = {}
    for precision in ("fp32", "bf16"):
        towers.zero_grad()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            v = F.normalize(towers.encode_image(images).float(), dim=1)
            t = F.normalize(towers.encode_text(tokens).float(), dim=1)
            a = towers.encode_audio(waves).float()
            logits = 100.0 * v @ t.t()
            loss = F.cross_entropy(logits, y)
        loss.backward()
        results[precision] = {
            "logits": logits.detach(),
            "loss": loss.detach(),
            "audio": a.detach(),
            "grad": torch.cat([p.grad.flatten().float() for p in adapters if p.grad is not None]),
        }
    a, b = results["fp32"], results["bf16"]
    return {
        "logits_rel": float((b["logits"] - a["logits"]).norm() / a["logits"].norm()),
        "loss_rel": float((b["loss"] - a["loss"]).abs() / a["loss"].abs()),
        "grad_cos": float(F.cosine_similarity(a["grad"], b["grad"], dim=0)),
        "agreement": float((a["logits"].argmax(1) == b["logits"].argmax(1)).float().mean()),
        "audio_rel": float((b["audio"] - a["audio"]).norm() / a["audio"].norm()),
    }


def check(report: dict) -> list[str]:
    """Names of the figures outside TOLERANCES (empty: bf16 matches fp32)."""
    bad = []
    for k, tol in TOLERANCES.items():
        if k not in report:
            continue
        ok = report[k] >= tol if k in ("grad_cos", "agreement") else report[k] <= tol
        if not ok:
            bad.append(f"{k}={report[k]:.4g} (tolerance {tol})")
    return bad


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--grid", help="T,P,D of the visual tokens (default 8,196,768 on CUDA, 8,49,256 on CPU)")
    p.add_argument("--audio-dim", type=int, default=768)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--classes", type=int, default=28)
    p.add_argument("--no-mcil", action="store_true", help="skip the MCIL-AudioCLIP towers")
    p.add_argument("--json", help="write every figure and the verdict to this JSON file")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    grid = (
        tuple(int(x) for x in args.grid.split(","))
        if args.grid
        else ((8, 196, 768) if device.type == "cuda" else (8, 49, 256))
    )
    print(f"bf16 autocast vs fp32 on {device}, grid {grid}, batch {args.batch}")
    reports = [(f"{m:13s}", compare(m, args.audio_dim, grid, args.batch, args.classes, device)) for m in MODALITIES]
    presets = ("audioclip-rn50", "clip-vit-b16") if device.type == "cuda" else ("tiny-rn", "tiny-vit")
    samples = 220500 if device.type == "cuda" else 16000
    if not args.no_mcil:
        reports += [
            (f"mcil {p:14s}", compare_mcil(p, min(args.batch, 16), device, audio_samples=samples)) for p in presets
        ]
    failures, figures = 0, {}
    for label, report in reports:
        bad = check(report)
        failures += bool(bad)
        figures[label.strip()] = {**report, "out_of_tolerance": bad}
        values = "  ".join(f"{k} {v:.4g}" for k, v in report.items())
        print(f"  {label} {values}" + ("  OK" if not bad else "  OUT OF TOLERANCE: " + ", ".join(bad)))
    if args.json:
        import json
        from pathlib import Path

        from datasets.io import atomic_write_text

        summary = {"device": str(device), "grid": list(grid), "batch": args.batch, "tolerances": TOLERANCES}
        atomic_write_text(Path(args.json), json.dumps({**summary, "ok": not failures, "reports": figures}, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
