"""Speed benchmarks: an AVE-sized AV-CIL run against the device's matmul peak; harness overhead vs bare compute.

    python -m benchmarks.tools.speed --preset ave              # the AVE-sized av_cil run (GPU: bf16 recommended)
    python -m benchmarks.tools.speed --preset ave --precision bf16 --json out.json
    python -m benchmarks.tools.speed --preset ave-cpu          # the same run scaled for a CPU (ratio to its own peak)
    python -m benchmarks.tools.speed                           # harness overhead (AVE-sized step on CUDA)
    python -m benchmarks.tools.speed --size ave                # harness overhead on the AVE-sized step (slow on CPU)
    python -m benchmarks.tools.speed --grid [ARGS]             # packed feature-level grid (benchmarks.tools.grid_speed)

Whole run (`--preset`). The AVE protocol of AV-CIL (4 steps x 7 classes, memory 340, 200 epochs per step,
train batch 256 joined by exemplar batches of 128, eval batch 128, model selection on val after every epoch)
on a synthetic stand-in of AVE's size (3,339 train / 402 val / 402 test clips, audio 768, visual token grid
8 x 196 x 768 in fp16, class-clustered so the run learns), through the real `av_cil` strategy: it prints the
wall time, the FLOPs counted by `torch.utils.flop_counter` (matmuls, forward and backward, teacher and
evaluation passes; the first epoch of each step is counted and multiplied by the epochs, as every epoch runs
the same batches), the achieved TFLOP/s, the device's matmul peak measured in the same process (before and
after the run, the higher kept), and the ratio. `ave-cpu` keeps the widths (so the FLOP mix per token is
AVE's) and scales clips, tokens per frame, epochs and batch to a CPU; `tiny` is for tests.

Harness overhead (default). Three ways to run the same training epochs of the audio-visual AV-CIL model on
the same data (an AVE-sized step: 900 new-class samples + 340 exemplars, audio 768, visual grid 8 x 196 x 768,
batch 256, drop_last), measured in one process on one device:

- bare:       the model's forward + backward + Adam step on pre-stacked fp32 tensors already on
              the device, contiguous slices of a pre-shuffled copy (the compute floor);
- harness:    the real `StoreTemplate` (fine_tuning) over a fp16 feature store: the Avalanche
              training loop and callbacks, device-resident views gathered by index per batch,
              fp16 -> fp32 cast; only the time inside training epochs is counted (per-epoch
              validation is reported separately);
- dataloader: a per-sample `torch.utils.data.DataLoader` over the same data (the reference
              code's pattern: __getitem__ per sample, default collate, host -> device copy).

It prints the time per epoch of each and the ratios harness/bare and dataloader/bare.

`--compile` runs the AV-CIL attention chain through torch.compile (methods._avcil.model.use_compiled_attention)
in either benchmark; `--json PATH` writes every figure printed to one JSON file.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from datasets.io import pick_device

#: harness-overhead problem sizes (`--size`): samples, audio dim, (T, P, D), batch
PRESETS = {
    "ave": dict(new=900, exemplars=340, audio_dim=768, grid=(8, 196, 768), batch=256),
    "cpu-small": dict(new=900, exemplars=340, audio_dim=256, grid=(8, 49, 256), batch=256),
}

#: whole-run presets (`--preset`): AV-CIL's AVE protocol (../shared/reference/av_cil.md) and scaled copies
RUN_PRESETS = {
    "ave": dict(
        steps=4,
        classes_per_step=7,
        clips=(3339, 402, 402),
        audio_dim=768,
        grid=(8, 196, 768),
        memory=340,
        epochs=200,
        batch=256,
        exemplar_batch=128,
        eval_batch=128,
    ),
    # a CPU's share of it: same widths (768: the FLOP mix per token), 49 tokens per frame, 1/8 of the clips
    "ave-cpu": dict(
        steps=4,
        classes_per_step=7,
        clips=(420, 56, 56),
        audio_dim=768,
        grid=(8, 49, 768),
        memory=56,
        epochs=2,
        batch=32,
        exemplar_batch=16,
        eval_batch=64,
    ),
    "tiny": dict(
        steps=2,
        classes_per_step=2,
        clips=(32, 8, 8),
        audio_dim=16,
        grid=(2, 4, 16),
        memory=8,
        epochs=2,
        batch=8,
        exemplar_batch=4,
        eval_batch=8,
    ),
}


def build_store(root: Path, n_train: int, n_eval: int, audio_dim: int, grid, n_classes: int, seed: int = 0):
    from datasets.base import SampleTable
    from datasets.store import StoreWriter, ViewSpec

    rng = np.random.default_rng(seed)
    n = n_train + n_eval
    labels = np.arange(n) % n_classes
    splits = np.array(["train"] * n_train + ["val"] * (n_eval // 2) + ["test"] * (n_eval - n_eval // 2))
    table = SampleTable([f"s{i}" for i in range(n)], labels, splits, [f"c{c}" for c in range(n_classes)])
    w = StoreWriter(
        root / "store",
        table,
        [ViewSpec("audio", (audio_dim,)), ViewSpec("visual", tuple(grid))],
        {"dataset": "speed"},
        "speed",
    )
    w.write("audio", 0, rng.standard_normal((n, audio_dim), dtype=np.float32))
    chunk = 64
    for s in range(0, n, chunk):
        w.write("visual", s, rng.standard_normal((min(chunk, n - s), *grid), dtype=np.float32))
    return w.finalize()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model, opt, views, y, precision, device):
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = torch.nn.functional.cross_entropy(model(views)["logits"].float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def bare_epochs(store, rows, targets, n_classes, batch, epochs, device, precision):
    from methods._avcil.model import build_model

    torch.manual_seed(0)
    model = build_model("audio-visual", store, n_classes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    perm = torch.randperm(len(rows))
    audio = store.gather("audio", rows[perm], device=device, dtype=torch.float32)
    visual = store.gather("visual", rows[perm], device=device, dtype=torch.float32)
    y = targets[perm].to(device)
    times = []
    for _ in range(epochs):
        sync(device)
        t0 = time.perf_counter()
        for b in range(len(rows) // batch):
            sl = slice(b * batch, (b + 1) * batch)
            train_step(model, opt, {"audio": audio[sl], "visual": visual[sl]}, y[sl], precision, device)
        sync(device)
        times.append(time.perf_counter() - t0)
    del audio, visual
    return times


def harness_epochs(store, stream, batch, epochs, device, precision):
    from methods import registry
    from methods._avcil.model import build_model

    spec = registry()["fine_tuning"]
    cfg = spec.config("speed", "audio-visual", {"epochs": epochs})
    cfg.update(batch_size=batch, eval_batch_size=batch, lr=1e-3, weight_decay=1e-4, precision=precision)
    strategy = spec.strategy(
        model_factory=lambda n: build_model("audio-visual", store, n, cfg),
        store=store,
        stream=stream,
        modality="audio-visual",
        config=cfg,
        device=device,
        seed=0,
        progress=False,
    )
    epoch_times, val_times = [], []
    real_epoch, real_after = strategy.training_epoch, strategy._after_training_epoch

    def timed_epoch(**kw):
        sync(device)
        t0 = time.perf_counter()
        real_epoch(**kw)
        sync(device)
        epoch_times.append(time.perf_counter() - t0)

    def timed_after(**kw):
        t0 = time.perf_counter()
        real_after(**kw)
        sync(device)
        val_times.append(time.perf_counter() - t0)

    strategy.training_epoch, strategy._after_training_epoch = timed_epoch, timed_after
    strategy.train(next(iter(stream.benchmark.train_stream)), eval_streams=[])
    return epoch_times, val_times


def dataloader_epochs(store, rows, targets, n_classes, batch, epochs, device, precision):
    from methods._avcil.model import build_model

    class PerSample(torch.utils.data.Dataset):
        """The reference pattern: features held in host memory, one sample per __getitem__."""

        def __init__(self):
            self.audio = np.asarray(store.array("audio")[rows.numpy()], dtype=np.float32)
            self.visual = np.asarray(store.array("visual")[rows.numpy()], dtype=np.float32)
            self.y = targets.numpy()

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return torch.from_numpy(self.audio[i]), torch.from_numpy(self.visual[i]), int(self.y[i])

    torch.manual_seed(0)
    model = build_model("audio-visual", store, n_classes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loader = torch.utils.data.DataLoader(
        PerSample(), batch_size=batch, shuffle=True, drop_last=True, num_workers=0, pin_memory=device.type == "cuda"
    )
    times = []
    for _ in range(epochs):
        sync(device)
        t0 = time.perf_counter()
        for a, v, y in loader:
            views = {"audio": a.to(device, non_blocking=True), "visual": v.to(device, non_blocking=True)}
            train_step(model, opt, views, y.to(device, non_blocking=True), precision, device)
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


# ============================================================================ whole-run benchmark (--preset)
def build_run_store(path: Path, clips, audio_dim: int, grid, n_classes: int, device, seed: int = 0):
    """A fp16 store of `clips` = (train, val, test) class-clustered samples (labels cycle over the classes),
    generated on `device` in chunks (an AVE-sized store is ~10 GB) and written to `path`; an existing store
    there (`--store`) is reused."""
    from datasets.base import SampleTable
    from datasets.store import FeatureStore, StoreWriter, ViewSpec

    if (path / "manifest.json").exists():
        return FeatureStore(path)

    n = sum(clips)
    labels = np.arange(n) % n_classes
    splits = np.array(["train"] * clips[0] + ["val"] * clips[1] + ["test"] * clips[2])
    table = SampleTable([f"s{i}" for i in range(n)], labels, splits, [f"c{c}" for c in range(n_classes)])
    w = StoreWriter(
        path,
        table,
        [ViewSpec("audio", (audio_dim,)), ViewSpec("visual", tuple(grid))],
        {"dataset": "speed"},
        "speed",
    )
    g = torch.Generator(device=device).manual_seed(seed)
    centre_a = torch.randn(n_classes, audio_dim, generator=g, device=device)
    centre_v = torch.randn(n_classes, grid[-1], generator=g, device=device)
    y = torch.from_numpy(labels).to(device)
    w.write("audio", 0, (centre_a[y] + 2 * torch.randn(n, audio_dim, generator=g, device=device)).half())
    chunk = max(1, 2**28 // int(np.prod(grid)))  # ~0.5 GB of fp16 per write
    for start in range(0, n, chunk):
        yc = y[start : start + chunk]
        noise = torch.randn(len(yc), *grid, generator=g, device=device, dtype=torch.float16)
        w.write("visual", start, noise.add_(centre_v[yc][:, None, None, :].half()))
    return w.finalize()


def matmul_peak(device, precision: str, seconds: float = 1.0) -> float:
    """The device's matmul throughput (FLOP/s, best of several timed batches) for the dtype the model's
    matmuls run in: bf16 under `--precision bf16`, else fp32 (TF32 as torch's current setting allows)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    flops = 2.0 * n**3
    (a @ b).sum()
    sync(device)
    t0 = time.perf_counter()
    a @ b
    sync(device)
    reps = max(1, int(0.2 * seconds / max(time.perf_counter() - t0, 1e-6)))
    best, deadline = 0.0, time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = max(best, reps * flops / (time.perf_counter() - t0))
        if time.perf_counter() > deadline:
            return best


class FlopTally:
    """Counts a run's matmul FLOPs with torch.utils.flop_counter without counting every epoch: the first
    training epoch of each step (and its validation pass) is counted and multiplied by the step's epochs
    (every epoch runs the same batch shapes); per-step passes (test predictions, exemplar selection) are
    counted in full with `counting()`."""

    def __init__(self, strategy):
        from torch.utils.flop_counter import FlopCounterMode

        from methods._avcil.model import compiled_attention, use_compiled_attention

        compiled = compiled_attention()

        class EagerCounter(FlopCounterMode):
            """Counts in eager mode: the compiled attention chain holds no matmul (the FLOPs are the same) and
            compiled regions are not traced under a dispatch mode."""

            def __enter__(self):
                use_compiled_attention(False)
                return super().__enter__()

            def __exit__(self, *exc):
                use_compiled_attention(compiled)
                return super().__exit__(*exc)

        self.mode = EagerCounter
        self.train = self.val = self.once = 0
        epoch, after = strategy.training_epoch, strategy._after_training_epoch

        def counted_epoch(**kw):
            if strategy.epoch != 0:
                return epoch(**kw)
            with self.mode(display=False) as m:
                epoch(**kw)
            self.train += m.get_total_flops() * strategy.train_epochs

        def counted_after(**kw):
            if strategy.epoch != 0:
                return after(**kw)
            with self.mode(display=False) as m:
                after(**kw)
            self.val += m.get_total_flops() * strategy.train_epochs

        after_exp = strategy._after_training_exp

        def counted_after_exp(**kw):
            with self.counting():
                after_exp(**kw)

        strategy.training_epoch, strategy._after_training_epoch = counted_epoch, counted_after
        strategy._after_training_exp = counted_after_exp

    def counting(self):
        tally = self

        class _Counting:
            def __enter__(self):
                self.m = tally.mode(display=False)
                self.m.__enter__()

            def __exit__(self, *exc):
                self.m.__exit__(*exc)
                tally.once += self.m.get_total_flops()

        return _Counting()

    @property
    def total(self) -> int:
        return self.train + self.val + self.once


def run_preset(
    name: str, device, precision: str, workdir=None, method: str = "av_cil", store_dir=None, **overrides
) -> dict:
    """Build the preset's store, run `method` over its stream as a cell does (train each step, then predict the
    test split), and return the figures (wall time, FLOPs, TFLOP/s, peak, ratio, accuracy)."""
    from benchmarks.core.protocols import Protocol
    from benchmarks.core.streams import build_stream
    from benchmarks.metrics import accuracy
    from methods import registry

    cfg_p = {**RUN_PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
    n_classes = cfg_p["steps"] * cfg_p["classes_per_step"]
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        t0 = time.perf_counter()
        path = Path(store_dir or tmp) / f"speed-{name}-{'x'.join(map(str, cfg_p['grid']))}-{sum(cfg_p['clips'])}"
        store = build_run_store(path, cfg_p["clips"], cfg_p["audio_dim"], cfg_p["grid"], n_classes, device)
        store_s = time.perf_counter() - t0
        protocol = Protocol(
            f"{cfg_p['steps']}x{cfg_p['classes_per_step']}",
            tuple(range(n_classes)),
            (cfg_p["classes_per_step"],) * cfg_p["steps"],
            cfg_p["memory"],
        )
        stream = build_stream(store, protocol)
        spec = registry()[method]
        cfg = spec.config("speed", "audio-visual", {"epochs": cfg_p["epochs"]})
        cfg.update(
            batch_size=cfg_p["batch"],
            exemplar_batch_size=cfg_p["exemplar_batch"],
            eval_batch_size=cfg_p["eval_batch"],
            memory=cfg_p["memory"],
            precision=precision,
        )
        torch.manual_seed(0)  # the model's initial weights, as the cell runner seeds them
        strategy = spec.build(
            modality="audio-visual", store=store, stream=stream, cfg=cfg, device=device, seed=0, progress=False
        )
        peak_before = matmul_peak(device, precision)
        tally = FlopTally(strategy)
        step_of = torch.tensor(protocol.step_of_position())
        R, A, step_s = [], [], []
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t0 = time.perf_counter()
        for t, exp in enumerate(stream.benchmark.train_stream):
            ts = time.perf_counter()
            strategy.train(exp, eval_streams=[])
            with tally.counting():
                pred, targets = strategy.predict_split("test")
            row, acc, _ = accuracy.accuracy_matrix_from_predictions(
                pred.numpy(), targets.numpy(), step_of[targets].numpy(), t
            )
            R.append(row)
            A.append(acc)
            step_s.append(time.perf_counter() - ts)
        sync(device)
        wall = time.perf_counter() - t0
        peak = max(peak_before, matmul_peak(device, precision))
    achieved = tally.total / wall
    return {
        "preset": name,
        "method": method,
        "device": device_name(device),
        "precision": precision,
        "problem": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg_p.items()},
        "store_build_s": store_s,
        "wall_s": wall,
        "step_s": step_s,
        "flops": {"total": tally.total, "train": tally.train, "val": tally.val, "test_and_selection": tally.once},
        "achieved_tflops": achieved / 1e12,
        "peak_tflops": peak / 1e12,
        "peak_tflops_before": peak_before / 1e12,
        "ratio": achieved / peak,
        "flop_floor_s": tally.total / peak,
        "avg_inc_acc": float(np.mean(A)),
        "last_acc": float(A[-1]),
        "max_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def print_run(r: dict) -> None:
    p = r["problem"]
    print(
        f"{r['method']} preset {r['preset']} on {r['device']}, {r['precision']}: {p['steps']} steps x "
        f"{p['classes_per_step']} classes, clips {p['clips']}, visual grid {p['grid']}, memory {p['memory']}, "
        f"{p['epochs']} epochs/step, batch {p['batch']}"
    )
    print(f"  store build (not timed)     {r['store_build_s']:.1f} s")
    print(f"  wall time                   {r['wall_s']:.1f} s  (steps: {', '.join(f'{x:.1f}' for x in r['step_s'])})")
    print(
        f"  counted FLOPs               {r['flops']['total'] / 1e12:.2f} TFLOP "
        f"(train {r['flops']['train'] / 1e12:.2f}, "
        f"val {r['flops']['val'] / 1e12:.2f}, test+selection {r['flops']['test_and_selection'] / 1e12:.2f})"
    )
    print(f"  achieved                    {r['achieved_tflops']:.3f} TFLOP/s")
    print(f"  measured matmul peak        {r['peak_tflops']:.3f} TFLOP/s ({r['precision']})")
    print(f"  ratio achieved / peak       {r['ratio']:.3f}   (FLOP floor at peak: {r['flop_floor_s']:.1f} s)")
    print(f"  accuracy                    avg inc {r['avg_inc_acc']:.1f}, last {r['last_acc']:.1f}")


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def run_grid(argv) -> int:
    """`--grid`: the packed-grid benchmark lives in benchmarks.tools.grid_speed (with the Ray launcher)."""
    if importlib.util.find_spec("benchmarks.tools.grid_speed") is None:
        raise SystemExit(
            "speed --grid: benchmarks/tools/grid_speed.py is not in this checkout (it comes with the Ray "
            "launcher); nothing to run"
        )
    return importlib.import_module("benchmarks.tools.grid_speed").main(argv)


def write_json(path: Path, figures: dict) -> None:
    from datasets.io import atomic_write_text

    atomic_write_text(Path(path), json.dumps(figures, indent=2) + "\n")


def overhead(args, device) -> dict:
    """The harness-overhead benchmark (module docstring); returns its figures."""
    size = args.size or ("ave" if device.type == "cuda" else "cpu-small")
    cfg = PRESETS[size]
    n_train = cfg["new"] + cfg["exemplars"]
    n_classes = 14  # AVE step 1: 7 old (exemplars) + 7 new classes
    print(
        f"device {device_name(device)}, size {size}: {n_train} train samples, audio {cfg['audio_dim']}, "
        f"visual grid {cfg['grid']}, batch {cfg['batch']}, {args.precision}"
    )
    from benchmarks.core.protocols import Protocol
    from benchmarks.core.streams import build_stream

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        store = build_store(Path(tmp), n_train, 2 * n_classes, cfg["audio_dim"], cfg["grid"], n_classes)
        stream = build_stream(store, Protocol("one-step", tuple(range(n_classes)), (n_classes,)))
        rows, targets = stream.step("train", 0)
        epochs = args.epochs + 1
        results = {
            "bare": bare_epochs(store, rows, targets, n_classes, cfg["batch"], epochs, device, args.precision),
            "harness": None,
            "dataloader": dataloader_epochs(
                store, rows, targets, n_classes, cfg["batch"], epochs, device, args.precision
            ),
        }
        results["harness"], val_times = harness_epochs(store, stream, cfg["batch"], epochs, device, args.precision)
    per_epoch = {k: float(np.median(v[1:])) for k, v in results.items()}
    for k, v in per_epoch.items():
        print(f"  {k:10s} {v * 1000:9.1f} ms/epoch  (epochs: {', '.join(f'{x * 1000:.0f}' for x in results[k][1:])})")
    print(f"  per-epoch validation in the harness (not in the ratio): {np.median(val_times[1:]) * 1000:.1f} ms")
    print(f"ratio harness/bare    = {per_epoch['harness'] / per_epoch['bare']:.3f}  (target <= 1.1)")
    print(f"ratio dataloader/bare = {per_epoch['dataloader'] / per_epoch['bare']:.3f}")
    return {
        "size": size,
        "device": device_name(device),
        "precision": args.precision,
        "ms_per_epoch": {k: v * 1000 for k, v in per_epoch.items()},
        "harness_over_bare": per_epoch["harness"] / per_epoch["bare"],
        "dataloader_over_bare": per_epoch["dataloader"] / per_epoch["bare"],
    }


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--grid" in argv:
        argv.remove("--grid")
        return run_grid(argv) or 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--preset", choices=sorted(RUN_PRESETS), help="run a whole preset (see above) instead of the overhead benchmark"
    )
    p.add_argument(
        "--size", choices=sorted(PRESETS), help="overhead benchmark size (default: ave on CUDA, cpu-small on CPU)"
    )
    p.add_argument("--grid", action="store_true", help="the packed-grid benchmark (benchmarks.tools.grid_speed)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument(
        "--epochs",
        type=int,
        help="overhead: timed epochs per path (default 3; a warm-up epoch is added and dropped); "
        "--preset: epochs per step (default: the preset's)",
    )
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the AV-CIL attention chain")
    p.add_argument("--method", default="av_cil", help="--preset: the method run (default av_cil)")
    p.add_argument("--json", type=Path, help="write the figures to this JSON file")
    p.add_argument("--workdir", type=Path, help="where the temporary feature store goes (default: a temp dir)")
    p.add_argument("--store", type=Path, help="--preset: keep the generated store in this folder and reuse it")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    if args.compile:
        from methods._avcil.model import use_compiled_attention

        use_compiled_attention(True)
    if args.preset:
        figures = run_preset(
            args.preset, device, args.precision, args.workdir, args.method, args.store, epochs=args.epochs
        )
        print_run(figures)
    else:
        args.epochs = 3 if args.epochs is None else args.epochs
        figures = overhead(args, device)
    figures["compile"] = args.compile
    if args.json:
        write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
