"""Function-level differential against the CIL-ML-Audio reference (mulimani/CIL-ML-Audio, Mulimani & Mesaros).

    python -m benchmarks.tools.differential.cil_ml_audio --reference PATH/CIL-ML-Audio --out DIR [--python INTERP]

The reference's own code runs in a subprocess (`functional.run_reference`) on tensors and weights this module
prepares; the harness's functions run here on the same ones. Compared (one `functional.Check` each):

- **CNN14 forward**, BN / GN / CN (`models/cnn14_pann_lin{,_GN,_CN}.py`): the reference class is built there, its
  state dict is loaded into the harness's `CNN14` *strictly* (key mapping: `harness_key`), and both run the same
  log-mel batch in eval mode and in train mode (same torch seed, so the same dropout masks), comparing logits, the
  block-6 map z, and the running statistics after the train-mode pass; the head's growth (`change_output_dim` vs
  `expand_classifier`) from the same seed.
- **Front-end**: the reference's `MelData.__getitem__` (resample, pad/truncate to 10 s, torchaudio MelSpectrogram,
  log) against `datasets.encoders.logmel` on the same wav files.
- **Loss terms**: the reference's `_train` itself, run for one batch on a stand-in model that returns fixed logits
  and z; its locals (`cls_loss_new`, `feat_loss`, `dist_loss`, `factor`) are read when it returns, and the
  gradients it back-propagates land on the stand-in's tensors. The harness side is `MLIndL.loss_terms` / `loss_fn`
  with the `ml_indl-bn` row's resolved config.
- **Metrics**: the reference's `evaluate_bin` (on a stand-in model returning fixed logits) and `lib/lwlrap.py`
  against `benchmarks.metrics.multilabel`, on targets that include a class with no positive test clip.
- **Phase files**: the reference's `READ_DATA` against `datasets.adapters.audio_multilabel.parse_phase_file` on
  files written by the harness's `format_record`.

Checks marked "deviation" have an infinite tolerance: they show the size of a documented protocol difference
(e.g. mAP from scores vs the reference's thresholded mAP) and never fail the run.
"""

from __future__ import annotations

import math
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.tools.differential import functional
from benchmarks.tools.differential.functional import Check, compare

REFERENCE = "mulimani/CIL-ML-Audio"
REFERENCE_COMMIT = "ed8e0d0"
NORMS = ("bn", "gn", "cn")
#: the reference's model module per normalisation
REFERENCE_MODELS = {"bn": "models.cnn14_pann_lin", "gn": "models.cnn14_pann_lin_GN", "cn": "models.cnn14_pann_lin_CN"}
#: lines of Cnn14.forward and Cnn14.change_output_dim in each of those files (at ed8e0d0)
FORWARD_LINES = {"bn": "163-191", "gn": "163-191", "cn": "179-207"}
GROW_LINES = {"bn": "103-131", "gn": "103-131", "cn": "119-147"}
#: scripts/run_audioset.sh, without --num-workers (no loader here) and --save (writes under /scratch)
RUN_FLAGS = (
    "--new-classes 5 --start-classes 30 --cosine --kd --w-kd 1 --lr 0.01 --lr-ft 0.001 --batch-size 32 --epochs 1"
)
#: the prefix `data/read_audioset_txt.READ_DATA` finds records by (hard-coded there, l. 17)
REFERENCE_PATH_PREFIX = "/scratch/project_2003370/"
ML_ROW = "ml_indl-bn"
METRIC_CLASSES, EMPTY_CLASS = 35, 33  # metric inputs: 35 seen classes (phase 1), class 33 without positives
LOSS_PHASES = ((0, 0, 30), (1, 30, 35), (4, 45, 50))  # (phase, old classes, seen classes)

_CN_KEY = re.compile(r"^(conv_block\d+\.bn[12])\.(weight|bias|running_mean|running_var|num_batches_tracked)$")


# ----------------------------------------------------------------------------- model keys
def harness_key(reference_key: str, norm: str) -> str:
    """The harness's `CNN14` name of a reference state-dict key. Only CN differs: the reference's `CN` is one
    `_BatchNorm` subclass that calls group_norm itself (`conv_blockK.bnJ.weight`), the harness's `ContinualNorm`
    nests a parameter-free GroupNorm and a BatchNorm2d (`conv_blockK.bnJ.bn.weight`)."""
    if norm == "cn":
        m = _CN_KEY.match(reference_key)
        if m:
            return f"{m.group(1)}.bn.{m.group(2)}"
    return reference_key


def harness_state(reference_state: dict, norm: str) -> dict:
    return {harness_key(k, norm): v for k, v in reference_state.items()}


def renamed_keys(reference_state: dict, norm: str) -> list[tuple[str, str]]:
    return [(k, harness_key(k, norm)) for k in reference_state if harness_key(k, norm) != k]


# ----------------------------------------------------------------------------- inputs
def make_inputs(seed: int = 0, batch: int = 4, frames: int = 201, n_mels: int = 64) -> dict:
    """Every tensor both sides see: a log-mel batch, loss-test logits / features / targets per phase, metric
    scores / targets with a class without positives (column 33), and a phase-file label matrix."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, frames, n_mels, generator=g) * 2.0 - 6.0  # log-mel-like values
    losses = {}
    for phase, lo, seen in LOSS_PHASES:
        y = torch.zeros(batch * 2, seen)
        y[:, lo:seen] = (torch.rand(batch * 2, seen - lo, generator=g) < 0.3).float()
        y[0, lo] = 1.0  # at least one positive: a defined pos_weight
        losses[f"p{phase}"] = {
            "logits": torch.randn(batch * 2, seen, generator=g) * 3.0,
            "z": torch.randn(batch * 2, 16, 3, 1, generator=g),
            "teacher_logits": torch.randn(batch * 2, max(lo, 1), generator=g) * 3.0,
            "teacher_z": torch.randn(batch * 2, 16, 3, 1, generator=g) + 0.3,
            "y": y,
        }
    n, c = 40, METRIC_CLASSES
    y = (torch.rand(n, c, generator=g) < 0.25).float()
    y[:, EMPTY_CLASS] = 0.0  # a class with no positive test clip
    y[0, :3] = 1.0  # clip 0 has labels (the reference zeroes them before its lwlrap and base metrics)
    logits = torch.randn(n, c, generator=g) * 2.0 + (y * 2.5 - 1.0)
    return {
        "seed": torch.tensor(seed),
        "x": x,
        "losses": losses,
        "metrics": {"logits": logits, "y": y},
        "phase_labels": (torch.rand(7, 30, generator=g) < 0.2).float(),
    }


def write_waves(folder: Path, seed: int = 0) -> list[Path]:
    """Two PCM-16 wavs: 3 s at 16 kHz (resampled, then zero-padded to 10 s) and 10.5 s at 32 kHz (truncated)."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    out = []
    for name, rate, seconds in (("short16k.wav", 16000, 3.0), ("long32k.wav", 32000, 10.5)):
        t = np.arange(int(rate * seconds)) / rate
        wave = 0.3 * np.sin(2 * np.pi * 440 * t * (1 + 0.5 * t / seconds)) + 0.05 * rng.standard_normal(len(t))
        path = folder / name
        sf.write(str(path), wave.astype(np.float32), rate, subtype="PCM_16")
        out.append(path)
    return out


def write_phase_file(path: Path, labels: torch.Tensor) -> list[str]:
    """A phase file in the reference's format (the harness's `format_record`) under the reference's prefix."""
    from datasets.adapters.audio_multilabel import format_record

    paths = [f"{REFERENCE_PATH_PREFIX}synth/train/Yclip_{i:02d}_30000.wav" for i in range(len(labels))]
    path.write_text("\n".join(format_record(p, row.numpy()) for p, row in zip(paths, labels)) + "\n")
    return paths


# ----------------------------------------------------------------------------- the reference side
DRIVER = r"""
import argparse, importlib, sys
import numpy as np, torch, torch.nn as nn

inputs = torch.load(sys.argv[1], weights_only=True)
OUTPUT = sys.argv[2]                                     # sys.argv is rebound below for parse_option()
out = {}
seed = int(inputs["seed"])
torch.Tensor.cuda = lambda self, *a, **k: self          # CPU: the reference calls .cuda() unconditionally
nn.Module.cuda = lambda self, *a, **k: self

# (a) CNN14 forward per normalisation
for norm, module in MODELS.items():
    Cnn14 = importlib.import_module(module).Cnn14
    torch.manual_seed(seed)
    net = Cnn14(classes_num=30)
    r = {"state": {k: v.clone() for k, v in net.state_dict().items()}}
    x = inputs["x"].unsqueeze(1)                         # MelData items are (1, frames, mels)
    net.eval()
    with torch.no_grad():
        r["eval_logits"], r["eval_z"] = net(x)
    net.train()
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        r["train_logits"], r["train_z"] = net(x)
    r["state_after_train"] = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(seed + 2)
    net.change_output_dim(new_dim=35)
    torch.manual_seed(seed + 3)
    net.change_output_dim(new_dim=40, second_iter=True)
    r["fc_weight"], r["fc_bias"] = net.fc.weight.detach().clone(), net.fc.bias.detach().clone()
    out[norm] = r

# (b) front-end: MelData.__getitem__ on the same wav files
import soundfile as sf, torchaudio
def _load(path):                                         # torchaudio >= 2.9 needs torchcodec; same samples
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    return torch.from_numpy(data.T.copy()), rate
torchaudio.load = _load
from data.dataset_txt import MelData
waves = WAVES
mel = MelData(waves, [0] * len(waves))
out["logmel"] = {str(i): mel[i][0] for i in range(len(waves))}

# (c) loss terms: _train itself, one batch, on a stand-in model with fixed outputs
sys.argv = ["main_audioset.py"] + RUN_FLAGS.split()
import main_audioset as M
M.args = M.parse_option()

class Fixed(nn.Module):
    def __init__(self, logits, z):
        super().__init__()
        self.logits, self.z = nn.Parameter(logits.clone()), nn.Parameter(z.clone())
        self.fc = nn.Linear(1, logits.shape[1])          # _train reads fc.out_features
    def freeze_weight(self):
        for p in self.parameters():
            p.requires_grad = False
    def forward(self, x):
        return self.logits * 1.0, self.z * 1.0

captured = {}
def _profile(frame, event, arg):
    if event == "return" and frame.f_code is M._train.__code__:
        captured.update({k: v for k, v in frame.f_locals.items() if isinstance(v, (torch.Tensor, float, int))})
for phase, case in inputs["losses"].items():
    seen, lo = case["y"].shape[1], case["teacher_logits"].shape[1]
    new = seen if phase == "p0" else 5
    M.CLASS_NUM_IN_BATCH, M.test_classes = new, list(range(seen))
    student, teacher = Fixed(case["logits"], case["z"]), Fixed(case["teacher_logits"], case["teacher_z"])
    y = case["y"][:, seen - new:]
    loader = [(torch.zeros(len(y), 1), y)]
    M.trainLoader = loader
    pos_weight = (torch.tensor(y.numpy()) == 0.).sum() / torch.tensor(y.numpy()).sum()   # main_audioset.py:351
    captured.clear()
    sys.setprofile(_profile)
    try:
        M._train(model=student, old_model=teacher, epoch=1, lr=M.args.lr, train_loader=loader, checkPoint=1,
                 posi_weight=pos_weight)
    finally:
        sys.setprofile(None)
    r = {k: captured[k].detach().clone() for k in ("cls_loss_new", "loss")}
    r["factor"] = torch.tensor(float(captured["factor"]), dtype=torch.float64)   # a Python float there
    if "feat_loss" in captured:
        r["feat_loss"] = captured["feat_loss"].detach().clone()
        r["dist_loss"] = captured["dist_loss"].detach().clone()
    r["pos_weight"] = pos_weight.clone()
    grads = [torch.zeros_like(t) if t.grad is None else t.grad.clone() for t in (student.logits, student.z)]
    r["grad_logits"], r["grad_z"] = grads
    out["loss_" + phase] = r

# (d) metrics: evaluate_bin on a stand-in model, lib/lwlrap.py on scores
from lib.lwlrap import calculate_per_class_lwlrap, calculate_overall_lwlrap_sklearn
class Scores(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.l = logits
    def forward(self, x):
        return self.l[x.long().flatten()], None
names = ("f1_micro", "f1_macro", "mAp", "lwlrap", "f1_micro_ini", "f1_macro_ini", "mAp_ini", "lwlrap_ini")
r = {}
for case, cols in (("all", EMPTY_CLASS_KEPT), ("with_positives", EMPTY_CLASS_DROPPED)):
    logits, y = inputs["metrics"]["logits"][:, cols], inputs["metrics"]["y"][:, cols]
    idx = torch.arange(len(y)).float()
    loader = [(idx[i:i + 16], y[i:i + 16].numpy().copy()) for i in range(0, len(y), 16)]
    vals = M.evaluate_bin(Scores(logits), loader)
    r.update({f"{case}/{k}": torch.tensor(float(v), dtype=torch.float64) for k, v in zip(names, vals)})
logits, y = inputs["metrics"]["logits"], inputs["metrics"]["y"]
s = torch.sigmoid(logits).double().numpy()
pc, w = calculate_per_class_lwlrap(y.numpy(), s)
r["lwlrap_scores"] = torch.tensor(float(np.sum(pc * w)), dtype=torch.float64)
r["lwlrap_scores_sklearn"] = torch.tensor(float(calculate_overall_lwlrap_sklearn(y.numpy(), s)), dtype=torch.float64)
out["metrics"] = r

# (e) phase-file parsing
from data.read_audioset_txt import READ_DATA
d = READ_DATA(PHASE_FILE)
out["phase_file"] = {"targets": torch.tensor(np.asarray(d.targets, dtype=np.float64)), "n": torch.tensor(len(d.data)),
                     "paths_ok": torch.tensor(float(d.data == PHASE_PATHS[:len(d.data)]))}
torch.save(out, OUTPUT)
"""


def driver_source(waves: list[Path], phase_file: Path, phase_paths: list[str]) -> str:
    head = (
        f"MODELS = {REFERENCE_MODELS!r}\nRUN_FLAGS = {RUN_FLAGS!r}\nWAVES = {[str(w) for w in waves]!r}\n"
        f"PHASE_FILE = {str(phase_file)!r}\nPHASE_PATHS = {phase_paths!r}\n"
        f"EMPTY_CLASS_KEPT = {list(range(METRIC_CLASSES))!r}\n"
        f"EMPTY_CLASS_DROPPED = {[c for c in range(METRIC_CLASSES) if c != EMPTY_CLASS]!r}\n"
    )
    return head + DRIVER


# ----------------------------------------------------------------------------- the harness side
def harness_model(norm: str, reference_state: dict):
    from methods._cnn14.model import CNN14

    model = CNN14(30, norm=norm)
    model.load_state_dict(harness_state(reference_state, norm), strict=True)
    return model


def indl_strategy(phase: int, seen: int, lo: int, pos_weight: float, teacher: dict):
    """An `MLIndL` with only what its loss reads, its config the `ml_indl-bn` row's (protocol + config.yaml)."""
    from types import SimpleNamespace

    from benchmarks.core.protocols import Protocol
    from methods import registry
    from methods.ml_indl.strategy import MLIndL

    s = object.__new__(MLIndL)
    s.cfg = registry()[ML_ROW].config("audioset50", "audio")
    sizes = (30,) + (5,) * ((seen - 30) // 5)
    s.stream = SimpleNamespace(protocol=Protocol("p", tuple(range(seen)), sizes))
    s.step_index, s.pos_weight, s._teacher = phase, pos_weight, teacher
    assert s.step_bounds == (lo, seen)
    return s


def model_checks(ref: dict, x: torch.Tensor, seed: int) -> list[Check]:
    checks = []
    for norm in NORMS:
        r = ref[norm]
        model = harness_model(norm, r["state"])
        renamed = renamed_keys(r["state"], norm)
        keys = (
            f"state dict loaded strictly after renaming {len(renamed)} keys ({renamed[0][0]} -> {renamed[0][1]}, ...)"
            if renamed
            else f"state dict loaded strictly, same {len(r['state'])} keys"
        )
        file = f"models/{REFERENCE_MODELS[norm].split('.')[1]}.py"
        where = f"{file}:{FORWARD_LINES[norm]} / methods._cnn14.model.CNN14.forward"
        model.eval()
        with torch.no_grad():
            out = model(x)
        checks += [
            compare(f"CNN14-{norm} eval: logits", out["logits"], r["eval_logits"], 1e-4, where, keys),
            compare(f"CNN14-{norm} eval: block-6 map z", out["z"], r["eval_z"], 1e-4, where),
        ]
        model.train()
        torch.manual_seed(seed + 1)
        with torch.no_grad():
            out = model(x)
        after = model.state_dict()
        ref_after = harness_state(r["state_after_train"], norm)
        stats = [k for k in ref_after if k.endswith(("running_mean", "running_var"))]
        diff = max((after[k].double() - ref_after[k].double()).abs().max().item() for k in stats)
        counters = [k for k in ref_after if k.endswith("num_batches_tracked")]
        counter_diff = max((after[k].double() - ref_after[k].double()).abs().max().item() for k in counters)
        checks += [
            compare(
                f"CNN14-{norm} train (dropout 0.2, same seed): logits",
                out["logits"],
                r["train_logits"],
                1e-4,
                where,
                "batch statistics; identical dropout masks from the same seed",
            ),
            compare(f"CNN14-{norm} train: block-6 map z", out["z"], r["train_z"], 1e-4, where),
            Check(
                f"CNN14-{norm} running statistics after the train pass ({len(stats)} buffers)",
                diff,
                1e-4,
                where,
            ),
            Check(
                f"CNN14-{norm} num_batches_tracked after the train pass ({len(counters)} counters)",
                counter_diff,
                0.0 if norm != "cn" else math.inf,
                where,
                ""
                if norm != "cn"
                else "deviation: the reference's CN calls F.batch_norm itself and never counts "
                "(models/cnn14_pann_lin_CN.py:20-24); unused with momentum 0.1, so no effect on any output",
            ),
        ]
        torch.manual_seed(seed + 2)
        model.expand_classifier(35)
        torch.manual_seed(seed + 3)
        model.expand_classifier(40)
        gwhere = f"{file}:{GROW_LINES[norm]} / methods._cnn14.model.CNN14.expand_classifier"
        checks.append(
            compare(
                f"CNN14-{norm} head grown 30 -> 35 -> 40 (same seed): weight and bias",
                torch.cat([model.fc.weight, model.fc.bias[:, None]], 1),
                torch.cat([r["fc_weight"], r["fc_bias"][:, None]], 1),
                0.0,
                gwhere,
                "old rows copied, new rows nn.Linear's default init",
            )
        )
    return checks


def frontend_checks(ref: dict, waves: list[Path]) -> list[Check]:
    from datasets.encoders.logmel import LogMel, LogMelConfig, load_wave, logmel_of_waves

    cfg = LogMelConfig()
    front = LogMel(cfg)
    checks = []
    for i, path in enumerate(waves):
        mel = logmel_of_waves(load_wave(path, cfg)[None], front)[0]
        checks.append(
            compare(
                f"log-mel of {path.name} (1001 x 64)",
                mel,
                ref["logmel"][str(i)][0],
                1e-3,
                "data/dataset_txt.py:72-82 (MelData) / datasets.encoders.logmel.load_wave + LogMel",
            )
        )
    return checks


def harness_loss_values(inputs: dict) -> dict:
    """Per phase, what the reference driver reads from `_train` (same keys), computed by `MLIndL`."""
    from benchmarks.suites.multilabel import scalar_pos_weight

    out = {}
    for phase, lo, seen in LOSS_PHASES:
        case = inputs["losses"][f"p{phase}"]
        logits = case["logits"].clone().requires_grad_(True)
        z = case["z"].clone().requires_grad_(True)
        pw = scalar_pos_weight(case["y"][:, lo:seen])
        teacher = {"logits": case["teacher_logits"], "z": case["teacher_z"]}
        s = indl_strategy(phase, seen, lo, pw, teacher)
        terms = s.loss_terms({"logits": logits, "z": z}, case["y"])
        loss = s.loss_fn({"logits": logits, "z": z}, case["y"], None)
        loss.backward()
        r = {"pos_weight": _f64(pw), "cls_loss_new": terms["new"].detach(), "loss": loss.detach()}
        if phase:
            r |= {"dist_loss": terms["od"].detach(), "feat_loss": terms["fd"].detach(), "factor": _f64(s.kd_weight())}
        r["grad_logits"] = logits.grad
        r["grad_z"] = torch.zeros_like(z) if z.grad is None else z.grad
        out[f"loss_p{phase}"] = r
    return out


#: (key, what, tolerance, main_audioset.py lines, harness function) of each loss quantity
LOSS_QUANTITIES = (
    ("pos_weight", "pos_weight (#0 / #1)", 1e-6, "351", "benchmarks.suites.multilabel.scalar_pos_weight"),
    ("cls_loss_new", "BCE on the new classes", 1e-6, "96,142", "MLIndL.loss_terms['new'] (masked_bce)"),
    ("dist_loss", "output KD (T=2, KLDivLoss mean)", 1e-6, "175-176", "MLIndL.loss_terms['od'] (kd_kl)"),
    ("feat_loss", "feature distillation 1 - cos", 1e-6, "161-163", "MLIndL.loss_terms['fd'] (feature_cosine)"),
    ("factor", "adaptive lambda", 1e-9, "151", "MLIndL.kd_weight (adaptive_lambda)"),
    ("loss", "total loss", 1e-5, "144-180", "MLIndL.loss_fn"),
    ("grad_logits", "d loss / d logits", 1e-6, "184", "MLIndL.loss_fn, backward"),
    ("grad_z", "d loss / d z", 1e-6, "184", "MLIndL.loss_fn, backward"),
)


def loss_checks(ref: dict, harness: dict) -> list[Check]:
    checks = []
    for phase, _, _ in LOSS_PHASES:
        r, h = ref[f"loss_p{phase}"], harness[f"loss_p{phase}"]
        for key, what, tol, lines, fn in LOSS_QUANTITIES:
            # distillation terms exist from phase 1 on; the reference computes its (unused) factor at phase 0 too
            if key in h or (key in r and key != "factor"):
                note = "zero at phase 0 (no distillation)" if key == "grad_z" and phase == 0 else ""
                checks.append(
                    compare(
                        f"phase {phase}: {what}",
                        h.get(key, torch.tensor(math.nan)),
                        r.get(key, torch.tensor(math.nan)),
                        tol,
                        f"main_audioset.py:{lines} / {fn}",
                        note,
                    )
                )
    return checks


def _f64(value) -> torch.Tensor:
    """A harness number as a float64 tensor (None, a metric that does not exist, as NaN)."""
    return torch.tensor(math.nan if value is None else float(value), dtype=torch.float64)


def metric_checks(ref: dict, inputs: dict) -> list[Check]:
    from benchmarks.metrics import multilabel as mm

    r = ref["metrics"]
    y_all = inputs["metrics"]["y"].numpy()
    s_all = torch.sigmoid(inputs["metrics"]["logits"]).double().numpy()
    keep = [c for c in range(METRIC_CLASSES) if c != EMPTY_CLASS]
    base = 30
    ev = "main_audioset.py:{} (evaluate_bin) / benchmarks.metrics.multilabel.{}"
    checks = []
    for case, y, s in (("all", y_all, s_all), ("with_positives", y_all[:, keep], s_all[:, keep])):
        label = f"{y.shape[1]} classes" + (f", class {EMPTY_CLASS} without positives" if case == "all" else "")
        aliased = y.copy()
        aliased[0] = 0  # what evaluate_bin's lwlrap and base-class (_ini) metrics see: l. 228-229 alias Y_ref
        checks += [
            compare(
                f"micro-F1 at 0.5 ({label})",
                _f64(mm.micro_f1(y, s)),
                r[f"{case}/f1_micro"],
                1e-12,
                ev.format("224", "micro_f1"),
            ),
            compare(
                f"macro-F1 at 0.5 ({label})",
                _f64(mm.macro_f1(y, s)),
                r[f"{case}/f1_macro"],
                1e-12,
                ev.format("223", "macro_f1"),
                "a 0/0 class counts 0 on both sides" if case == "all" else "",
            ),
            compare(
                f"base micro-F1 on the aliased labels ({label})",
                _f64(mm.micro_f1(aliased[:, :base], s[:, :base])),
                r[f"{case}/f1_micro_ini"],
                1e-12,
                ev.format("228-229, 241", "micro_f1"),
                "clip 0's labels zeroed on the harness side too, as the reference's alias does",
            ),
            compare(
                f"base macro-F1 on the aliased labels ({label})",
                _f64(mm.macro_f1(aliased[:, :base], s[:, :base])),
                r[f"{case}/f1_macro_ini"],
                1e-12,
                ev.format("228-229, 240", "macro_f1"),
            ),
            compare(
                f"base thresholded mAP on the aliased labels ({label})",
                _f64(mm.mean_ap_binarized(aliased[:, :base], s[:, :base])),
                r[f"{case}/mAp_ini"],
                1e-12,
                ev.format("228-229, 236-237", "mean_ap_binarized"),
            ),
        ]
    checks += [
        compare(
            f"thresholded mAP ({len(keep)} classes, all with positives)",
            _f64(mm.mean_ap_binarized(y_all[:, keep], s_all[:, keep])),
            r["with_positives/mAp"],
            1e-12,
            ev.format("219-220", "mean_ap_binarized"),
        ),
        compare(
            "lwlrap from scores (no ties)",
            _f64(mm.lwlrap(y_all, s_all)),
            r["lwlrap_scores"],
            1e-12,
            "lib/lwlrap.py:45-82 (calculate_per_class_lwlrap) / benchmarks.metrics.multilabel.lwlrap",
        ),
        compare(
            "lwlrap from scores, sklearn form",
            _f64(mm.lwlrap(y_all, s_all)),
            r["lwlrap_scores_sklearn"],
            1e-12,
            "lib/lwlrap.py:87-96 / benchmarks.metrics.multilabel.lwlrap",
        ),
    ]
    dev = "deviation (documented): "
    checks += [
        compare(
            f"as reported: thresholded mAP with class {EMPTY_CLASS} without positives",
            _f64(mm.mean_ap_binarized(y_all, s_all)),
            r["all/mAp"],
            math.inf,
            ev.format("219-220", "mean_ap_binarized"),
            "deviation: the harness leaves a class without positives out of the mean; the reference's sklearn AP "
            "of it is 0 with scikit-learn 1.9 (with a warning, no NaN), counted in its mean",
        ),
        compare(
            "as reported: mAP (harness: scores) vs the reference's thresholded mAP",
            _f64(mm.mean_ap(y_all, s_all)),
            r["all/mAp"],
            math.inf,
            ev.format("219-220", "mean_ap"),
            dev + "the harness's mAP is from scores; its mAP_binarized is the reference's number",
        ),
        compare(
            "as reported: lwlrap (harness: scores) vs the reference's (thresholded, clip 0 zeroed)",
            _f64(mm.lwlrap(y_all, s_all)),
            r["all/lwlrap"],
            math.inf,
            ev.format("228-231", "lwlrap"),
            dev + "the reference ranks 0/1 predictions, ties broken by argsort order",
        ),
        compare(
            "as reported: base macro-F1 (harness: true labels) vs the reference's (clip 0 zeroed)",
            _f64(mm.macro_f1(y_all[:, :base], s_all[:, :base])),
            r["all/f1_macro_ini"],
            math.inf,
            ev.format("228-229, 240", "macro_f1"),
            "deviation: the alias at l. 228-229 also changes the reference's _ini metrics (its forgetting); "
            "methods/ml_indl/README.md names only its lwlrap",
        ),
    ]
    return checks


def phase_file_checks(ref: dict, phase_file: Path, labels: torch.Tensor) -> list[Check]:
    from datasets.adapters.audio_multilabel import parse_phase_file

    records, _ = parse_phase_file(phase_file, width=labels.shape[1])
    r = ref["phase_file"]
    n = int(r["n"])
    harness = torch.tensor(np.stack([rec.labels for rec in records[:n]]).astype(np.float64))
    where = "data/read_audioset_txt.py:10-45 (READ_DATA) / datasets.adapters.audio_multilabel.parse_phase_file"
    return [
        compare(
            "phase file: label vectors of the records both read",
            harness,
            r["targets"],
            0.0,
            where,
            f"{len(records)} records written; the reference reads {n} (it drops the last record of a file)",
        ),
        Check("phase file: audio paths of those records", 1.0 - float(r["paths_ok"]), 0.0, where),
        Check(
            "phase file: records read (harness - reference)",
            float(len(records) - n),
            math.inf,
            where,
            "deviation (documented): the harness keeps the last record",
        ),
    ]


# ----------------------------------------------------------------------------- run
def run(reference: Path, python: str = sys.executable, seed: int = 0, frames: int = 201) -> tuple[list[Check], float]:
    missing = [
        p
        for p in ("main_audioset.py", "models/cnn14_pann_lin_CN.py", "lib/lwlrap.py")
        if not (Path(reference) / p).is_file()
    ]
    if missing:
        raise SystemExit(
            f"{reference}: not a CIL-ML-Audio checkout (missing {', '.join(missing)}); "
            f"git clone https://github.com/{REFERENCE} and pass its folder as --reference"
        )
    inputs = make_inputs(seed, frames=frames)
    with tempfile.TemporaryDirectory(prefix="avcil-cilml-") as tmp:
        tmp = Path(tmp)
        waves = write_waves(tmp, seed)
        phase_file = tmp / "train_phase_0.txt"
        paths = write_phase_file(phase_file, inputs["phase_labels"])
        ref, seconds = functional.run_reference(
            Path(reference), driver_source(waves, phase_file, paths), inputs, python=python
        )
        checks = (
            model_checks(ref, inputs["x"], seed)
            + frontend_checks(ref, waves)
            + loss_checks(ref, harness_loss_values(inputs))
            + metric_checks(ref, inputs)
            + phase_file_checks(ref, phase_file, inputs["phase_labels"])
        )
    return checks, seconds


def report(checks: list[Check], reference: Path, seconds: float, frames: int) -> str:
    header = [
        f"Reference: `{REFERENCE}` checkout `{reference}` (kept results: commit `{REFERENCE_COMMIT}`); its code ran "
        f"in a subprocess ({seconds:.0f} s) on the tensors this tool prepared.",
        f"CNN14 at the reference widths (64-2048) on a batch of 4 x {frames} x 64 log-mels; losses with the "
        f"`{ML_ROW}` row's resolved config and the flags of `scripts/run_audioset.sh`.",
        "Checks with tolerance inf are documented protocol deviations: their size is shown, they never fail.",
    ]
    return functional.markdown("CIL-ML-Audio function-level differential", checks, header)


def build_parser():
    p = functional.parser("cil_ml_audio", REFERENCE)
    p.add_argument("--frames", type=int, default=201, help="log-mel frames of the CNN14 batch (1001 = 10 s)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    checks, seconds = run(a.reference, a.python, a.seed, a.frames)
    payload = {"reference": REFERENCE, "reference_path": str(a.reference), "seed": a.seed, "frames": a.frames}
    payload["seconds"] = seconds
    text = report(checks, a.reference, seconds, a.frames)
    return functional.write_report(a.out, "cil_ml_audio", text, payload, checks)


if __name__ == "__main__":
    sys.exit(main())
