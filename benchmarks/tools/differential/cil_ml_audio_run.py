"""Whole-run differential against the CIL-ML-Audio reference: its `main_audioset.py` and the harness's multi-label
cells on the same phase files (mulimani/CIL-ML-Audio; the function-level comparison is `cil_ml_audio`).

    python -m benchmarks.tools.differential.cil_ml_audio_run --reference PATH/CIL-ML-Audio --out DIR \
        [--python INTERP] [--seeds 0 1 2] [--epochs 16] [--seconds 0.64]

- **Data**: SynthTags (the harness's embedded generator, which writes the reference's phase files) with clips of
  `--seconds` (0.64 s: 65 x 64 log-mels; the suite's 0.32 s clips give 33 frames, which the reference's CNN14
  cannot take: its sixth 2 x 2 average pooling meets a time axis of length 1 and fails, where the harness's skips
  it). The reference reads a copy of the phase files with absolute paths and one sentinel record appended to each
  (its `READ_DATA` drops the last record of a file), so both sides train and test on the same clips.
- **Reference side**: `main_audioset.py`, `data/`, `models/`, `lib/` copied to a temporary folder, the printed
  patches of `PATCHES` applied (each fails loudly when its text is not found), run with the flags of
  `scripts/run_audioset.sh` except lr, lr-ft and epochs, which are the harness's SynthTags settings
  (`methods/_cnn14/protocol.yaml`), and `--num-workers 0`; torch is seeded per run (the reference seeds numpy
  only). Each phase's metrics are read from a printed JSON line.
- **Harness side**: the `ml_indl-bn` (and `ml_fine_tuning-bn`, which has no reference code) cells on a store
  imported from the same files, with the SynthTags config (widths 4-128, no dropout, 16 epochs, lr 0.03 / 0.003).
- **Table**: per phase, the reference's thresholded mAP (its number) against the harness's `mAP_binarized`, and
  micro- / macro-F1, as mean +- std over the seeds of each side.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.tools.differential.patches import Patch, apply_patches
from datasets.io import atomic_write_text

REFERENCE = "mulimani/CIL-ML-Audio"
REFERENCE_COMMIT = "ed8e0d0"
#: scripts/run_audioset.sh; lr, lr-ft and epochs are set from the harness's SynthTags config, --save dropped
REFERENCE_FLAGS = "--new-classes 5 --start-classes 30 --cosine --kd --w-kd 1 --batch-size 32 --num-workers 0"
REFERENCE_WIDTHS = (64, 128, 256, 512, 1024, 2048)
MARK = "DIFFERENTIAL "
HARNESS_METHODS = ("ml_indl-bn", "ml_fine_tuning-bn")
COMPARED = {"ml_indl-bn": "reference --kd (IODFD)"}  # harness row -> reference run it is compared with
METRICS = (("mAP", "mAP_binarized"), ("f1_micro", "micro_f1"), ("f1_macro", "macro_f1"))  # reference, harness


def patches(wav_prefix: str, seconds: float, widths: tuple[int, ...], dropout: float) -> list[Patch]:
    out = [
        Patch(
            "main_audioset.py",
            "import torch\n",
            "import torch\nimport json as _json  # differential\n"
            "torch.Tensor.cuda = lambda self, *a, **k: self  # differential\n"
            "torch.nn.Module.cuda = lambda self, *a, **k: self  # differential\n"
            "torch.manual_seed(int(__import__('os').environ['AVCIL_SEED']))  # differential\n",
            "CPU run: every .cuda() call is a no-op; torch seeded per run (the reference seeds numpy only)",
        ),
        Patch(
            "main_audioset.py",
            "        all_mAp.append(mAp)\n",
            "        all_mAp.append(mAp)\n"
            f"        print({MARK!r} + _json.dumps({{'phase': phase, 'mAP': float(mAp), 'f1_micro': float(f1_micro), "
            "'f1_macro': float(f1_macro), 'lwlrap': float(lwlrap_value), 'mAP_ini': float(mAp_ini), "
            "'f1_macro_ini': float(f1_macro_ini)}))  # differential\n",
            "print each phase's metrics as one JSON line (the values evaluate_bin returns)",
        ),
        Patch(
            "data/dataset_txt.py",
            "        y, sr = torchaudio.load(audio_file)\n",
            "        _d, sr = __import__('soundfile').read(audio_file, dtype='float32', always_2d=True)  # diff.\n"
            "        y = torch.from_numpy(_d.T.copy())  # diff.\n",
            "torchaudio >= 2.9 loads through torchcodec; soundfile gives the same normalised samples of these wavs",
        ),
        Patch(
            "data/dataset_txt.py",
            "pad_or_truncate(y, self.sample_rate * 10)",
            f"pad_or_truncate(y, int(round(self.sample_rate * {seconds!r})))",
            f"clip length {seconds} s instead of 10 s (the fixture's clips; the harness's front-end is set the same)",
        ),
        Patch(
            "data/read_audioset_txt.py",
            "line.startswith('/scratch/project_2003370/')",
            f"line.startswith({wav_prefix!r})",
            "records are found by a hard-coded path prefix; the fixture's clips live elsewhere",
        ),
    ]
    chans = (1,) + REFERENCE_WIDTHS
    mine = (1,) + tuple(widths)
    for i in range(6):
        out.append(
            Patch(
                "models/cnn14_pann_lin.py",
                f"ConvBlock(in_channels={chans[i]}, out_channels={chans[i + 1]})",
                f"ConvBlock(in_channels={mine[i]}, out_channels={mine[i + 1]})",
                f"block {i + 1} width {mine[i + 1]} (the harness's SynthTags widths; reference {chans[i + 1]})",
            )
        )
    out += [
        Patch(
            "models/cnn14_pann_lin.py",
            f"nn.Linear({REFERENCE_WIDTHS[-1]}, classes_num)",
            f"nn.Linear({widths[-1]}, classes_num)",
            "the head's input is the last width",
        ),
        Patch(
            "models/cnn14_pann_lin.py",
            "F.dropout(x, p=0.2, training=self.training)",
            f"F.dropout(x, p={dropout!r}, training=self.training)",
            f"dropout {dropout} after each block (the harness's SynthTags setting)",
            count=6,
        ),
    ]
    return out


def reference_phase_files(phases: Path, dataset_folder: Path, out: Path) -> None:
    """The phase files with absolute paths, plus a sentinel record (the first's labels) that READ_DATA drops."""
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(phases.glob("*.txt")):
        lines = f.read_text().splitlines()
        text = "\n".join(f"{dataset_folder}/{ln}" if ln[:1] and not ln[:1].isspace() else ln for ln in lines)
        first = [i for i, ln in enumerate(lines) if ln[:1] and not ln[:1].isspace()]
        sentinel = list(lines[first[0] : first[1]] if len(first) > 1 else lines[first[0] :])
        # a path of its own: READ_DATA finds record starts with infile.index(line), the first equal line
        sentinel[0] = f"{dataset_folder}/wav/never-read-sentinel.wav_[" + sentinel[0].split("_[", 1)[1]
        (out / f.name).write_text(text + "\n" + "\n".join(sentinel) + "\n")


def parse_reference_log(text: str) -> list[dict]:
    return [json.loads(line[len(MARK) :]) for line in text.splitlines() if line.startswith(MARK)]


def run_reference(reference: Path, data: Path, seed: int, cfg: dict, python: str, log: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="avcil-cilml-run-") as tmp:
        tmp = Path(tmp)
        for part in ("main_audioset.py", "data", "models", "lib"):
            src = Path(reference) / part
            (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp / part)
        notes = apply_patches(tmp, patches(f"{data}/", cfg["seconds"], cfg["widths"], cfg["dropout"]))
        reference_phase_files(data / "phases", data, tmp / "data_txt")
        flags = REFERENCE_FLAGS.split() + [
            "--lr",
            str(cfg["lr"]),
            "--lr-ft",
            str(cfg["lr_ft"]),
            "--epochs",
            str(cfg["epochs"]),
        ]
        env = {**os.environ, "AVCIL_SEED": str(seed), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
        env.pop("PYTHONPATH", None)
        t0 = time.time()
        proc = subprocess.run(
            [python, "main_audioset.py", *flags], cwd=tmp, env=env, capture_output=True, text=True, timeout=3600
        )
        seconds = time.time() - t0
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("\n".join(notes) + "\n" + " ".join(flags) + "\n" + proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise RuntimeError(f"reference run failed (log {log}):\n{(proc.stdout + proc.stderr)[-3000:]}")
        phases = parse_reference_log(proc.stdout)
        return {"phases": phases, "seconds": seconds, "patches": notes, "flags": flags}


def harness_setup(data_root: Path, seconds: float):
    from benchmarks.suites.multilabel import build_ml_stream
    from datasets.adapters.synth_tags import SynthTags, SynthTagsConfig

    adapter = SynthTags(SynthTagsConfig(seconds=seconds))
    folder = adapter.generate(data_root)
    store = adapter.open(data_root, progress=False)
    return adapter, folder, store, build_ml_stream(adapter, store, data_root)


def harness_config(method: str, epochs: int | None = None) -> dict:
    from methods import registry

    return registry()[method].config("synth_tags", "audio", {"epochs": epochs} if epochs else None)


def run_harness(method: str, store, stream, seed: int, epochs: int | None = None) -> dict:
    from benchmarks.run.cell import trained_steps
    from benchmarks.suites.multilabel import MULTILABEL
    from methods import registry

    spec = registry()[method]
    cfg = harness_config(method, epochs)
    threads = torch.get_num_threads()
    torch.set_num_threads(int(cfg.get("cpu_threads") or 1))
    try:
        torch.manual_seed(seed)
        device = torch.device("cpu")
        strategy = spec.build(
            modality="audio", store=store, stream=stream, cfg=cfg, device=device, seed=seed, progress=False
        )
        rows, t0 = MULTILABEL.new_rows(), time.time()
        for t, _ in trained_steps(stream, strategy, 0, device):
            MULTILABEL.evaluate_step(strategy, stream, t, rows)
        seconds = time.time() - t0
    finally:
        torch.set_num_threads(threads)
    keep = ("mAP", "mAP_binarized", "micro_f1", "macro_f1", "lwlrap")
    return {"phases": [{k: p[k] / 100.0 for k in keep} for p in rows["phases"]], "seconds": seconds, "config": cfg}


def mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"


def table(ref_runs: list[dict], harness_runs: dict[str, list[dict]], header: list[str]) -> str:
    lines = [*header, ""]
    n_phases = len(ref_runs[0]["phases"]) if ref_runs else 0
    for ref_key, h_key in METRICS:
        lines += [f"### {h_key} (reference: {ref_key} of `evaluate_bin`)", ""]
        cols = ["phase", f"reference --kd (n={len(ref_runs)})"]
        cols += [f"harness {m} (n={len(r)})" for m, r in harness_runs.items()]
        cols += [f"{m} − reference" for m in harness_runs if m in COMPARED]
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" + "---:|" * (len(cols) - 1)]
        for t in range(n_phases):
            ref = [r["phases"][t][ref_key] for r in ref_runs]
            row = [str(t), mean_std(ref)]
            for runs in harness_runs.values():
                row.append(mean_std([r["phases"][t][h_key] for r in runs]))
            for m, runs in harness_runs.items():
                if m in COMPARED:
                    h = [r["phases"][t][h_key] for r in runs]
                    row.append(f"{100 * (statistics.mean(h) - statistics.mean(ref)):+.1f}")
            lines.append("| " + " | ".join(row) + " |")
        ref_avg = [statistics.mean(p[ref_key] for p in r["phases"]) for r in ref_runs]
        row = ["avg", mean_std(ref_avg)]
        avgs = {m: [statistics.mean(p[h_key] for p in r["phases"]) for r in runs] for m, runs in harness_runs.items()}
        row += [mean_std(v) for v in avgs.values()]
        row += [f"{100 * (statistics.mean(avgs[m]) - statistics.mean(ref_avg)):+.1f}" for m in avgs if m in COMPARED]
        lines += ["| " + " | ".join(row) + " |", ""]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.tools.differential.cil_ml_audio_run",
        description="Run CIL-ML-Audio's main_audioset.py and the harness's multi-label cells on the same phase files.",
    )
    p.add_argument("--reference", type=Path, required=True, help=f"a checkout of {REFERENCE}")
    p.add_argument("--out", type=Path, required=True, help="output folder: data, logs, cil_ml_audio_run.{md,json}")
    p.add_argument("--python", default=sys.executable, help="interpreter for the reference side")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None, help="epochs per phase on both sides (default: SynthTags')")
    p.add_argument("--seconds", type=float, default=0.64, help="clip length of the generated SynthTags")
    p.add_argument("--methods", nargs="+", default=list(HARNESS_METHODS), choices=HARNESS_METHODS)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    data_root = (a.out / "data").resolve()
    _, folder, store, stream = harness_setup(data_root, a.seconds)
    cfg = harness_config("ml_indl-bn", a.epochs)
    shared = {k: cfg[k] for k in ("lr", "lr_ft", "epochs", "widths", "dropout")} | {"seconds": a.seconds}
    runs_file = a.out / "cil_ml_audio_run.json"
    done = json.loads(runs_file.read_text()) if runs_file.is_file() else {}
    if done.get("settings") != shared:
        done = {"settings": shared, "reference": {}, "harness": {}}
    for seed in a.seeds:
        if str(seed) not in done["reference"]:
            r = run_reference(a.reference, folder.resolve(), seed, shared, a.python, a.out / f"logs/seed{seed}.log")
            done["reference"][str(seed)] = r
            print(f"reference seed {seed}: {r['seconds']:.0f} s, mAP {[round(p['mAP'], 3) for p in r['phases']]}")
            atomic_write_text(runs_file, json.dumps(done, indent=1))
        for m in a.methods:
            key = f"{m}/{seed}"
            if key not in done["harness"]:
                h = run_harness(m, store, stream, seed, a.epochs)
                done["harness"][key] = {k: v for k, v in h.items() if k != "config"}
                print(
                    f"harness {m} seed {seed}: {h['seconds']:.0f} s, mAP_bin "
                    f"{[round(p['mAP_binarized'], 3) for p in h['phases']]}"
                )
                atomic_write_text(runs_file, json.dumps(done, indent=1))
    ref_runs = [done["reference"][str(s)] for s in a.seeds]
    harness_runs = {m: [done["harness"][f"{m}/{s}"] for s in a.seeds] for m in a.methods}
    first = ref_runs[0]
    header = [
        "# CIL-ML-Audio whole-run differential",
        "",
        f"Reference `{REFERENCE}` (kept results: `{REFERENCE_COMMIT}`), `main_audioset.py` with "
        f"`{' '.join(first['flags'])}`; seeds {a.seeds} on each side (reference: torch seed; harness: cell seed).",
        f"Data: SynthTags with {a.seconds} s clips ({stream.counts()['train']} train / "
        f"{stream.counts()['test']} test clips per phase); CNN14 widths {list(shared['widths'])}, dropout "
        f"{shared['dropout']}, {shared['epochs']} epochs per phase, lr {shared['lr']} / {shared['lr_ft']}.",
        "Reference patches (a temporary copy):",
        *(f"- {p}" for p in first["patches"]),
        "",
        f"Seconds per run: reference {statistics.mean(r['seconds'] for r in ref_runs):.0f}, harness "
        + ", ".join(f"{m} {statistics.mean(r['seconds'] for r in runs):.0f}" for m, runs in harness_runs.items())
        + ". `ml_fine_tuning-bn` has no reference code (shown for scale only).",
    ]
    md = table(ref_runs, harness_runs, header)
    atomic_write_text(a.out / "cil_ml_audio_run.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
