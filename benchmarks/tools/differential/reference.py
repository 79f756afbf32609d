"""Running the AV-CIL reference's own training scripts (weiguoPian/AV-CIL_ICCV2023) on a generated fixture.

Nothing of the reference is in this project: the user gives a checkout (`--reference PATH`). For each run, the
method's folder and `model/` are copied into a temporary directory, the short list of textual patches below is
applied to the copy (each printed, each failing loudly when its text is not found), `data/<folder>` points at the
fixture, and the script runs in a subprocess with the flags of its `run_incremental_*.sh`, except epochs, batch
sizes and memory, which the differential sets on both sides. Its stdout is parsed for the per-epoch train loss,
val accuracy, selected (best-val) epoch and per-step test accuracy (the `print` lines every train script has).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.tools.differential.patches import Patch, apply_patches, describe

# a line the log parser reads: the exemplar video ids after a step (None marks an empty slot in the reference)
_PRINT_EXEMPLARS = (
    "        print('Exemplar vids: ' + __import__('json').dumps([str(v) for v in {} if v is not None]))  # differential"
    "\n"
)
_HERDED = "exemplar_class_mean = train(args, step, train_set, val_set, exemplar_class_vids)\n"

PATCHES = (
    Patch(
        "*/train_incremental_*.py",
        "import torch\n",
        "import torch\ntorch.load = __import__('functools').partial(torch.load, weights_only=False)  # differential\n",
        "torch >= 2.6 loads weights_only by default; the scripts torch.save whole modules and load them back "
        "(their own files, written by the same run into its temporary directory)",
    ),
    Patch(
        "*/train_incremental_*.py",
        "plt.savefig(",
        "(lambda *a, **k: None)(",
        "skip the two loss/val plots drawn after every epoch (speed only; numbers unchanged)",
    ),
    Patch(
        "*/dataloader_*.py",
        "import librosa\n",
        "",
        "the iCaRL, AFC and AV-CIL dataloaders import librosa (feature extraction only) and never call it",
        optional=True,
    ),
    Patch(
        "LwF/train_incremental_lwf.py",
        "CE_loss = CE_loss(args.class_num_per_step, out, labels)",
        "loss_CE = CE_loss(args.class_num_per_step, out, labels)",
        "LwF line 139 rebinds the function name CE_loss, so step 0 (line 115) raises UnboundLocalError",
    ),
    Patch(
        "LwF/train_incremental_lwf.py",
        "loss = loss_KD + CE_loss",
        "loss = loss_KD + loss_CE",
        "(the same fix, where the renamed value is used)",
    ),
    *(
        Patch(
            f"{folder}/dataloader_{name}.py",
            "        self.exemplar_vids_set = [vid for vid in self.exemplar_vids_set if vid is not None]\n",
            "        self.exemplar_vids_set = [vid for vid in self.exemplar_vids_set if vid is not None]\n"
            f"{_PRINT_EXEMPLARS.format('self.exemplar_vids_set')}",
            "print the exemplar set the next step trains with (SS-IL / AV-CIL sample it when a step starts)",
        )
        for folder, name in (("SSIL", "ssil"), ("ours", "ours"))
    ),
    *(
        Patch(
            f"{folder}/train_incremental_{name}.py",
            _HERDED,
            _HERDED + f"{_PRINT_EXEMPLARS.format('np.asarray(exemplar_class_vids).reshape(-1)')}",
            "print the exemplar set herded at the end of each step (iCaRL / AFC)",
        )
        for folder, name in (("iCaRL", "icarl"), ("AFC", "afc"))
    ),
    Patch(
        "AFC/train_incremental_afc.py",
        "KMeans(n_clusters=10)",
        "KMeans(n_clusters=10, n_init=10)",
        "the reference pins scikit-learn 1.2.0, whose KMeans default is n_init=10 (1.4 changed it to 'auto' = 1)",
    ),
)


@dataclass(frozen=True)
class RefMethod:
    folder: str
    script: str
    flags: tuple[str, ...] = ()
    memory: bool = False  # takes --memory_size
    exemplar_batch: bool = False  # takes --exemplar_batch_size (SS-IL, ours)
    herding_batch: bool = False  # takes --gen_exem_batch_size (iCaRL, AFC)
    modality_flag: bool = True


_AFC = ("--lam_disc", "0.5")  # run_incremental_afc.sh (the argparse default 4.0 is not what it runs)

# harness method name -> the reference script and the flags of its run_incremental_*.sh (AVE)
METHODS = {
    "fine_tuning": RefMethod("fine_tuning", "train_incremental_fine_tuning.py"),
    "upper_bound": RefMethod("fine_tuning", "train_incremental_fine_tuning.py", ("--upper_bound", "True")),
    "lwf": RefMethod("LwF", "train_incremental_lwf.py"),
    "icarl-nme": RefMethod("iCaRL", "train_incremental_icarl.py", ("--classifier", "NME"), True, False, True),
    "icarl-fc": RefMethod("iCaRL", "train_incremental_icarl.py", ("--classifier", "FC"), True, False, True),
    "ssil": RefMethod("SSIL", "train_incremental_ssil.py", (), True, True),
    "afc-nme": RefMethod(
        "AFC", "train_incremental_afc.py", ("--classify", "NME", "--lam_disc", "0.5"), True, False, True
    ),
    "afc-lsc": RefMethod(
        "AFC", "train_incremental_afc.py", ("--classify", "LSC", "--lam_disc", "0.5"), True, False, True
    ),
    "av_cil": RefMethod(
        "ours",
        "train_incremental_ours.py",
        (
            "--instance_contrastive",
            "--class_contrastive",
            "--attn_score_distil",
            "--instance_contrastive_temperature",
            "0.05",
            "--class_contrastive_temperature",
            "0.05",
            "--lam",
            "0.5",
            "--lam_I",
            "0.5",
            "--lam_C",
            "1.0",
        ),
        True,
        True,
    ),
}

# reference folder name of each harness dataset (datasets.adapters.avcil_features.INFOS) and its flags
DATASET_FLAGS = {"ave": ("AVE", 28, 7), "ksounds": ("ksounds", 30, 6), "vggsound100": ("VGGSound_100", 100, 10)}


def code_sha(reference: Path, method: str) -> str:
    """sha256 over the Python files a run of `method` copies from the checkout (its folder and `model/`), before
    patching: a cached reference run is reused only for the same code."""
    digest = hashlib.sha256()
    for sub in ("model", METHODS[method].folder):
        for path in sorted((Path(reference) / sub).rglob("*.py")):
            digest.update(str(path.relative_to(reference)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def check_checkout(reference: Path) -> None:
    missing = [f"{m.folder}/{m.script}" for m in METHODS.values() if not (reference / m.folder / m.script).is_file()]
    if missing or not (reference / "model").is_dir():
        raise FileNotFoundError(
            f"--reference {reference} is not an AV-CIL_ICCV2023 checkout (missing: {', '.join(missing) or 'model/'}); "
            "clone https://github.com/weiguoPian/AV-CIL_ICCV2023 and pass its path"
        )


def patch_tree(root: Path, folders: set[str]) -> list[str]:
    """Apply PATCHES to the copied method folders; one line per applied patch."""
    return apply_patches(root, PATCHES, folders)


def describe_patches() -> list[str]:
    return describe(PATCHES)


def command(method: str, modality: str, seed: int, settings: dict, dataset: str = "ave") -> list[str]:
    m = METHODS[method]
    folder, num_classes, per_step = DATASET_FLAGS[dataset]
    cmd = [
        "--dataset",
        folder,
        "--num_classes",
        str(num_classes),
        "--class_num_per_step",
        str(per_step),
        "--max_epoches",
        str(settings["epochs"][modality]),
        "--num_workers",
        "0",
        "--lr",
        str(settings["lr"]),
        "--lr_decay",
        "False",
        "--milestones",
        "100",
        "--weight_decay",
        str(settings["weight_decay"]),
        "--train_batch_size",
        str(settings["batch_size"]),
        "--infer_batch_size",
        str(settings["eval_batch_size"]),
        "--seed",
        str(seed),
        *m.flags,
    ]
    if m.modality_flag:
        cmd += ["--modality", modality]
    if m.memory:
        cmd += ["--memory_size", str(settings["memory"])]
    if m.exemplar_batch:
        cmd += ["--exemplar_batch_size", str(settings["exemplar_batch_size"])]
    if m.herding_batch:
        cmd += ["--gen_exem_batch_size", str(settings["herding_batch_size"])]
    return cmd


_EPOCH_LOSS = re.compile(r"^Epoch:(\d+) train_loss:([-\d.eE+na]+)")
_EPOCH_VAL = re.compile(r"^Epoch:(\d+) val_res:([-\d.eE+]+)")
_BEST = re.compile(r"^Saving best model at Epoch (\d+)")
_STEP = re.compile(r"^Incremental step: (\d+)")
_TEST = re.compile(r"^Incremental step (\d+) Testing res: ([-\d.eE+]+)")
_EXEMPLARS = re.compile(r"^Exemplar vids: (\[.*\])$")


def parse_log(text: str) -> dict:
    """Per step: epochs [{epoch, loss, val}], the selected epoch (last 'Saving best'), test accuracy (%); and the
    exemplar sets in the order printed (the k-th: the memory after step k). Epochs are numbered from 1 (the
    harness's numbering; the reference prints from 0)."""
    steps: list[dict] = []
    exemplars: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if m := _EXEMPLARS.match(line):
            exemplars.append(json.loads(m[1]))
        elif m := _STEP.match(line):
            steps.append({"epochs": [], "best_epoch": None, "acc": None})
        elif not steps:
            continue
        elif m := _EPOCH_LOSS.match(line):
            steps[-1]["epochs"].append({"epoch": int(m[1]) + 1, "loss": float(m[2]), "val": None})
        elif m := _EPOCH_VAL.match(line):
            steps[-1]["epochs"][-1]["val"] = 100.0 * float(m[2])
        elif m := _BEST.match(line):
            steps[-1]["best_epoch"] = int(m[1]) + 1
        elif m := _TEST.match(line):
            steps[-1]["acc"] = 100.0 * float(m[2])
    return {
        "A": [s["acc"] for s in steps],
        "best_val_epoch": [s["best_epoch"] for s in steps],
        "trajectory": [s["epochs"] for s in steps],
        "exemplars": exemplars,
    }


def run(
    reference: Path,
    fixture_folder: Path,
    method: str,
    modality: str,
    seed: int,
    settings: dict,
    dataset: str = "ave",
    device: str = "cpu",
    threads: int = 1,
    python: str = sys.executable,
    keep_log: Path | None = None,
) -> dict:
    """One reference run: copy, patch, run, parse. Returns {"A", "best_val_epoch", "trajectory", "seconds",
    "patches", "command"}; raises RuntimeError with the log's tail when the script fails."""
    m = METHODS[method]
    folder = DATASET_FLAGS[dataset][0]
    data_folder = {"AVE": "AVE", "ksounds": "kinetics-sounds", "VGGSound_100": "VGGSound_100"}[folder]
    with tempfile.TemporaryDirectory(prefix=f"avcil-ref-{method}-") as tmp:
        root = Path(tmp)
        for sub in ("model", m.folder):
            shutil.copytree(reference / sub, root / sub, ignore=shutil.ignore_patterns("save", "*.log", "__pycache__"))
        applied = patch_tree(root, {m.folder})
        (root / "data").mkdir()
        (root / "data" / data_folder).symlink_to(Path(fixture_folder).resolve(), target_is_directory=True)
        args = [python, "-u", m.script, *command(method, modality, seed, settings, dataset)]
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "TQDM_DISABLE": "1",
            "MPLBACKEND": "Agg",
        }
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        t0 = time.time()
        proc = subprocess.run(args, cwd=root / m.folder, env=env, capture_output=True, text=True)
        seconds = time.time() - t0
        log = proc.stdout + "\n--- stderr ---\n" + proc.stderr
        if keep_log is not None:
            keep_log.parent.mkdir(parents=True, exist_ok=True)
            keep_log.write_text(log)
        if proc.returncode != 0:
            raise RuntimeError(f"reference {method} {modality} seed {seed} failed:\n{log[-3000:]}")
    parsed = parse_log(proc.stdout)
    return {
        **parsed,
        "seconds": seconds,
        "patches": applied,
        "command": " ".join(args[2:]),
        "code_sha": code_sha(reference, method),
    }
