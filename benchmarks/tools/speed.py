"""Harness overhead benchmark: epoch time through the harness vs bare compute, side by side.

    python -m benchmarks.tools.speed                     # AVE-sized step on CUDA, a reduced one on CPU
    python -m benchmarks.tools.speed --preset ave        # force the AVE-sized step (slow on CPU)
    python -m benchmarks.tools.speed --precision bf16    # bf16 autocast on every path

Three ways to run the same training epochs of the audio-visual AV-CIL model on the same data
(an AVE-sized step: 900 new-class samples + 340 exemplars, audio 768, visual grid 8 x 196 x 768,
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
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from datasets.io import pick_device

PRESETS = {
    # samples, audio dim, (T, P, D), batch
    "ave": dict(new=900, exemplars=340, audio_dim=768, grid=(8, 196, 768), batch=256),
    "cpu-small": dict(new=900, exemplars=340, audio_dim=256, grid=(8, 49, 256), batch=256),
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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), help="problem size (default: ave on CUDA, cpu-small on CPU)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument(
        "--epochs", type=int, default=3, help="timed epochs per path (the first, warm-up, epoch is dropped; default 3)"
    )
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--workdir", type=Path, help="where the temporary feature store goes (default: a temp dir)")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    preset_name = args.preset or ("ave" if device.type == "cuda" else "cpu-small")
    cfg = PRESETS[preset_name]
    n_train = cfg["new"] + cfg["exemplars"]
    n_classes = 14  # AVE step 1: 7 old (exemplars) + 7 new classes
    print(
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), preset "
        f"{preset_name}: "
        f"{n_train} train samples, audio {cfg['audio_dim']}, visual grid {cfg['grid']}, batch {cfg['batch']}, "
        f"{args.precision}"
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
    print(f"ratio harness/bare    = {per_epoch['harness'] / per_epoch['bare']:.3f}  (target <= 1.3)")
    print(f"ratio dataloader/bare = {per_epoch['dataloader'] / per_epoch['bare']:.3f}")


if __name__ == "__main__":
    main()
