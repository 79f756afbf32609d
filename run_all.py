"""Run a benchmark suite: grid of cells -> result records -> leaderboard.

    python run_all.py --suite audio-visual            # every method x modality x dataset present
    python run_all.py --list                          # datasets (present/missing), methods, suites
    python run_all.py --dry-run --methods lwf icarl-nme
    python run_all.py --datasets synth_av --epochs 2  # quick check (marked: not the reference protocol)
    python run_all.py --suite audio-multilabel        # multi-label audio suite (embedded SynthTags by default)

A second run with nothing changed skips every finished cell (same resolved config and
stream hash). A failing cell is reported and recorded as failed; the rest of the grid runs.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

import yaml

from benchmarks.suites import SUITES, build_grid, get_suite, suite_methods, suite_runner
from datasets.base import DatasetError
from datasets.store import pick_device
from methods import SETTINGS_KEY

ROOT = Path(__file__).resolve().parent


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="audio-visual", choices=sorted(SUITES), help="which grid to run (default: audio-visual)")
    p.add_argument("--datasets", nargs="+", help="restrict to these datasets (default: every dataset of the suite that is present)")
    p.add_argument("--methods", nargs="+", help="restrict to these methods (default: all of the suite)")
    p.add_argument("--modalities", nargs="+", choices=["audio", "visual", "audio-visual"], help="restrict modalities (default: all a method supports)")
    p.add_argument("--seeds", nargs="+", type=int, help="training seeds (default: the suite's, 0 1)")
    p.add_argument("--data-root", type=Path, default=ROOT / "data", help="datasets and caches live here (default: ./data)")
    p.add_argument("--results-dir", type=Path, default=ROOT / "results", help="one JSON record per cell (default: ./results)")
    p.add_argument("--leaderboard-dir", type=Path, default=ROOT / "leaderboard", help="where the leaderboard is written (default: ./leaderboard)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    p.add_argument("--precision", choices=["fp32", "bf16"], help="training/inference precision (default: the method config's, fp32)")
    p.add_argument("--epochs", type=int, help="override every method's epochs (recorded; the leaderboard marks such cells as not the reference protocol)")
    p.add_argument("--random-encoders", action="store_true",
                   help="allow methods that train on raw media (CIGN raw mode) to start their encoders from random weights when no "
                        "pretrained weights are given (recorded in every cell's config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                   help="set a method config value (YAML-parsed) in every method whose config has KEY, e.g. "
                        "--set audioclip_ckpt=/weights/AudioCLIP-Full-Training.pt; recorded in the cell's config; repeatable")
    p.add_argument("--list", action="store_true", help="list datasets with present/missing status, methods and suites, then exit")
    p.add_argument("--dry-run", action="store_true", help="print the grid (and which cells are already done) without running")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-leaderboard", action="store_true", help="do not re-render the leaderboard")
    p.add_argument("--audio-root", action="append", metavar="[DATASET=]DIR",
                   help="multi-label suite: read the wavs named in a dataset's phase files under DIR (re-roots absolute paths from "
                        "another machine; see README). Without DATASET= it applies to every multi-label dataset; repeatable")
    p.add_argument("--paired-folder", action="append", metavar="PATH[=NAME]",
                   help="audio-visual suite: add a paired image+audio folder (PATH/image/{train,test}/<class>/, PATH/audio/...; see "
                        "datasets/paired_folder.py) as dataset NAME (default: the folder name); repeatable")
    p.add_argument("--paired-protocol", metavar="INITIAL,PER_STEP",
                   help="protocol of the --paired-folder datasets that have no protocol.yaml, e.g. 4,3 (4 classes, then steps of 3)")
    p.add_argument("--skip-bad", action="store_true",
                   help="paired image+audio datasets: leave unreadable files out (listed in the store meta) instead of stopping "
                        "(same as PAIRED_SKIP_BAD=1)")
    p.add_argument("--keep-phase-checkpoints", action="store_true",
                   help="multi-label suite: keep every phase's model as <record>.phases/phase<t>.pt (input of python -m benchmarks.cka)")
    return p.parse_args(argv)


def parse_settings(values) -> dict:
    """--set KEY=VALUE values -> {KEY: YAML-parsed VALUE}."""
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


def audio_roots(values) -> dict:
    """--audio-root values -> {dataset or None: DIR}."""
    out: dict = {}
    for v in values or []:
        name, sep, path = v.partition("=")
        if sep and name and "/" not in name:
            out[name] = path
        else:
            out[None] = v
    return out


def register_paired(args) -> None:
    """--paired-folder / --paired-protocol / --skip-bad -> run-time dataset registrations (before the grid is built)."""
    from datasets.paired_folder import configure, parse_paired_protocol, register_paired_folder

    configure(skip_bad=True if args.skip_bad else None)
    protocol = parse_paired_protocol(args.paired_protocol) if args.paired_protocol else None
    for value in args.paired_folder or []:
        path, sep, name = value.rpartition("=")
        if not (sep and path and name and "/" not in name):
            path, name = value, None
        if protocol is not None and (Path(path) / "protocol.yaml").is_file():
            print(f"[note] {Path(path) / 'protocol.yaml'} is used; --paired-protocol applies only to folders without one")
        register_paired_folder(Path(path), name, None if (Path(path) / "protocol.yaml").is_file() else protocol)


def list_everything(args) -> None:
    from datasets import registry as dataset_registry
    from methods import registry as method_registry

    print("Suites:")
    for s in SUITES.values():
        print(f"  {s.name:16s} {s.description} (default seeds {list(s.seeds)})")
    print("Datasets:")
    for name, a in sorted(dataset_registry().items()):
        status = a.availability(args.data_root)
        print(f"  {name:16s} [{'present' if status.present else 'MISSING'}] {a.title}; suites {', '.join(a.suites)}; protocols {', '.join(p.name for p in a.protocols())}")
        if not status.present:
            print("      " + status.message.replace("\n", "\n      "))
    print("Methods:")
    methods = dict(method_registry())
    for suite in SUITES.values():
        methods.update(suite_methods(suite))
    for name, m in sorted(methods.items()):
        print(f"  {name:16s} modalities {', '.join(m.modalities)}; suites {', '.join(m.suites)}; folder {m.folder.relative_to(ROOT)}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.audio_root:
        from datasets.audio_multilabel import configure

        configure(audio_roots(args.audio_root))
    try:
        register_paired(args)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.list:
        list_everything(args)
        return 0
    # Paths under the working directory are shown relative, so messages and the committed
    # leaderboard carry no machine-specific absolute paths.
    args.data_root = Path(os.path.relpath(args.data_root)) if Path(args.data_root).resolve().is_relative_to(Path.cwd()) else args.data_root
    suite = get_suite(args.suite)
    try:
        cells, missing, not_applicable, datasets, methods = build_grid(suite, args.data_root, args.datasets, args.methods, args.modalities, args.seeds)
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    for name, message in missing.items():
        print(f"[missing] {name}: {message}")
    for note in not_applicable:
        print(f"[skipped] {note}")
    try:
        device = pick_device(args.device)
    except DatasetError as e:
        raise SystemExit(str(e)) from None
    overrides = {"epochs": args.epochs, "precision": args.precision, "random_encoders": True if args.random_encoders else None,
                 SETTINGS_KEY: parse_settings(args.settings)}

    runner = suite_runner(suite)
    ctx = runner.GridContext(args.data_root, args.results_dir, device, progress=not args.no_progress, overrides=overrides,
                             options={"keep_phase_checkpoints": args.keep_phase_checkpoints})
    print(f"suite {suite.name}: {len(cells)} cells on {device}")
    failed, ran, skipped = [], 0, 0
    for i, cell in enumerate(cells, 1):
        prefix = f"[{i}/{len(cells)}] {cell.label()}"
        try:
            if runner.is_done(cell, methods[cell.method], ctx):
                skipped += 1
                if args.dry_run:
                    print(f"{prefix}: done")
                continue
            if args.dry_run:
                print(f"{prefix}: to run")
                continue
            t0 = time.time()
            rec = runner.run_cell(cell, methods[cell.method], ctx)
            print(f"{prefix}: {runner.summary_line(rec)}  ({time.time() - t0:.1f}s)")
            ran += 1
        except KeyboardInterrupt:
            print(f"\ninterrupted during {cell.label()}; finished cells are kept, re-run to resume")
            return 130
        except Exception as e:  # one bad cell must not stop the grid
            message = (e.args[0] if isinstance(e, KeyError) else str(e)) if isinstance(e, (DatasetError, KeyError, ValueError)) else f"{type(e).__name__}: {e}"
            print(f"{prefix}: FAILED: {message}", file=sys.stderr)
            if args.dry_run:
                failed.append((cell, message))
                continue
            if not isinstance(e, DatasetError):
                traceback.print_exc()
            runner.fail_cell(cell, ctx, message)
            failed.append((cell, message))
    if args.dry_run:
        print(f"{len(cells)} cells: {skipped} done, {len(cells) - skipped - len(failed)} to run, {len(failed)} cannot run")
        return 1 if failed else 0
    print(f"done: {ran} ran, {skipped} already recorded, {len(failed)} failed")
    if not args.no_leaderboard:
        from benchmarks.leaderboard import render

        from datasets import registry as dataset_registry

        notes = [f"{len(failed)} cell(s) failed in the last run; see Failed cells."] if failed else []
        notes += [f"Not applicable: {note}." for note in not_applicable]
        reported = yaml.safe_load((ROOT / "benchmarks" / "reported.yaml").read_text())
        adapters = dataset_registry()
        # Every suite's page is re-rendered from its records, so each gets its own missing datasets
        # and reported numbers (not only the suite that just ran).
        info = {}
        for other in SUITES.values():
            absent = {k: st.message for k, a in sorted(adapters.items()) if other.name in a.suites and not (st := a.availability(args.data_root)).present}
            gone = missing if other is suite else absent
            info[other.name] = {"missing": gone, "missing_protocols": {k: [p.name for p in adapters[k].protocols()] for k in gone if k in adapters},
                                "title": other.description,
                                "notes": notes if other is suite else [], "reported": reported.get(other.name, []), "kind": other.kind}
        render(args.results_dir, args.leaderboard_dir, info, titles={k: a.title for k, a in adapters.items()},
               produced_by="python run_all.py --suite <suite>")
        print(f"leaderboard written to {args.leaderboard_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
