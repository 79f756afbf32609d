"""Layer-wise similarity of two CNN14 phase checkpoints: minibatch linear CKA with the unbiased HSIC.

    python -m benchmarks.tools.cka --ckpt-a A.pt --ckpt-b B.pt --dataset synth_tags --out plot.png \
        [--phase 0] [--json cka.json]

The TASLP analysis (../shared/reference/multilabel_audio.md section 8; reference `cka_func` with
`lib/torch_cka_up/cka.py`): the phase-0 model against the phase-4 model, both fed the phase-0
test set (`test_phase_0.txt`, `--phase 0`), compared at 25 layers: conv1, bn1, conv2, bn2 of each
of the six conv blocks, and fc.

Checkpoints: the `<record>.phases/phase<t>.pt` files a run writes with
`run_all.py --suite audio-multilabel --keep-phase-checkpoints` (state dict + model config), read
with `weights_only=True`; a bare CNN14 state dict also works (widths, norm and head size are read
from the tensor names and shapes).

Formula (Nguyen, Raghu & Kornblith 2021, Eq. 3). Per minibatch of n clips and layer features X
(flattened per clip): K = X X^T with its diagonal set to 0, and

    HSIC_1(K, L) = [tr(K L) + (1^T K 1)(1^T L 1) / ((n-1)(n-2)) - 2/(n-2) 1^T K L 1] / (n (n-3));
    CKA(a, b) = mean_batches HSIC_1(K_a, L_b) / sqrt(mean HSIC_1(K_a, K_a) * mean HSIC_1(L_b, L_b)).

Minibatches are consecutive test clips of `--batch-size` (the last, smaller one is dropped: the
estimator needs the same n in every batch and n > 3). The full layer x layer matrix is computed;
the plot shows the diagonal (same layer in both models, what the reference prints) and the matrix.

Deviation: the reference's hooks keep references to the bn outputs, which its in-place ReLU then
overwrites, so its "bn" features are post-ReLU. Here hooks see each module's own output (bn =
after normalisation, before the ReLU); `--bn-post-relu` reproduces the reference.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch

from methods._cnn14.model import CNN14

LAYERS = [f"conv_block{i}.{m}" for i in range(1, 7) for m in ("conv1", "bn1", "conv2", "bn2")] + ["fc"]


def gram(x: torch.Tensor) -> torch.Tensor:
    """Linear-kernel Gram matrix of flattened features with a zero diagonal (float64)."""
    x = x.flatten(1).double()
    k = x @ x.T
    k.fill_diagonal_(0.0)
    return k


def hsic1(K: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC estimator of two Gram matrices with zero diagonals (n > 3)."""
    n = K.shape[0]
    if n <= 3:
        raise ValueError(f"the unbiased HSIC needs more than 3 samples per batch, got {n}")
    ones = torch.ones(n, 1, dtype=K.dtype, device=K.device)
    kl = K @ L
    value = (
        torch.trace(kl)
        + (ones.T @ K @ ones) * (ones.T @ L @ ones) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (ones.T @ kl @ ones)
    )
    return value.squeeze() / (n * (n - 3))


class MinibatchCKA:
    """Accumulates HSIC_1 over minibatches for every (layer of A, layer of B) pair."""

    def __init__(self, n_a: int, n_b: int):
        self.kl = torch.zeros(n_a, n_b, dtype=torch.float64)
        self.kk = torch.zeros(n_a, dtype=torch.float64)
        self.ll = torch.zeros(n_b, dtype=torch.float64)
        self.batches = 0

    def update(self, feats_a: list[torch.Tensor], feats_b: list[torch.Tensor]) -> None:
        Ks = [gram(f) for f in feats_a]
        Ls = [gram(f) for f in feats_b]
        for i, K in enumerate(Ks):
            self.kk[i] += hsic1(K, K).cpu()
            for j, L in enumerate(Ls):
                self.kl[i, j] += hsic1(K, L).cpu()
        for j, L in enumerate(Ls):
            self.ll[j] += hsic1(L, L).cpu()
        self.batches += 1

    def compute(self) -> torch.Tensor:
        if not self.batches:
            raise ValueError("no minibatch was accumulated")
        kl, kk, ll = self.kl / self.batches, self.kk / self.batches, self.ll / self.batches
        return kl / torch.sqrt(kk[:, None].clamp(min=0) * ll[None, :].clamp(min=0))


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Single-batch unbiased linear CKA of two feature matrices (for tests and quick checks)."""
    m = MinibatchCKA(1, 1)
    m.update([x], [y])
    return float(m.compute()[0, 0])


# ----------------------------------------------------------------------------- models
def infer_config(state: dict) -> dict:
    """CNN14 constructor arguments from a bare state dict."""
    widths = [int(state[f"conv_block{i}.conv1.weight"].shape[0]) for i in range(1, 7)]
    if any(k.endswith("bn1.bn.weight") for k in state):
        norm = "cn"
    elif any(k.endswith("bn1.running_mean") for k in state if k.startswith("conv_block")):
        norm = "bn"
    else:
        norm = "gn"
    return {
        "num_classes": int(state["fc.weight"].shape[0]),
        "widths": widths,
        "norm": norm,
        "n_mels": int(state["bn0.weight"].shape[0]),
    }


def load_model(path: Path) -> tuple[CNN14, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if "model" in ckpt and isinstance(ckpt["model"], dict):
        state, cfg = ckpt["model"], dict(ckpt.get("model_config") or infer_config(ckpt["model"]))
    else:
        state, cfg = ckpt, infer_config(ckpt)
    model = CNN14(**cfg)
    model.load_state_dict(state)
    return model.eval(), {k: v for k, v in ckpt.items() if k != "model"} if "model" in ckpt else {"model_config": cfg}


class Hooks:
    """Forward hooks that keep each named layer's output (a copy, never aliased by later in-place ops)."""

    def __init__(self, model: torch.nn.Module, layers: list[str], bn_post_relu: bool = False):
        self.out: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        missing = [n for n in layers if n not in modules]
        if missing:
            raise KeyError(f"model has no layer(s) {missing}")
        self.handles = []
        for name in layers:
            post = bn_post_relu and re.search(r"\.bn[12]$", name) is not None

            def hook(_m, _inp, output, name=name, post=post):
                self.out[name] = (torch.relu(output) if post else output).detach().clone()

            self.handles.append(modules[name].register_forward_hook(hook))

    def remove(self):
        for h in self.handles:
            h.remove()


@torch.no_grad()
def cka_matrix(
    model_a: CNN14, model_b: CNN14, batches, layers=LAYERS, device="cpu", bn_post_relu: bool = False
) -> torch.Tensor:
    """CKA between every layer of model A and every layer of model B over the given input batches."""
    model_a, model_b = model_a.to(device).eval(), model_b.to(device).eval()
    ha, hb = Hooks(model_a, layers, bn_post_relu), Hooks(model_b, layers, bn_post_relu)
    acc = MinibatchCKA(len(layers), len(layers))
    try:
        for x in batches:
            x = x.to(device)
            model_a(x)
            model_b(x)
            acc.update([ha.out[n] for n in layers], [hb.out[n] for n in layers])
    finally:
        ha.remove()
        hb.remove()
    return acc.compute()


def plot(matrix: np.ndarray, layers: list[str], title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from benchmarks.report.plots import save_figure

    short = [n.replace("conv_block", "b") for n in layers]
    diag = np.diag(matrix)
    colours = ["tab:blue" if ".conv" in n else "tab:orange" if ".bn" in n else "tab:green" for n in layers]
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.2), gridspec_kw={"width_ratios": [1.3, 1]})
    axes[0].bar(range(len(layers)), diag, color=colours)
    axes[0].set_xticks(range(len(layers)), short, rotation=90, fontsize=7)
    axes[0].set_ylim(0, 1.05)
    axes[0].set_ylabel("linear CKA (same layer)")
    axes[0].set_title("diagonal: conv (blue), norm (orange), fc (green)", fontsize=9)
    sns.heatmap(matrix, vmin=0, vmax=1, cmap="magma", ax=axes[1], xticklabels=short, yticklabels=short, square=True)
    axes[1].tick_params(labelsize=5)
    axes[1].set_xlabel("model B layer")
    axes[1].set_ylabel("model A layer")
    fig.suptitle(title, fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, out)


def test_batches(dataset: str, data_root: Path, phase: int, batch_size: int, max_batches: int | None):
    from benchmarks.suites.multilabel import build_ml_stream
    from datasets import get_adapter

    adapter = get_adapter(dataset)
    store = adapter.open(data_root, progress=False)
    stream = build_ml_stream(adapter, store, data_root)
    rows, _ = stream.test_set(phase)
    n = (len(rows) // batch_size) * batch_size
    if n == 0:
        raise SystemExit(
            f"the phase-{phase} test set has {len(rows)} clips, fewer than one batch of {batch_size}; lower "
            "--batch-size"
        )
    for b in range(0, n, batch_size):
        if max_batches is not None and b // batch_size >= max_batches:
            break
        yield store.gather("logmel", rows[b : b + batch_size], dtype=torch.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt-a", type=Path, required=True, help="e.g. the phase-0 checkpoint")
    ap.add_argument("--ckpt-b", type=Path, required=True, help="e.g. the phase-4 checkpoint")
    ap.add_argument("--dataset", required=True, help="multi-label dataset whose test set is fed to both models")
    ap.add_argument(
        "--phase", type=int, default=0, help="which cumulative test set (default 0: test_phase_0, as the reference)"
    )
    ap.add_argument("--data-root", type=Path, default=Path("data"))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-batches", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bn-post-relu", action="store_true", help="bn features after the ReLU (the reference's aliasing)")
    ap.add_argument("--out", type=Path, required=True, help="plot (png)")
    ap.add_argument("--json", type=Path, help="also write the layer names, the diagonal and the matrix as JSON")
    args = ap.parse_args(argv)
    model_a, meta_a = load_model(args.ckpt_a)
    model_b, meta_b = load_model(args.ckpt_b)
    batches = test_batches(args.dataset, args.data_root, args.phase, args.batch_size, args.max_batches)
    matrix = cka_matrix(model_a, model_b, batches, LAYERS, args.device, args.bn_post_relu).numpy()
    name = lambda p, m: f"{p.name}" + (f" (phase {m['phase']})" if "phase" in m else "")  # noqa: E731
    title = (
        f"minibatch linear CKA, {name(args.ckpt_a, meta_a)} vs {name(args.ckpt_b, meta_b)}, "
        f"{args.dataset} test phase {args.phase}"
    )
    plot(matrix, LAYERS, title, args.out)
    for layer, v in zip(LAYERS, np.diag(matrix)):
        print(f"{layer:22s} {v:.4f}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "layers": LAYERS,
                    "diagonal": np.diag(matrix).tolist(),
                    "matrix": matrix.tolist(),
                    "a": str(args.ckpt_a),
                    "b": str(args.ckpt_b),
                    "dataset": args.dataset,
                    "phase": args.phase,
                },
                indent=1,
            )
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
