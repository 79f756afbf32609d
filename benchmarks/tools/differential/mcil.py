"""Function-level differential against the MCIL-AudioCLIP release (chenyukun924/MCIL-AudioCLIP, Chen et al.).

    python -m benchmarks.tools.differential.mcil --reference PATH/MCIL-AudioCLIP --out DIR [--python INTERP]

The release's own code runs in a subprocess (`functional.run_reference`) on weights and tensors this module
prepares; the harness's functions run here on the same ones, with the `mcil_audioclip-code` row's resolved config
(the mode that reproduces the release). Compared (one `functional.Check` each):

- **MoE block** (`clip/model.py` `ResidualAttentionBlock`, built there at width 64 with the release's 5 experts,
  top-1): an image block and a causal text block of the harness (`towers.inject_moe` on the `tiny-vit` CLIP, code-mode
  `MoEAdapter`) get random weights; their state dict is mapped to the release's layout (`reference_block_state`) and
  loaded *strictly* into the release's block, and both run the same tokens in eval mode: outputs and expert choices.
- **Training loss of one iteration**: the release's `ClassIncremental.train` itself runs for one task of one batch
  (plus its extra iteration) on a stand-in model whose encoders return fixed features (image, audio embedding, the
  35 CLASSROOM template x class text features); `fc` (the frozen 1024->512 audio projection, here A->D) and the
  release's `FusionNet` are real modules. The locals of `train` and `MyLoss.forward` are read when they return
  (audio features, fused features, training prototypes, logits, task-local targets, L_cwcl, MI terms, total) and the
  gradient lands on the fixed image and text features. The harness side is `MCILAudioCLIP.audio_features`,
  `AdaptiveFusion`, `MCILAudioCLIP.text_prototypes` / `logits` and `losses.mcil_loss` on the same tensors.
- **Fusion gate**: `FusionNet.calculate_correlation` against `fusion.pearson_r` (batch mean), at moderate and high
  correlation, and which path each takes. The release's fusion branch raises (shape-broken; harness README,
  deviation 7): shown as a deviation.
- **Evaluation and metrics**: `main.py`'s evaluation loop and metric lines (46-127) are executed from the checkout's
  own file (parsed with `ast`, compiled with its file name and line numbers) with the release's
  `ClassIncremental.adaptation` / `forward`, `AudioCLIP.forward` and continuum 1.2.7's `Logger` on stand-ins whose
  encoders return fixed per-step features, over 3 tasks x 2 classes x 25 test clips (eval batch 64, so the last
  batch is partial). Against the harness's scoring (`text_prototypes(..., "eval")`, fusion per 64-row chunk, argmax),
  `accuracy_matrix_from_predictions`, `MCILStrategy.last_eval_batch` and `benchmarks.metrics.mcil`: predictions,
  A_t, R rows, continuum forgetting / BWT / FWT, task similarity, the last-batch image prototype and NMIs, M1, M2.
  The harness's e_t is taken after training task t, the release's before it (harness README, "Other decisions"):
  the metric checks feed the release's timing; the harness's own timing and its whole-set default are deviations.
- **Cosine schedule**: `continual_clip/utils.py` `cosine_lr` (warm-up 30, `models.py:301-303`) over the release's
  `range(total_iterations + 1)` against `MCILStrategy.make_optimizer`'s LambdaLR, for 12, 30, 31 and 100 batches.

Checks with tolerance inf are documented deviations: their size is shown, they never fail the run.

What the release needs on the reference side (its `requirements.txt` pins): omegaconf, continuum 1.2.7 (which imports
scikit-image and imagehash at top level), termcolor and pytorch-ignite (imported by `esresnet` through
`ignite_trainer`). Two packages are imported at top level and never used by the compared code; the driver inserts
stand-in modules for them and says so: `datasets` (Hugging Face; `continuum.scenarios.hf`) and `visdom`
(`ignite_trainer._visdom`).
"""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.tools.differential import functional
from benchmarks.tools.differential.functional import Check, compare

REFERENCE = "chenyukun924/MCIL-AudioCLIP"
REFERENCE_COMMIT = "dd7723f"
CODE_ROW, CONFIG_DATASET = "mcil_audioclip-code", "imagenet_esc19"
#: top-level imports of the release's dependency chain that the compared code never uses
STUB_PACKAGES = ("datasets", "visdom")
N_TEMPLATES = 35  # continual_clip/text_templates.py CLASSROOM_TEMPLATES
# sizes: features D, audio embedding A (the release's fc is 1024 -> 512), training batch, classes per task
DIM, AUDIO_DIM, BATCH, CLASSES_PER_TASK = 16, 24, 8, 3
EVAL_TASKS, EVAL_CLASSES_PER_TASK, TEST_PER_CLASS = 3, 2, 25
SCHEDULE_BATCHES = (12, 30, 31, 100)
REF_MODEL, REF_MAIN, REF_UTILS = "continual_clip/models.py", "main.py", "continual_clip/utils.py"


# ----------------------------------------------------------------------------- harness config and pieces
def code_config() -> dict:
    from methods import registry

    return registry()[CODE_ROW].config(CONFIG_DATASET, "audio-visual")


def harness_model(cfg: dict, fc_weight, fc_bias, text_of_class):
    """An `MCILAudioCLIP` without towers: the harness's own methods (`audio_features`, `text_prototypes`, `logits`,
    the `fusion` module) run on fixed tower outputs. `text_of_class(classes, pool)` -> (C, M, D) raw embeddings."""
    from methods.mcil_audioclip.fusion import AdaptiveFusion
    from methods.mcil_audioclip.model import MCILAudioCLIP

    m = MCILAudioCLIP.__new__(MCILAudioCLIP)
    nn.Module.__init__(m)
    m.cfg = cfg
    m.audio_proj = nn.Linear(fc_weight.shape[1], fc_weight.shape[0])
    m.audio_proj.load_state_dict({"weight": fc_weight, "bias": fc_bias}, strict=True)
    m.fusion = AdaptiveFusion(fc_weight.shape[0], float(cfg["fusion_tau"]), cfg["fusion_gate"])
    m.text_embeddings = lambda classes, pool, with_grad=False: text_of_class(classes, pool)
    return m


# ----------------------------------------------------------------------------- MoE block keys
def harness_moe_blocks(cfg: dict, seed: int) -> dict:
    """The harness's image and text blocks (`tiny-vit` CLIP, code-mode MoE injected as the model does), with
    random weights (non-zero experts and routers, so every expert and routing choice matters)."""
    from methods.mcil_audioclip.moe import MoEAdapter
    from methods.mcil_audioclip.towers import PRESETS, build_clip, inject_moe

    torch.manual_seed(seed)
    clip = build_clip(PRESETS["tiny-vit"])
    factory = lambda d: MoEAdapter(  # noqa: E731 (the factory MCILAudioCLIP builds, code-mode values)
        d,
        int(cfg["experts"]),
        int(cfg["top_k"]),
        1,
        int(cfg["adapter_dim"]),
        float(cfg["adapter_scale"]),
        float(cfg["adapter_dropout"]),
        float(cfg["router_init_std"]),
    )
    inject_moe(clip, factory)
    blocks = {"image": clip.visual.transformer.resblocks[0], "text": clip.transformer.resblocks[0]}
    g = torch.Generator().manual_seed(seed)
    for block in blocks.values():
        with torch.no_grad():
            for name, p in block.named_parameters():
                base = 1.0 if name.startswith(("ln_1.weight", "ln_2.weight")) else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
        block.eval()
    return {"blocks": blocks, "mask": clip.attn_mask}


def reference_block_state(harness_state: dict) -> dict:
    """The release's `ResidualAttentionBlock` state dict holding the harness block's weights.

    Same names: attn.*, ln_1.*, ln_2.*, mlp.c_fc.*, mlp.c_proj.*. MoE: the harness stacks the experts,
    moe.down_weight (E, D, r) / moe.up_weight (E, r, D), where the release has one `Adapter` per expert,
    adaptmlp_list.e.down_proj.weight (r, D) / up_proj.weight (D, r) (transposed); moe.routers[0] is router_list.0.
    The release also registers `adaptmlp.*` (its loop variable: an alias of the last expert), `w_noise_list.0`
    (noisy gating, off: `noisy_gating = False`) and the buffers mean / std (the noise's Normal): set to the alias,
    zeros and (0, 1), since nothing reads them with noisy gating off."""
    out, moe = {}, {}
    for k, v in harness_state.items():
        if k.startswith("moe."):
            moe[k[4:]] = v
        elif not k.startswith(("ls_1", "ls_2")):
            out[k] = v
    n_experts = moe["down_weight"].shape[0]
    for e in range(n_experts):
        p = f"adaptmlp_list.{e}."
        out[p + "down_proj.weight"] = moe["down_weight"][e].t().contiguous()
        out[p + "down_proj.bias"] = moe["down_bias"][e].clone()
        out[p + "up_proj.weight"] = moe["up_weight"][e].t().contiguous()
        out[p + "up_proj.bias"] = moe["up_bias"][e].clone()
    last = f"adaptmlp_list.{n_experts - 1}."
    for part in ("down_proj.weight", "down_proj.bias", "up_proj.weight", "up_proj.bias"):
        out["adaptmlp." + part] = out[last + part]
    if moe["routers"].shape[0] != 1:
        raise ValueError("the release has one router (step = 1); the harness block has several")
    out["router_list.0"] = moe["routers"][0].clone()
    out["w_noise_list.0"] = torch.zeros_like(out["router_list.0"])
    out["mean"], out["std"] = torch.tensor([0.0]), torch.tensor([1.0])
    return out


# ----------------------------------------------------------------------------- inputs
def eval_fixture(seed: int) -> dict:
    """Fixed tower outputs of 3 tasks x 2 classes x 25 test clips: per step t the image features of every test clip
    (the model after task t: old classes drift), the text features of every class (single template) of the model
    after step t (`text[t + 1]`; `text[0]` is the initial model, which the release's `adaptation` of task 0 reads),
    and the audio embeddings (frozen tower). Class signal plus noise, so accuracy is neither 0 nor 100 %."""
    g = torch.Generator().manual_seed(seed + 7)
    n_classes = EVAL_TASKS * EVAL_CLASSES_PER_TASK
    centres = torch.randn(n_classes, DIM, generator=g)
    labels = torch.arange(n_classes).repeat_interleave(TEST_PER_CLASS)  # store (folder) order: class by class
    images = []
    for t in range(EVAL_TASKS):
        noise = 1.0 + 0.6 * t * (labels < t * EVAL_CLASSES_PER_TASK)[:, None]  # older classes get noisier
        images.append(centres[labels] + noise * 1.3 * torch.randn(len(labels), DIM, generator=g))
    text = torch.stack([centres + 0.5 * torch.randn(n_classes, DIM, generator=g) for _ in range(EVAL_TASKS + 1)])
    return {
        "labels": labels,
        "task_of_row": labels // EVAL_CLASSES_PER_TASK,
        "images": torch.stack(images),  # (T, N, D)
        "audio": torch.randn(len(labels), AUDIO_DIM, generator=g),
        "text": text,  # (T + 1, C, D)
    }


def prepare_inputs(cfg: dict, seed: int) -> tuple[dict, dict]:
    """(inputs for the driver, harness-side objects)."""
    g = torch.Generator().manual_seed(seed)
    moe = harness_moe_blocks(cfg, seed)
    tokens = 5
    blocks = {}
    for kind, block in moe["blocks"].items():
        x = torch.randn(BATCH, tokens, block.ln_1.normalized_shape[0], generator=g)
        blocks[kind] = {
            "state": reference_block_state(block.state_dict()),
            "x": x,
            "mask": moe["mask"][:tokens, :tokens].clone() if kind == "text" else None,
        }
    task, lo = 1, CLASSES_PER_TASK
    train = {
        "task": task,
        "image": torch.randn(BATCH, DIM, generator=g) * 3,
        "audio": torch.randn(BATCH, AUDIO_DIM, generator=g),
        "text": torch.randn(N_TEMPLATES * CLASSES_PER_TASK, DIM, generator=g),  # rows template-major (models.py:310)
        "targets": lo + torch.arange(BATCH) % CLASSES_PER_TASK,
        "fc_weight": torch.randn(DIM, AUDIO_DIM, generator=g) / AUDIO_DIM**0.5,
        "fc_bias": 0.1 * torch.randn(DIM, generator=g),
    }
    v = F.normalize(torch.randn(BATCH, DIM, generator=g), dim=1)
    # a moderate correlation (r ~ 0.5: masked at tau 0.8, fused at any tau below 0.5) and a high one (r ~ 0.98)
    gate = {"v": v, "a_mid": F.normalize(v + 0.4 * torch.randn(BATCH, DIM, generator=g), dim=1)}
    gate["a_high"] = F.normalize(v + 0.05 * torch.randn(BATCH, DIM, generator=g), dim=1)
    inputs = {
        "stubs": list(STUB_PACKAGES),
        "blocks": blocks,
        "train": train,
        "gate": gate,
        "eval": eval_fixture(seed),
        "eval_batch": int(cfg["eval_batch_size"]),
        "classes_per_task": CLASSES_PER_TASK,
        "eval_classes_per_task": EVAL_CLASSES_PER_TASK,
        "schedule_batches": list(SCHEDULE_BATCHES),
        "warmup": 30,  # the release's literal (models.py:302)
    }
    return inputs, moe


# ----------------------------------------------------------------------------- the reference side
DRIVER = r"""
import ast, importlib.abc, importlib.machinery, io, json, logging, os, statistics, sys, tempfile, types
import numpy as np, torch, torch.nn as nn, yaml

inputs = torch.load(sys.argv[1], weights_only=True)
out = {}

# Stand-ins for packages imported at top level by the release's dependency chain and never used here.
class _Stub(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {})
class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in inputs["stubs"]:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
    def create_module(self, spec):
        m = _Stub(spec.name)
        m.__path__ = []
        return m
    def exec_module(self, module):
        pass
sys.meta_path.insert(0, _StubFinder())
print("stand-in modules (imported at top level, unused by the compared code):", ", ".join(inputs["stubs"]))

_quiet = io.StringIO()
_stdout, sys.stdout = sys.stdout, _quiet                 # the release's blocks print "image/text transformer"
import clip.model as CM
import continual_clip.models as M
import continual_clip.utils as U
from continuum.metrics import Logger
sys.stdout = _stdout

# (a) MoE blocks, state loaded strictly
out["blocks"] = {}
for kind, b in inputs["blocks"].items():
    sys.stdout = _quiet
    blk = CM.ResidualAttentionBlock(b["x"].shape[-1], 2, b["mask"], "text" if kind == "text" else "image")
    sys.stdout = _stdout
    blk.load_state_dict(b["state"], strict=True)
    blk.eval()
    with torch.no_grad():
        y = blk(b["x"].permute(1, 0, 2))                 # (L, B, D), batch-major memory as VisualTransformer feeds it
    counts = blk.choose_map_text if kind == "text" else blk.choose_map_image
    out["blocks"][kind] = {"y": y.permute(1, 0, 2).contiguous(), "counts": counts.clone()}

# the release's config for ls / lr / weight decay; the protocol sizes are this fixture's
with open(os.path.join("configs", "class", "imagenet19_3-6.yaml")) as f:
    rcfg = yaml.safe_load(f)

def capture(codes):
    seen = {}
    def hook(frame, event, arg):
        if event == "return" and frame.f_code in codes:
            seen.setdefault(frame.f_code.co_name, []).append(dict(frame.f_locals))
    return seen, hook

# (b) one training task: ClassIncremental.train on a stand-in model with fixed encoder outputs
tr = inputs["train"]
C = inputs["classes_per_task"]
sys.stdout = _quiet
tiny = CM.CLIP(embed_dim=8, image_resolution=16, vision_layers=1, vision_width=64, vision_patch_size=8,
               context_length=8, vocab_size=64, transformer_width=64, transformer_heads=2, transformer_layers=1)
sys.stdout = _stdout
image = tr["image"].clone().requires_grad_(True)
text = tr["text"].clone().requires_grad_(True)

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(tr["fc_weight"].shape[1], tr["fc_weight"].shape[0])
        self.fc.load_state_dict({"weight": tr["fc_weight"], "bias": tr["fc_bias"]})
        self.fusion_net = M.FusionNet(input_dim=tr["fc_weight"].shape[0])
        self.logit_scale = tiny.logit_scale                # the CLIP init, as AudioCLIP inherits it
        self.image_encoder = lambda x: x * 1.0
        self.audio_encoder = lambda x: x * 1.0
    def text_encoder(self, tokens):
        assert tokens.shape[0] == text.shape[0], tokens.shape
        return text * 1.0

ci = types.SimpleNamespace(model=Model(), device="cpu", classes_names=[f"class {i}" for i in range(4 * C)],
                           class_ids_per_task=[list(range(C * t, C * (t + 1))) for t in range(4)])
task = int(tr["task"])
class OneBatch:                                          # a loader of one batch, fresh target tensors per pass
    def __init__(self, x):                               # (train() shifts the targets in place)
        self.x = x
    def __len__(self):
        return 1
    def __iter__(self):
        yield self.x, tr["targets"].clone(), torch.full((len(self.x),), task)
data_img = [None] * task + [OneBatch(image)]
data_audio = [None] * task + [OneBatch(tr["audio"])]
M.DataLoader = lambda data, **kw: data[0]
cfg = types.SimpleNamespace(batch_size=len(image), lr=float(rcfg["lr"]), weight_decay=float(rcfg["weight_decay"]),
                            ls=float(rcfg["ls"]), dataset=rcfg["dataset"], initial_increment=C, increment=C)
seen, hook = capture({M.ClassIncremental.train.__code__, M.MyLoss.forward.__code__})
sys.setprofile(hook)
try:
    M.ClassIncremental.train(ci, task, cfg, data_img, data_audio, None)
finally:
    sys.setprofile(None)
loss_locals = seen["forward"]
train_locals = seen["train"][-1]
out["train"] = {
    "iterations": len(loss_locals),
    "audio_features": train_locals["audio_features"].detach(),
    "features": train_locals["features"].detach(),
    "text_embeddings": train_locals["text_embeddings"].detach(),
    "logits_fused": train_locals["logits_fused"].detach(),
    "targets": train_locals["targets"].clone(),
    "loss_cwcl": torch.stack([l["loss_cwcl"].detach() for l in loss_locals]),
    "loss_mi": torch.stack([l["loss_mi"].detach() for l in loss_locals]),
    "total": torch.stack([l["total_loss"].detach() for l in loss_locals]),
    "grad_image": image.grad.clone(),
    "grad_text": text.grad.clone(),
    "ls": cfg.ls,
}

# (c) fusion gate and the fusion branch
fn = M.FusionNet(input_dim=inputs["gate"]["v"].shape[1]).eval()
out["gate"] = {}
for name in ("a_mid", "a_high"):
    v, a = inputs["gate"]["v"], inputs["gate"][name]
    r = fn.calculate_correlation(v, a).detach()
    try:
        with torch.no_grad():
            f = fn(v, a)
        error = ""
    except Exception as e:                               # the release's fusion branch (models.py:72-82)
        f, error = torch.full_like(v, float("nan")), f"{type(e).__name__}: {e}"
    out["gate"][name] = {"r": r, "bypass": torch.tensor(bool(r < fn.threshold)), "f": f, "error": error}

# (d) main.py's evaluation loop and metrics (lines 46-127), run from the file itself on stand-ins
ev = inputs["eval"]
T, CE = ev["images"].shape[0], inputs["eval_classes_per_task"]
state = {"step": 0, "adapting": False}

class AC(nn.Module):                                     # AudioCLIP with fixed encoder outputs
    forward = M.AudioCLIP.forward
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(tr["fc_weight"].shape[1], tr["fc_weight"].shape[0])
        self.fc.load_state_dict({"weight": tr["fc_weight"], "bias": tr["fc_bias"]})
        self.fusion_net = M.FusionNet(input_dim=tr["fc_weight"].shape[0]).eval()
        self.logit_scale = tiny.logit_scale
    def image_encoder(self, rows):
        return ev["images"][state["step"]][rows]
    def audio_encoder(self, rows):
        return ev["audio"][rows]
    def text_encoder(self, tokens):                      # adaptation() reads the model before training the task
        return ev["text"][state["step"] + (0 if state["adapting"] else 1)][: tokens.shape[0]]

class CI(nn.Module):
    forward = M.ClassIncremental.forward
    cosine_similarity = M.ClassIncremental.cosine_similarity
    def __init__(self):
        super().__init__()
        self.model, self.device, self.prompt_template = AC(), "cpu", "a bad photo of a {}."
        self.classes_names = [f"class {i}" for i in range(T * CE)]
        self.class_ids_per_task = [list(range(CE * t, CE * (t + 1))) for t in range(T)]
        self.current_class_names, self.embeddings_dict, self.text_tokens = [], {}, None
        self.record = {"pred": {}, "logits": {}, "proto": {}, "nmi": {}}
    def adaptation(self, task_id, cfg, *args):
        state["step"], state["adapting"] = task_id, True
        M.ClassIncremental.adaptation(self, task_id, cfg, *args)   # cfg.method == "zeroshot": no train()
        state["adapting"] = False
    def __call__(self, image, audio, task_id):
        probs, protos, nmi_i, nmi_a, feats = super().__call__(image, audio, task_id)
        r = self.record
        r["pred"].setdefault(task_id, []).append(probs.argmax(1))
        r["logits"].setdefault(task_id, []).append(probs.log())
        r["proto"][task_id], r["nmi"][task_id] = protos[task_id].clone(), torch.stack([nmi_i, nmi_a])
        return probs, protos, nmi_i, nmi_a, feats

def data_loader(datasets, batch_size):                   # the test rows of the given tasks, in dataset order
    rows = torch.cat([d for d in datasets])
    for i in range(0, len(rows), batch_size):
        r = rows[i : i + batch_size]
        yield r, ev["labels"][r], ev["task_of_row"][r]

per_task = []
class RecordingLogger(Logger):
    def end_task(self):
        per_task.append([float(x) for x in self.accuracy_per_task])
        super().end_task()

eval_rows = [torch.nonzero(ev["task_of_row"] == t).flatten() for t in range(T)]
log = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False).name
model = CI()
ns = {
    "model": model, "eval_dataset_img": eval_rows, "eval_dataset_audio": eval_rows, "train_dataset_img": None,
    "train_dataset_audio": None, "train_classes_names": None, "device": "cpu", "json": json, "logging": logging,
    "statistics": statistics, "Logger": RecordingLogger, "tqdm": lambda x: x,
    "DataLoader": lambda d, batch_size: data_loader(d, batch_size),
    "cfg": types.SimpleNamespace(method="zeroshot", log_path=log),
}
source = open("main.py").read()
fn_def = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "continual_clip")
start = next(i for i, s in enumerate(fn_def.body) if isinstance(s, ast.Assign) and ast.unparse(s) == "acc_list = []")
body = ast.Module(body=fn_def.body[start:], type_ignores=[])
exec(compile(body, os.path.abspath("main.py"), "exec"), ns)
rec = model.record
out["eval"] = {
    "lines": [fn_def.body[start].lineno, fn_def.body[-1].end_lineno],
    "pred": {t: torch.cat(rec["pred"][t]) for t in range(T)},
    "logits": {t: torch.cat(rec["logits"][t]) for t in range(T)},
    "proto": {t: rec["proto"][t] for t in range(T)},
    "nmi": {t: rec["nmi"][t] for t in range(T)},
    "acc": [float(x) for x in ns["acc_list"]],
    "acc_per_task": per_task,
    "forgetting": [float(ns["forgetting_dict"][t]) for t in range(T)],
    "bwt": [float(ns["bwt_dict"][t]) for t in range(T)],
    "fwt": [float(ns["fwt_dict"][t]) for t in range(T)],
    "similarity": [float(ns["similarity_dict"][t]) for t in range(T)],
    "text_mean": {t: model.embeddings_dict[t].detach() for t in range(T)},
    "metric1": float(ns["metric1"]),
    "metric2": float(ns["metric2"]),
    "log": open(log).read(),
}
os.unlink(log)

# (e) cosine schedule over range(total_iterations + 1)
out["lr"], out["lr_errors"] = {}, {}
for n in inputs["schedule_batches"]:
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=float(rcfg["lr"]))
    adjust = U.cosine_lr(opt, float(rcfg["lr"]), inputs["warmup"], n)
    lrs, errors = [], []
    for i in range(n + 1):
        try:
            adjust(i)
            lrs.append(float(opt.param_groups[0]["lr"]))
        except Exception as e:                           # recorded as NaN, with the error, for the report
            lrs.append(float("nan"))
            errors.append(f"iteration {i}: {type(e).__name__}: {e}")
    out["lr"][n] = torch.tensor(lrs, dtype=torch.float64)
    out["lr_errors"][n] = "; ".join(errors)

torch.save(out, sys.argv[2])
"""


# ----------------------------------------------------------------------------- the harness side and the checks
def block_checks(ref: dict, inputs: dict, moe: dict) -> list[Check]:
    checks = []
    for kind, block in moe["blocks"].items():
        x = inputs["blocks"][kind]["x"]
        mask = inputs["blocks"][kind]["mask"]
        routed = []  # the router input the block hands its MoE: the post-attention first token
        hook = block.moe.register_forward_hook(lambda mod, args, out, seen=routed: seen.append(args[1]))
        try:
            with torch.no_grad():
                y = block(x, attn_mask=mask)
                idx, _ = block.moe.gates(routed[0])
        finally:
            hook.remove()
        counts = torch.bincount(idx.flatten(), minlength=block.moe.n_experts).double()
        where = (
            "clip/model.py:276-483 (ResidualAttentionBlock), 16-117 (SparseDispatcher), clip/adapter.py:11-69 / "
            "towers.MoEResidualAttentionBlock + moe.MoEAdapter"
        )
        checks.append(
            compare(
                f"MoE block ({kind}{', causal mask' if mask is not None else ''}): output",
                y,
                ref["blocks"][kind]["y"],
                1e-5,
                where,
                "state dict loaded strictly into both (mcil.reference_block_state); eval mode, width 64, 5 experts, "
                "top-1",
            )
        )
        checks.append(
            compare(
                f"MoE block ({kind}): samples per chosen expert",
                counts,
                ref["blocks"][kind]["counts"],
                0.0,
                "clip/model.py:396-427, 455-463 (noisy_top_k_gating, choose_map) / moe.MoEAdapter.gates",
                f"counts {counts.long().tolist()}",
            )
        )
    return checks


def training_checks(ref: dict, inputs: dict, cfg: dict) -> list[Check]:
    from methods.mcil_audioclip.losses import mcil_loss

    tr, r = inputs["train"], ref["train"]
    c = CLASSES_PER_TASK
    lo = int(tr["task"]) * c
    image = tr["image"].clone().requires_grad_(True)
    text = tr["text"].clone().requires_grad_(True)
    table = lambda classes, pool: text.view(N_TEMPLATES, c, -1).transpose(0, 1)[classes - lo]  # noqa: E731
    m = harness_model(cfg, tr["fc_weight"], tr["fc_bias"], table)
    v = F.normalize(image.float(), dim=1)  # MCILAudioCLIP.image_features: F.normalize(encode_image(...))
    a = m.audio_features(embedding=tr["audio"])
    f, info = m.fusion(v, a)
    protos = m.text_prototypes(torch.arange(lo, lo + c), "train", with_grad=True)
    logits = m.logits(f, protos.float())
    y = tr["targets"] - lo
    loss, parts = mcil_loss(logits, y, f, v, a, cfg)
    iterations = int(r["iterations"])
    (iterations * loss).backward()  # the release back-propagates each of its identical iterations
    m_src = f"{REF_MODEL}:"
    fired = bool(info["fired"].any())
    return [
        compare(
            "training: audio features (frozen fc, L2-normalised)",
            a,
            r["audio_features"],
            1e-6,
            m_src + "339-341 / MCILAudioCLIP.audio_features",
        ),
        compare(
            "training: fused features f",
            f,
            r["features"],
            1e-6,
            m_src + "343-344, 68-73 / fusion.AdaptiveFusion (gate: batch, tau 0.8)",
            f"bypass on both (harness fired: {fired})",
        ),
        compare(
            "training: class prototypes (raw mean of 35 templates)",
            protos,
            r["text_embeddings"],
            1e-6,
            m_src + "335-336 / MCILAudioCLIP.text_prototypes(pool='train')",
        ),
        compare(
            "training: logits (raw, un-exponentiated logit_scale)",
            logits,
            r["logits_fused"],
            1e-5,
            m_src + "346-347 / MCILAudioCLIP.logits",
        ),
        compare("training: task-local targets", y, r["targets"], 0.0, m_src + "360-362 / MCILStrategy.criterion"),
        compare(
            "loss: L_cwcl (released weighting)",
            parts["cls"],
            r["loss_cwcl"][0],
            1e-6,
            m_src + "97-103 (MyLoss) / losses.cwcl_as_released",
            f"ls = {r['ls']}",
        ),
        compare(
            "loss: L_MI = -MI(f, v) - MI(f, a)",
            parts["mi"],
            r["loss_mi"][0],
            1e-5,
            m_src + "89-94, 105-107 / losses.mi_loss",
        ),
        compare(
            "loss: total 0.7 L_cwcl + 0.3 L_MI, every iteration",
            loss.detach().expand(iterations),
            r["total"],
            1e-5,
            m_src + "109, 319-372 / losses.mcil_loss",
            f"{iterations} iterations (1 batch + the extra one), identical batches",
        ),
        compare(
            "loss gradient w.r.t. the image-tower output",
            image.grad,
            r["grad_image"],
            1e-5,
            m_src + "370-372 / autograd through the harness's functions",
            "summed over the iterations",
        ),
        compare(
            "loss gradient w.r.t. the text-tower outputs",
            text.grad,
            r["grad_text"],
            1e-5,
            m_src + "335-336, 370-372 / autograd through text_prototypes",
            "summed over the iterations",
        ),
    ]


def gate_checks(ref: dict, inputs: dict, cfg: dict) -> list[Check]:
    from methods.mcil_audioclip.fusion import AdaptiveFusion

    fusion = AdaptiveFusion(DIM, float(cfg["fusion_tau"]), cfg["fusion_gate"])
    checks = []
    for name, label in (("a_mid", "moderate"), ("a_high", "high")):
        r = ref["gate"][name]
        v, a = inputs["gate"]["v"], inputs["gate"][name]
        corr, mask = fusion.fire_mask(v, a)
        where = f"{REF_MODEL}:62-70 (FusionNet) / fusion.pearson_r, AdaptiveFusion.fire_mask"
        checks.append(compare(f"fusion gate, {label} correlation: mean r", corr.mean(), r["r"], 1e-6, where))
        checks.append(
            compare(
                f"fusion gate, {label} correlation: audio masked (bypass)",
                float(not bool(mask.all())),
                float(bool(r["bypass"])),
                0.0,
                where,
                f"r = {float(r['r']):.3f}, tau = {cfg['fusion_tau']}",
            )
        )
        if not bool(r["bypass"]):
            f, _ = fusion(v, a)
            diff = compare("", f, r["f"], 0.0, "").max_abs_diff
            checks.append(
                Check(
                    "fusion branch (deviation: the release's branch cannot run; 0 = not comparable)",
                    diff if math.isfinite(diff) else 0.0,
                    math.inf,
                    f"{REF_MODEL}:72-82 / fusion.AdaptiveFusion.fuse (harness README deviation 7)",
                    f"release raises {r['error'][:90]!r}" if r["error"] else "release ran",
                )
            )
    return checks


def harness_eval(inputs: dict, cfg: dict, text_index) -> dict:
    """The harness's scoring and metric inputs on the eval fixture; `text_index(t)` picks the text features whose
    mean is e_t (the release's timing: the model before training t; the harness's: after)."""
    from benchmarks.metrics.accuracy import accuracy_matrix_from_predictions
    from benchmarks.metrics.mcil import mcil_metrics, softmax_nmi
    from methods.mcil_audioclip.strategy import MCILStrategy

    ev, tr = inputs["eval"], inputs["train"]
    T, ce, chunk = EVAL_TASKS, EVAL_CLASSES_PER_TASK, int(inputs["eval_batch"])
    perm = torch.randperm(
        len(ev["labels"]), generator=torch.Generator().manual_seed(3)
    )  # stream order is not store order
    out = {"pred": [], "R": [], "A": [], "text_mean": [], "image_last": [], "image_whole": [], "nmi_last": None}
    last_picker = types.SimpleNamespace(eval_mb_size=chunk)
    for t in range(T):
        seen = (t + 1) * ce
        text_t = ev["text"][t + 1]
        m = harness_model(cfg, tr["fc_weight"], tr["fc_bias"], lambda classes, pool, tt=text_t: tt[classes][:, None])
        rows = torch.nonzero(ev["task_of_row"] <= t).flatten()
        protos = m.text_prototypes(torch.arange(seen), "eval", with_grad=False)
        vs, fs, as_, preds = [], [], [], []
        for i in range(0, len(rows), chunk):  # MCILStrategy.predict_rows: one fusion call per eval batch
            r = rows[i : i + chunk]
            v = F.normalize(ev["images"][t][r].float(), dim=1)
            a = m.audio_features(embedding=ev["audio"][r])
            f, _ = m.fusion(v, a)
            preds.append((f.float() @ protos.t()).argmax(1))
            vs.append(v), fs.append(f), as_.append(a)
        v, f, a, pred = torch.cat(vs), torch.cat(fs), torch.cat(as_), torch.cat(preds)
        row, acc, _ = accuracy_matrix_from_predictions(pred, ev["labels"][rows], ev["task_of_row"][rows], t)
        shuffled = rows[perm[perm < len(rows)]]  # the same rows in another order: last_eval_batch must sort them
        last = MCILStrategy.last_eval_batch(last_picker, shuffled)
        pos = torch.searchsorted(rows, shuffled[last])
        out["pred"].append(pred)
        out["R"].append(row)
        out["A"].append(acc)
        tm = text_index(t)
        out["text_mean"].append(ev["text"][tm][:seen].mean(0))
        out["image_last"].append(v[pos].mean(0))
        out["image_whole"].append(v.mean(0))
        out["nmi_last"] = (float(softmax_nmi(v[pos], f[pos])), float(softmax_nmi(a[pos], f[pos])))
        out["nmi_whole"] = (float(softmax_nmi(v, f)), float(softmax_nmi(a, f)))
        out["logits"] = m.logits(f, protos)
    out["metrics"] = mcil_metrics(
        out["R"], out["A"], out["text_mean"], out["image_last"], *out["nmi_last"], reference_rounding=True
    )
    out["metrics_whole"] = mcil_metrics(out["R"], out["A"], out["text_mean"], out["image_whole"], *out["nmi_whole"])
    return out


def eval_checks(ref: dict, inputs: dict, cfg: dict) -> list[Check]:
    r = ref["eval"]
    lines = f"{REF_MAIN}:{r['lines'][0]}-{r['lines'][1]}"
    with torch.no_grad():
        h = harness_eval(inputs, cfg, text_index=lambda t: t)  # the release's e_t: the model before training t
        own = harness_eval(inputs, cfg, text_index=lambda t: t + 1)  # the harness's e_t: after training t
    T = EVAL_TASKS
    mh = h["metrics"]
    checks = [
        compare(
            "eval: predictions, every step",
            torch.cat(h["pred"]),
            torch.cat([r["pred"][t] for t in range(T)]),
            0.0,
            f"{REF_MODEL}:190-247 (AudioCLIP/ClassIncremental.forward), {REF_MAIN}:62-66 / "
            "MCILStrategy.predict_rows scoring (text_prototypes 'eval', fusion, argmax)",
            f"{sum(len(p) for p in h['pred'])} test predictions over {T} steps",
        ),
        compare(
            "eval: log-softmax of the last step's logits",
            torch.log_softmax(h["logits"], dim=1),
            r["logits"][T - 1],
            1e-5,
            f"{REF_MODEL}:209-217, 246 / MCILAudioCLIP.logits with L2-normalised eval prototypes",
            "the release returns softmax(raw scale x f . T); the harness argmaxes the same scores",
        ),
        compare(
            "metrics: A_t (accuracy on the seen classes)",
            h["A"],
            r["acc"],
            1e-9,
            lines + " (acc_list) / accuracy_matrix_from_predictions",
        ),
        compare(
            "metrics: R rows (accuracy per task)",
            torch.tensor([x for row in h["R"] for x in row]),
            torch.tensor([100 * x for row in r["acc_per_task"] for x in row]),
            1e-9,
            "continuum 1.2.7 Logger.accuracy_per_task / accuracy_matrix_from_predictions",
        ),
        compare(
            "metrics: continuum forgetting after each step (%)",
            mh["forgetting"],
            r["forgetting"],
            5e-5,
            lines + " (forgetting_dict, 4 decimals) / mcil.continuum_series",
        ),
        compare(
            "metrics: continuum BWT after each step (%)",
            mh["bwt"],
            [100 * x for x in r["bwt"]],
            5e-3,
            lines + " (bwt_dict: fraction, 4 decimals) / mcil.continuum_series",
        ),
        compare(
            "metrics: continuum FWT after each step (%)",
            mh["fwt"],
            [100 * x for x in r["fwt"]],
            5e-3,
            lines + " (fwt_dict: fraction, 4 decimals) / mcil.continuum_series",
        ),
        compare(
            "metrics: text means e_t (single template)",
            torch.stack(h["text_mean"]),
            torch.stack([r["text_mean"][t] for t in range(T)]),
            1e-6,
            f"{REF_MODEL}:250-262 (adaptation) / MCILStrategy.metric_inputs text_mean",
            "release timing: the model before training t",
        ),
        compare(
            "metrics: last-batch image prototype p_t",
            torch.stack(h["image_last"]),
            torch.stack([r["proto"][t] for t in range(T)]),
            1e-6,
            f"{REF_MODEL}:199-203, {REF_MAIN}:65, 78 / MCILStrategy.last_eval_batch + image_mean_last_batch",
            "eval batch 64: last batches of 50, 36, 22 rows",
        ),
        compare(
            "metrics: task similarity s_t",
            mh["task_similarity"],
            r["similarity"],
            1e-6,  # cosines of float32 vectors (one side returns a Python float of it)
            lines + " (similarity_dict) / mcil.task_similarity",
        ),
        compare(
            "metrics: last-batch NMI(v, f), NMI(a, f)",
            h["nmi_last"],
            r["nmi"][T - 1],
            1e-6,
            f"{REF_MODEL}:114-124, 214-215 / mcil.softmax_nmi",
        ),
        compare(
            "metrics: Metric 1",
            mh["m1"],
            r["metric1"],
            1e-6,
            f"{REF_MAIN}:114-118 / mcil.mcil_metric1",
            "last-batch variant, reference rounding",
        ),
        compare(
            "metrics: Metric 2",
            mh["m2"],
            r["metric2"],
            1e-6,
            f"{REF_MAIN}:115-121 / mcil.mcil_metric2",
            "last-batch variant, reference rounding",
        ),
        Check(
            "Metric 1, the harness's e_t (after training t) (deviation)",
            abs(own["metrics"]["m1"] - r["metric1"]),
            math.inf,
            f"{REF_MODEL}:256-262 / MCILStrategy.metric_inputs (harness README, Other decisions)",
            f"harness {own['metrics']['m1']:.4f} vs release {r['metric1']:.4f}",
        ),
        Check(
            "Metric 1 / Metric 2, the harness's whole-set default (deviation)",
            max(abs(own["metrics_whole"]["m1"] - r["metric1"]), abs(own["metrics_whole"]["m2"] - r["metric2"])),
            math.inf,
            f"{REF_MAIN}:65-121 (last batch) / MCILStrategy.method_metrics 'whole-set' (harness README, deviation 17)",
            f"M1 {own['metrics_whole']['m1']:.4f}, M2 {own['metrics_whole']['m2']:.4f}",
        ),
    ]
    return checks


def harness_lrs(cfg: dict, n: int) -> torch.Tensor:
    """The learning rate of each of the n + 1 iterations of one task (code mode's extra one included), from
    `MCILStrategy.make_optimizer` as the strategy steps it (LambdaLR stepped after each optimizer step)."""
    from methods.mcil_audioclip.strategy import MCILStrategy

    s = types.SimpleNamespace(model=nn.Linear(1, 1), cfg=cfg, batches_per_epoch=n, train_epochs=1)
    MCILStrategy.make_optimizer(s)
    lrs = []
    for _ in range(n + int(bool(cfg["extra_iteration"]))):
        lrs.append(s.optimizer.param_groups[0]["lr"])
        s.optimizer.step()
        s.scheduler.step()
    return torch.tensor(lrs, dtype=torch.float64)


def schedule_checks(ref: dict, cfg: dict) -> list[Check]:
    checks = []
    where = f"{REF_UTILS}:56-75, {REF_MODEL}:301-303, 319-320 / MCILStrategy.make_optimizer"
    for n in SCHEDULE_BATCHES:
        h, r = harness_lrs(cfg, n), ref["lr"][n]
        finite = torch.isfinite(r)
        if bool(finite.all()):
            checks.append(compare(f"lr schedule, {n} batches (+1 extra iteration)", h, r, 1e-12, where))
            continue
        bad = (~finite).nonzero().flatten().tolist()
        checks.append(
            compare(
                f"lr schedule, {n} batches: iterations with a finite release lr", h[finite], r[finite], 1e-12, where
            )
        )
        checks.append(
            Check(
                f"lr schedule, {n} batches: the extra iteration (deviation)",
                0.0,
                math.inf,
                where,
                f"release: {ref['lr_errors'][n] or 'NaN'} (total - warmup = 0); harness lr {h[bad].tolist()}",
            )
        )
    return checks


# ----------------------------------------------------------------------------- run, report
def run(reference: Path, python: str, seed: int) -> tuple[list[Check], float, dict]:
    torch.manual_seed(seed)
    cfg = code_config()
    inputs, moe = prepare_inputs(cfg, seed)
    ref, seconds = functional.run_reference(Path(reference), DRIVER, inputs, python=python)
    checks = (
        block_checks(ref, inputs, moe)
        + training_checks(ref, inputs, cfg)
        + gate_checks(ref, inputs, cfg)
        + eval_checks(ref, inputs, cfg)
        + schedule_checks(ref, cfg)
    )
    return checks, seconds, ref


def report(checks: list[Check], reference: Path, seconds: float) -> str:
    header = [
        f"Reference: `{REFERENCE}` checkout `{reference}` (kept results: commit `{REFERENCE_COMMIT}`); its code ran "
        f"in a subprocess ({seconds:.0f} s) on the tensors this tool prepared. Harness: the `{CODE_ROW}` row's "
        f"resolved config ({CONFIG_DATASET}).",
        f"Stand-in modules on the reference side (imported at top level, unused by the compared code): "
        f"{', '.join(STUB_PACKAGES)}.",
        "Checks with tolerance inf are documented deviations: their size is shown, they never fail.",
    ]
    return functional.markdown("MCIL-AudioCLIP function-level differential", checks, header)


def build_parser():
    return functional.parser("mcil", REFERENCE, python_needs=", with the release's packages")


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    checks, seconds, _ = run(a.reference, a.python, a.seed)
    payload = {"reference": REFERENCE, "reference_path": str(a.reference), "seed": a.seed, "seconds": seconds}
    payload["stand_in_modules"] = list(STUB_PACKAGES)
    return functional.write_report(a.out, "mcil", report(checks, a.reference, seconds), payload, checks)


if __name__ == "__main__":
    sys.exit(main())
