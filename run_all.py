"""Run a benchmark suite: grid of cells -> result records -> leaderboard.

    python run_all.py --suite audio-visual            # every method x modality x dataset present
    python run_all.py --list                          # datasets (present/missing), methods, suites
    python run_all.py --dry-run --methods lwf icarl-nme
    python run_all.py --datasets synth_av --epochs 2  # quick check (marked: not the reference protocol)
    python run_all.py --suite audio-multilabel        # multi-label audio suite (embedded SynthTags by default)
    python run_all.py --suite audio-visual audio-multilabel   # both (what `make run` does)
    python run_all.py --launcher ray                  # one Ray task per cell, packed on this machine's GPUs/CPUs
    python run_all.py --launcher slurm --slurm-partition gpu --slurm-time 120   # a Slurm job array (submitit)

A second run with nothing changed skips every finished cell (same resolved config and
stream hash). A failing cell is reported and recorded as failed; the rest of the grid runs.
Runs sharing a results directory run each cell once (cell claims); SIGTERM or Ctrl-C stops
after releasing the claims, keeps the last finished step of every started cell and prints
the command that resumes.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

import yaml

from benchmarks.core.method import SETTINGS_KEY, check_settings
from benchmarks.run.cell import GridContext
from benchmarks.run.grid import build_grid
from benchmarks.run.launch import LaunchOptions
from benchmarks.run.launchers import LAUNCHERS
from benchmarks.suites import SUITES, get_suite
from datasets.cli import setup_console
from datasets.errors import ConfigError, HarnessError
from datasets.io import pick_device

ROOT = Path(__file__).resolve().parent


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--suite",
        nargs="+",
        default=["audio-visual"],
        choices=sorted(SUITES),
        metavar="SUITE",
        help=f"which grid(s) to run: {', '.join(sorted(SUITES))} (default: audio-visual)",
    )
    p.add_argument(
        "--datasets", nargs="+", help="restrict to these datasets (default: every dataset of the suite that is present)"
    )
    p.add_argument("--methods", nargs="+", help="restrict to these methods (default: all of the suite)")
    p.add_argument(
        "--modalities",
        nargs="+",
        choices=["audio", "visual", "audio-visual"],
        help="restrict modalities (default: all a method supports)",
    )
    p.add_argument("--seeds", nargs="+", type=int, help="training seeds (default: the suite's, 0 1)")
    p.add_argument(
        "--data-root", type=Path, default=ROOT / "data", help="datasets and caches live here (default: ./data)"
    )
    p.add_argument(
        "--results-dir", type=Path, default=ROOT / "results", help="one JSON record per cell (default: ./results)"
    )
    p.add_argument(
        "--leaderboard-dir",
        type=Path,
        default=ROOT / "leaderboard",
        help="where the leaderboard is written (default: ./leaderboard)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        help="training/inference precision (default: the method config's, fp32)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        help="override every method's epochs (recorded; the leaderboard marks such cells as not the reference "
        "protocol)",
    )
    p.add_argument(
        "--random-encoders",
        action="store_true",
        help="allow methods that train on raw media (CIGN raw mode) "
        "to start their encoders from random weights when no "
        "pretrained weights are given (recorded in every cell's config)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="settings",
        help="set a method config value (YAML-parsed) in every method whose config has KEY, e.g. "
        "--set audioclip_ckpt=/weights/AudioCLIP-Full-Training.pt; recorded in the cell's config; repeatable. "
        "A KEY that no selected method has is an error listing the valid keys",
    )
    p.add_argument(
        "--list", action="store_true", help="list datasets with present/missing status, methods and suites, then exit"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the grid (and which cells are already done) without running"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-leaderboard", action="store_true", help="do not re-render the leaderboard")
    p.add_argument(
        "--audio-root",
        action="append",
        metavar="[DATASET=]DIR",
        help="multi-label suite: read the wavs named in a dataset's "
        "phase files under DIR (re-roots absolute paths from "
        "another machine; see README). Without DATASET= it applies to every multi-label dataset; repeatable",
    )
    p.add_argument(
        "--paired-folder",
        action="append",
        metavar="PATH[=NAME]",
        help="audio-visual suite: add a paired image+audio folder "
        "(PATH/image/{train,test}/<class>/, PATH/audio/...; see "
        "datasets/adapters/paired_folder.py) as dataset NAME (default: the folder name); repeatable",
    )
    p.add_argument(
        "--paired-protocol",
        metavar="INITIAL,PER_STEP",
        help="protocol of the --paired-folder datasets that have no "
        "protocol.yaml, e.g. 4,3 (4 classes, then steps of 3)",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="paired image+audio datasets: leave unreadable files out (listed in the store meta) instead of stopping "
        "(same as PAIRED_SKIP_BAD=1)",
    )
    p.add_argument(
        "--keep-phase-checkpoints",
        action="store_true",
        help="multi-label suite: keep every phase's model as "
        "<record>.phases/phase<t>.pt (input of python -m benchmarks.tools.cka)",
    )
    p.add_argument(
        "--launcher",
        default="local",
        choices=sorted(LAUNCHERS),
        help="how the cells run: local (in this process, one after another), ray (one Ray task per cell, packed "
        "by the cell's declared GPU/CPU needs), slurm (a submitit job array, requeued on preemption); default local",
    )
    launch = p.add_argument_group("ray and slurm launchers")
    launch.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="join this Ray cluster (e.g. HEAD:6379 or auto, after `ray start --head`); default: a local Ray "
        "instance sized to this machine",
    )
    launch.add_argument(
        "--gpus-per-cell",
        type=float,
        help="GPU share every Ray task asks for, over each method's declaration (feature-level 0.25, raw media 1)",
    )
    launch.add_argument(
        "--cpus-per-cell", type=float, help="CPUs (and torch threads) every Ray task asks for (default: the method's)"
    )
    launch.add_argument(
        "--slurm-executor",
        choices=["slurm", "local"],
        default="slurm",
        help="slurm (sbatch) or local (submitit's local executor: each array task a process here)",
    )
    launch.add_argument("--slurm-partition", help="Slurm partition of the array tasks")
    launch.add_argument(
        "--slurm-time", type=int, default=240, metavar="MIN", help="time limit per array task in minutes (default 240)"
    )
    launch.add_argument("--slurm-gpus-per-task", type=int, help="GPUs per array task (default 1, 0 with --device cpu)")
    launch.add_argument("--slurm-cpus-per-task", type=int, default=4, help="CPUs per array task (default 4)")
    launch.add_argument(
        "--slurm-cells-per-task", type=int, default=1, help="cells each array task runs in turn (default 1)"
    )
    launch.add_argument("--slurm-array-parallelism", type=int, help="at most this many array tasks at once")
    launch.add_argument(
        "--slurm-folder", type=Path, help="submitit job files and logs (default: <results-dir>/.submitit)"
    )
    p.add_argument("--verbose", action="store_true", help="also show debug messages")
    return p.parse_args(argv)


def parse_settings(values) -> dict:
    """--set KEY=VALUE values -> {KEY: YAML-parsed VALUE}."""
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({e})") from None
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
    from datasets.adapters.paired_folder import configure, parse_paired_protocol, register_paired_folder

    protocol = parse_paired_protocol(args.paired_protocol) if args.paired_protocol else None
    for value in args.paired_folder or []:
        path, sep, name = value.rpartition("=")
        if not (sep and path and name and "/" not in name):
            path, name = value, None
        if not Path(path).is_dir():
            raise ConfigError(
                f"--paired-folder {path}: no such folder; give the folder that holds image/ and audio/ "
                f"(see README, 'Your own paired folder')"
            )
        if protocol is not None and (Path(path) / "protocol.yaml").is_file():
            log.info(
                "[note] %s is used; --paired-protocol applies only to folders without one", Path(path) / "protocol.yaml"
            )
        register_paired_folder(Path(path), name, None if (Path(path) / "protocol.yaml").is_file() else protocol)
    configure(skip_bad=True if args.skip_bad else None)  # after the registrations: it sets every paired adapter


def list_everything(args) -> None:
    from datasets import registry as dataset_registry
    from methods import registry as method_registry

    print("Suites:")
    for s in SUITES.values():
        print(f"  {s.name:16s} {s.description} (default seeds {list(s.seeds)})")
    print("Datasets:")
    for name, a in sorted(dataset_registry().items()):
        status = a.availability(args.data_root)
        protocols = ", ".join(p.name for p in a.protocols())
        print(
            f"  {name:16s} [{'present' if status.present else 'MISSING'}] "
            f"{a.title}; suites {', '.join(a.suites)}; protocols {protocols}"
        )
        if not status.present:
            print("      " + status.message.replace("\n", "\n      "))
    print("Methods:")
    for name, m in sorted(method_registry().items()):
        print(
            f"  {name:16s} modalities {', '.join(m.modalities)}; suites "
            f"{', '.join(m.suites)}; folder {m.folder.relative_to(ROOT)}"
        )


log = logging.getLogger("run_all")


def main(argv=None) -> int:
    args = parse_args(argv)
    # the command an interrupted run prints to resume: this one again (finished cells are skipped)
    args.resume_command = shlex.join(["python", os.path.relpath(__file__), *(sys.argv[1:] if argv is None else argv)])
    setup_console(args.verbose)
    try:
        return run(args)
    except HarnessError as e:
        log.error("error: %s", e)
        return e.exit_code


def run(args) -> int:
    if args.audio_root:
        from datasets.adapters.audio_multilabel import configure

        configure(audio_roots(args.audio_root))
    register_paired(args)
    if args.list:
        list_everything(args)
        return 0
    # Paths under the working directory are shown relative, so messages and the committed
    # leaderboard carry no machine-specific absolute paths.
    if Path(args.data_root).resolve().is_relative_to(Path.cwd()):
        args.data_root = Path(os.path.relpath(args.data_root))
    settings = parse_settings(args.settings)
    suites = [get_suite(name) for name in dict.fromkeys(args.suite)]
    grids = {
        s.name: build_grid(s, args.data_root, args.datasets, args.methods, args.modalities, args.seeds) for s in suites
    }
    # a --set key must belong to some method selected in any of the suites run together
    check_settings(
        settings,
        [g.methods[m] for g in grids.values() for m in (args.methods or g.methods) if m in g.methods],
        [d for g in grids.values() for d in (args.datasets or g.datasets)],
    )
    device = pick_device(args.device)
    overrides = {
        "epochs": args.epochs,
        "precision": args.precision,
        "random_encoders": True if args.random_encoders else None,
        SETTINGS_KEY: settings,
    }
    launch = launch_options(args)
    status, failed_any, outcomes = 0, False, {}
    for suite in suites:
        grid = grids[suite.name]
        for name, message in grid.missing.items():
            log.info("[missing] %s: %s", name, message)
        for note in grid.not_applicable:
            log.info("[skipped] %s", note)
        ctx = GridContext(
            suite,
            args.data_root,
            args.results_dir,
            device,
            progress=not args.no_progress,
            overrides=overrides,
            options={"keep_phase_checkpoints": args.keep_phase_checkpoints},
        )
        print(f"suite {suite.name}: {len(grid.cells)} cells on {device}")
        outcome = LAUNCHERS[args.launcher](grid.cells, grid.methods, ctx, dry_run=args.dry_run, options=launch)
        if outcome.interrupted:
            return 130
        if args.dry_run:
            to_run = len(grid.cells) - outcome.skipped - len(outcome.failed)
            print(f"{len(grid.cells)} cells: {outcome.skipped} done, {to_run} to run, {len(outcome.failed)} cannot run")
            status = max(status, 1 if outcome.failed else 0)
            continue
        print(f"done: {outcome.ran} ran, {outcome.skipped} already recorded, {len(outcome.failed)} failed")
        failed_any = failed_any or bool(outcome.failed)
        outcomes[suite.name] = (grid, outcome)
    if outcomes and not args.no_leaderboard:
        render_leaderboard(args, outcomes)
    return 1 if failed_any else status


def launch_options(args) -> LaunchOptions:
    return LaunchOptions(
        resume_command=getattr(args, "resume_command", "python run_all.py"),
        device_request=args.device,
        gpus_per_cell=args.gpus_per_cell,
        cpus_per_cell=args.cpus_per_cell,
        ray_address=args.ray_address,
        slurm_executor=args.slurm_executor,
        slurm_partition=args.slurm_partition,
        slurm_time_min=args.slurm_time,
        slurm_gpus_per_task=args.slurm_gpus_per_task,
        slurm_cpus_per_task=args.slurm_cpus_per_task,
        slurm_cells_per_task=args.slurm_cells_per_task,
        slurm_array_parallelism=args.slurm_array_parallelism,
        slurm_folder=str(args.slurm_folder) if args.slurm_folder else None,
    )


def render_leaderboard(args, outcomes: dict) -> None:
    """Re-render every suite's page from the records: each with its missing datasets and reported numbers, and,
    for the suites just run, notes on failed and not-applicable cells."""
    from benchmarks.report import REPORTED
    from benchmarks.report.pages import render
    from datasets import registry as dataset_registry
    from methods import registry as method_registry

    reported = yaml.safe_load(REPORTED.read_text())
    adapters = dataset_registry()
    info = {}
    for suite in SUITES.values():
        notes = []
        if suite.name in outcomes:
            grid, outcome = outcomes[suite.name]
            gone = grid.missing
            notes = (
                [f"{len(outcome.failed)} cell(s) failed in the last run; see Failed cells."] if outcome.failed else []
            )
            notes += [f"Not applicable: {note}." for note in grid.not_applicable]
        else:
            gone = {
                k: st.message
                for k, a in sorted(adapters.items())
                if suite.name in a.suites and not (st := a.availability(args.data_root)).present
            }
        info[suite.name] = {
            "missing": gone,
            "missing_protocols": {k: [p.name for p in adapters[k].protocols()] for k in gone},
            "title": suite.description,
            "notes": notes,
            "reported": reported.get(suite.name, []),
            "kind": suite.kind.name,
        }
    render(
        args.results_dir,
        args.leaderboard_dir,
        info,
        titles={k: a.title for k, a in adapters.items()},
        produced_by="python run_all.py --suite <suite>",
        families={name: spec.family for name, spec in method_registry().items()},
    )
    log.info("leaderboard written to %s", args.leaderboard_dir)


if __name__ == "__main__":
    sys.exit(main())
