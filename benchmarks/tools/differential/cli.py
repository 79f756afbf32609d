"""Command line of the differential (see the package docstring)."""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import multiprocessing
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from benchmarks.tools.differential import fixture, reference, table
from datasets.base import MODALITIES
from datasets.io import atomic_write_text

DEFAULT_METHODS = tuple(reference.METHODS)
AUDIO_VISUAL_ONLY = {"av_cil"}


def parse_epochs(text: str) -> dict[str, int]:
    parts = [int(p) for p in text.split(",")]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError("--epochs takes N or AUDIO,VISUAL,AUDIO_VISUAL (positive integers)")
    return dict(zip(MODALITIES, parts))


def parse_set(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--harness-set takes KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.tools.differential",
        description="Run the AV-CIL reference's scripts and the harness on the same generated data; compare.",
    )
    p.add_argument("--reference", type=Path, required=True, help="a checkout of weiguoPian/AV-CIL_ICCV2023")
    p.add_argument("--out", type=Path, required=True, help="output folder: fixture, per-run JSON, table")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=DEFAULT_METHODS)
    p.add_argument("--modalities", nargs="+", default=list(MODALITIES), choices=MODALITIES)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--size", default="small", choices=sorted(fixture.SIZES), help="fixture size (fixture.SIZES)")
    p.add_argument("--fixture-seed", type=int, default=0)
    p.add_argument(
        "--fixture",
        type=parse_set,
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a field of the --size preset (fixture.FixtureSpec: train_per_class, tokens, audio_signal, ...)",
    )
    p.add_argument("--epochs", type=parse_epochs, default=parse_epochs("20"), help="N or AUDIO,VISUAL,AUDIO_VISUAL")
    p.add_argument("--batch-size", type=int, default=32, help="train batch, both sides (reference AVE: 256)")
    p.add_argument("--exemplar-batch-size", type=int, default=16, help="SS-IL / AV-CIL exemplar batch (ref: 128)")
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--herding-batch-size", type=int, default=64, help="reference --gen_exem_batch_size")
    p.add_argument("--memory", type=int, default=84, help="exemplar budget, both sides (ref AVE: 340)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--sides", nargs="+", default=list(table.SIDES), choices=table.SIDES)
    p.add_argument(
        "--harness-set",
        type=parse_set,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a harness config value for every selected method (e.g. distillation=reference, selection_ties=last)",
    )
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (each single-threaded)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--python", default=sys.executable, help="interpreter for the reference scripts")
    p.add_argument(
        "--report-only", action="store_true", help="run nothing: tabulate the runs already in --out with these settings"
    )
    p.add_argument("--tolerance", type=float, default=2.0, help="mark differences beyond this many points")
    return p


def settings_of(args) -> dict:
    return {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "exemplar_batch_size": args.exemplar_batch_size,
        "eval_batch_size": args.eval_batch_size,
        "herding_batch_size": args.herding_batch_size,
        "memory": args.memory,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
    }


def run_key(side: str, method: str, modality: str, seed: int, fx: dict, settings: dict, extra: dict) -> str:
    blob = {"side": side, "method": method, "modality": modality, "seed": seed, "fixture": fx, "settings": settings}
    if side == "harness":
        blob["extra"] = extra
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def stale_reason(old: dict, settings: dict, extra: dict, checkout: Path) -> str:
    """Why a cached run no longer stands for a new one ('' if it does). The run key covers the settings and
    --harness-set; a reference run must also come from the same code (`reference.code_sha` of the checkout), a
    harness run from the same method config (the keys whose value the method's defaults now give differently)."""
    if old.get("side") == "reference":
        return "" if old.get("code_sha") == reference.code_sha(checkout, old["method"]) else "reference code"
    from benchmarks.tools.differential import harness

    now = harness.expected_config(old["method"], old["modality"], settings, extra)
    return ", ".join(sorted(k for k in set(now) | set(old["config"]) if now.get(k) != old["config"].get(k)))


def _job(job: dict) -> dict:
    """One run (in a worker process): the side's result plus its identity."""
    side, method, modality, seed = job["side"], job["method"], job["modality"], job["seed"]
    if side == "reference":
        result = reference.run(
            Path(job["reference"]),
            Path(job["folder"]),
            method,
            modality,
            seed,
            job["settings"],
            device=job["device"],
            python=job["python"],
            keep_log=Path(job["path"]).with_suffix(".log"),
        )
    else:
        from benchmarks.tools.differential import harness  # torch and the methods load in the worker only

        result = harness.run(
            Path(job["data_root"]), method, modality, seed, job["settings"], device=job["device"], extra=job["extra"]
        )
    result.update({"side": side, "method": method, "modality": modality, "seed": seed, "key": job["key"]})
    atomic_write_text(Path(job["path"]), json.dumps(result, indent=1, default=str))
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    reference.check_checkout(args.reference)
    fields = set(fixture.FixtureSpec.__dataclass_fields__)
    unknown = sorted({k for k, _ in args.fixture} - fields)
    if unknown:
        raise SystemExit(f"--fixture: unknown field(s) {unknown}; fields: {', '.join(sorted(fields))}")
    spec = replace(fixture.SIZES[args.size], seed=args.fixture_seed, **dict(args.fixture))
    args.out.mkdir(parents=True, exist_ok=True)
    fx = fixture.build(spec, args.out / "fixture")
    settings, extra = settings_of(args), dict(args.harness_set)
    print(
        f"fixture: {json.dumps(asdict(spec))}\n  reference layout: {fx['folder']}\n  harness store: {fx['data_root']}"
    )
    print(f"settings (both sides): {json.dumps(settings)}" + (f"\nharness config: {extra}" if extra else ""))
    print("reference patches (applied to a temporary copy per run):")
    for line in reference.describe_patches():
        print(f"  - {line}")
    jobs, results = [], {}
    for method in args.methods:
        for modality in args.modalities:
            if method in AUDIO_VISUAL_ONLY and modality != "audio-visual":
                continue
            for side in args.sides:
                for seed in args.seeds:
                    key = run_key(side, method, modality, seed, fx["spec"], settings, extra)
                    path = args.out / "runs" / side / f"{method}-{modality}-seed{seed}.json"
                    job = {
                        "side": side,
                        "method": method,
                        "modality": modality,
                        "seed": seed,
                        "key": key,
                        "path": str(path),
                        "settings": settings,
                        "extra": extra,
                        "reference": str(args.reference),
                        "folder": str(fx["folder"]),
                        "data_root": str(fx["data_root"]),
                        "device": args.device,
                        "python": args.python,
                    }
                    old = json.loads(path.read_text()) if path.is_file() else {}
                    if old.get("key") == key and not (stale := stale_reason(old, settings, extra, args.reference)):
                        results[(side, method, modality, seed)] = old  # already run with these settings
                    elif args.report_only:
                        continue
                    else:
                        if old.get("key") == key:
                            print(f"  re-run {side} {method} {modality} seed {seed}: changed since cached: {stale}")
                        jobs.append(job)
    print(f"{len(jobs)} run(s) to do, {len(results)} reused from {args.out / 'runs'}")
    t0 = time.time()
    with cf.ProcessPoolExecutor(max(1, args.jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_job, j): j for j in jobs}
        for fut in cf.as_completed(futures):
            j = futures[fut]
            try:
                r = fut.result()
            except Exception as e:  # one failed run is reported, the others go on
                print(f"  FAILED {j['side']} {j['method']} {j['modality']} seed {j['seed']}: {e}", flush=True)
                continue
            results[(j["side"], j["method"], j["modality"], j["seed"])] = r
            acc = ", ".join(f"{a:.1f}" for a in r["A"])
            print(
                f"  {j['side']:9s} {j['method']:11s} {j['modality']:12s} seed {j['seed']}: [{acc}] "
                f"avg {table.avg_inc_acc(r['A']):.2f}  ({r['seconds']:.0f} s; {time.time() - t0:.0f} s elapsed)",
                flush=True,
            )
    return report(args, results, fx, settings, extra)


def report(args, results: dict, fx: dict, settings: dict, extra: dict) -> int:
    grouped: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for (side, method, modality, _seed), r in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][3])):
        grouped.setdefault((method, modality), {}).setdefault(side, []).append(r)
    order = [(m, mod) for m in args.methods for mod in args.modalities if (m, mod) in grouped]
    summaries = {k: table.summarize(grouped[k]) for k in order}
    md = [
        "# AV-CIL reference vs harness",
        "",
        f"command: `python -m benchmarks.tools.differential {' '.join(sys.argv[1:])}`",
        f"fixture: `{json.dumps(fx['spec'])}`",
        f"settings (both sides): `{json.dumps(settings)}`" + (f"; harness config `{extra}`" if extra else ""),
        "",
        table.markdown(summaries, args.tolerance),
        "## Selected epochs and final losses per seed and step",
        "",
        *[table.trajectory_markdown(m, mod, grouped[(m, mod)]) for m, mod in order],
    ]
    text = "\n".join(md)
    atomic_write_text(args.out / "differential.md", text)
    atomic_write_text(
        args.out / "differential.json",
        json.dumps(
            {
                "fixture": fx["spec"],
                "settings": settings,
                "harness_config": extra,
                "patches": reference.describe_patches(),
                "cells": {
                    f"{m}/{mod}": {"summary": summaries[(m, mod)], "runs": grouped[(m, mod)]} for m, mod in order
                },
            },
            indent=1,
            default=str,
        ),
    )
    print()
    print(table.markdown(summaries, args.tolerance))
    print(f"written: {args.out / 'differential.md'}, {args.out / 'differential.json'}")
    return 0
