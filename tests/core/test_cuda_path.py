"""The device path on CPU: no host synchronisation per training iteration, resident views, herding on the device.

A guard patches the Python-level ways of pulling a value to the host (`.item()`, `float(t)`, `bool(t)`, `.cpu()`,
`.tolist()`, `.numpy()`, `nonzero`, `unique`, boolean-mask indexing ...) or of copying Python data to the device
(`torch.tensor(..., device=)`) and fails when harness or method code calls one inside a training epoch; torch's
own internals are left to tests/gpu/test_cuda.py, which runs the same training under
`torch.cuda.set_sync_debug_mode("error")` on a GPU.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.core.memory import herding
from benchmarks.core.protocols import Protocol
from benchmarks.core.streams import build_stream
from benchmarks.core.template import ResidentViews
from methods import registry
from tests.conftest import make_toy_paired_store, make_toy_store

ROOT = str(Path(__file__).resolve().parents[2])
VENV = str(Path(ROOT) / ".venv")

#: (owner, attribute) of every Python-level host pull the guard watches
WATCHED = [
    (torch.Tensor, "item"),
    (torch.Tensor, "tolist"),
    (torch.Tensor, "cpu"),
    (torch.Tensor, "numpy"),
    (torch.Tensor, "nonzero"),
    (torch.Tensor, "unique"),
    (torch.Tensor, "__bool__"),
    (torch.Tensor, "__float__"),
    (torch.Tensor, "__int__"),
    (torch.Tensor, "__index__"),
    (torch, "nonzero"),
    (torch, "unique"),
    (torch, "masked_select"),
]


def _project_caller() -> str | None:
    """`file:line` of the calling frame when it is project code (not torch or another installed package), or None."""
    frame = sys._getframe(2)
    if frame is None:
        return None
    path = frame.f_code.co_filename
    if path.startswith(ROOT) and not path.startswith(VENV):
        return f"{Path(path).relative_to(ROOT)}:{frame.f_lineno}"
    return None


class HostSyncGuard:
    """Records project call sites of host pulls while `active`; `watch(strategy)` makes it active inside every
    training epoch (the per-iteration path: batch indexing, view gathering, forward, loss, backward, step)."""

    def __init__(self):
        self.active = False
        self.calls: list[str] = []

    def _wrap(self, name, fn):
        guard = self

        def wrapper(*args, **kwargs):
            if guard.active:
                where = _project_caller()
                if where is not None:
                    guard.calls.append(f"{name} at {where}")
            return fn(*args, **kwargs)

        return wrapper

    def _host_data(self, name, fn):
        """torch.tensor / as_tensor with a device: a host-to-device copy of Python data (synchronous on CUDA)."""
        guard = self

        def wrapper(*args, **kwargs):
            if guard.active and kwargs.get("device") is not None:
                where = _project_caller()
                if where is not None:
                    guard.calls.append(f"{name}(..., device=) at {where}")
            return fn(*args, **kwargs)

        return wrapper

    def _getitem(self, fn):
        guard = self

        def getitem(t, index):
            if guard.active:
                parts = index if isinstance(index, tuple) else (index,)
                if any(torch.is_tensor(p) and p.dtype == torch.bool for p in parts):
                    where = _project_caller()
                    if where is not None:
                        guard.calls.append(f"boolean-mask indexing at {where}")
            return fn(t, index)

        return getitem

    @contextlib.contextmanager
    def installed(self):
        with pytest.MonkeyPatch.context() as mp:
            for owner, name in WATCHED:
                mp.setattr(owner, name, self._wrap(name, getattr(owner, name)))
            mp.setattr(torch.Tensor, "__getitem__", self._getitem(torch.Tensor.__getitem__))
            for name in ("tensor", "as_tensor"):
                mp.setattr(torch, name, self._host_data(name, getattr(torch, name)))
            yield self

    def watch(self, strategy) -> None:
        epoch = strategy.training_epoch

        def guarded(**kwargs):
            self.active = True
            try:
                return epoch(**kwargs)
            finally:
                self.active = False

        strategy.training_epoch = guarded


def make_strategy(name, modality, store, stream, device="cpu", **overrides):
    spec = registry()[name]
    cfg = spec.config("toy", modality, {"epochs": overrides.pop("epochs", 1)})
    cfg.update(batch_size=8, eval_batch_size=16, memory=12, **overrides)
    return spec.build(
        modality=modality, store=store, stream=stream, cfg=cfg, device=torch.device(device), seed=0, progress=False
    )


FEATURE_METHODS = sorted(
    n
    for n, s in registry().items()
    if "audio-visual" in s.modalities
    and "audio-visual" in s.suites
    and set(s.required_views("audio-visual", s.config("toy", "audio-visual"))) <= {"audio", "visual"}
)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    store = make_toy_store(tmp_path_factory.mktemp("cuda_path") / "toy")
    return store, build_stream(store, Protocol("3x2", tuple(range(6)), (2, 2, 2), memory=12))


def train_two_steps(strategy, stream):
    for exp in list(stream.benchmark.train_stream)[:2]:
        strategy.train(exp, eval_streams=[])


#: methods known to pull to the host per iteration (strict xfail: fixing one makes its test fail until removed here)
KNOWN_SYNCS: dict[str, str] = {}  # method -> why it still reads the host per iteration (none today)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN_SYNCS[n])) if n in KNOWN_SYNCS else n
        for n in FEATURE_METHODS
    ],
)
def test_training_iterations_pull_nothing_to_the_host(name, toy):
    store, stream = toy
    s = make_strategy(name, "audio-visual", store, stream)
    guard = HostSyncGuard()
    guard.watch(s)
    with guard.installed():
        train_two_steps(s, stream)
    assert guard.calls == [], f"{name}: host synchronisation inside a training iteration: {guard.calls[:5]}"


@pytest.fixture(scope="module")
def tags(tmp_path_factory):
    """A tiny SynthTags store and stream (built once for the module)."""
    import benchmarks.run.grid
    import datasets
    from benchmarks.run.cell import GridContext
    from benchmarks.suites import get_suite
    from datasets.adapters.synth_tags import SynthTags, SynthTagsConfig

    adapter = SynthTags(SynthTagsConfig(train_base=24, train_new=6, test_base=12, test_new=4))
    root = tmp_path_factory.mktemp("tags")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets, "registry", lambda: {"synth_tags": adapter})
        mp.setattr(benchmarks.run.grid, "dataset_registry", lambda: {"synth_tags": adapter})
        ctx = GridContext(get_suite("audio-multilabel"), root / "data", root / "r", torch.device("cpu"), False)
        yield ctx.stream("synth_tags", adapter.protocols()[0].name), ctx.store("synth_tags")


@pytest.mark.parametrize("name", ["ml_fine_tuning-gn", "ml_indl-bn"])  # the template path; indl adds a teacher
def test_multilabel_iterations_pull_nothing_to_the_host(name, tags):
    stream, store = tags
    spec = registry()[name]
    cfg = {**spec.config("synth_tags", "audio"), "epochs": 1, "batch_size": 4}
    s = spec.build(modality="audio", store=store, stream=stream, cfg=cfg, device=torch.device("cpu"), seed=0)
    s.progress = False
    guard = HostSyncGuard()
    guard.watch(s)
    with guard.installed():
        train_two_steps(s, stream)
    assert guard.calls == [], f"{name}: host synchronisation inside a training iteration: {guard.calls[:5]}"


@pytest.mark.xfail(
    strict=True,
    reason="methods/mcil_audioclip: fusion.py forward() skips the fusion branch when no sample fires "
    "(`bool(mask.any())`, a host read per batch) and model.py text_embeddings() indexes the token table with "
    "`classes.cpu()`; the fired count no longer syncs (a device tensor)",
)
def test_mcil_iterations_pull_nothing_to_the_host(tmp_path):
    store = make_toy_paired_store(tmp_path / "paired")
    stream = build_stream(store, Protocol("3x2", tuple(range(6)), (2, 2, 2), memory=0))
    spec = registry()["mcil_audioclip"]
    cfg = spec.config("synth_av", "audio-visual", {"epochs": 1})
    cfg.update(batch_size=8, eval_batch_size=8)
    s = spec.build(
        modality="audio-visual", store=store, stream=stream, cfg=cfg, device=torch.device("cpu"), seed=0, progress=False
    )
    guard = HostSyncGuard()
    guard.watch(s)
    with guard.installed():
        train_two_steps(s, stream)
    assert guard.calls == [], guard.calls[:5]


def test_the_guard_catches_a_host_pull(toy):
    """A loss that reads `.item()`, indexes with a boolean mask and builds a tensor on the device is caught."""
    store, stream = toy
    s = make_strategy("fine_tuning", "audio-visual", store, stream, epochs=1)
    loss_fn = s.loss_fn

    def leaky(out, y):
        loss = loss_fn(out, y)
        if loss.item() > 0:  # a host sync per iteration
            _ = out["logits"][y >= 0] + torch.tensor(1.0, device=y.device)
        return loss

    s.loss_fn = leaky
    guard = HostSyncGuard()
    guard.watch(s)
    with guard.installed():
        train_two_steps(s, stream)
    assert any(c.startswith("item at tests/core/test_cuda_path.py") for c in guard.calls)
    assert any(c.startswith("boolean-mask indexing at tests/core/test_cuda_path.py") for c in guard.calls)
    assert any(c.startswith("tensor(..., device=) at tests/core/test_cuda_path.py") for c in guard.calls)


def reference_herding(features: torch.Tensor, m: int) -> list[int]:
    """The greedy iCaRL selection, one host-side pick at a time (what `herding` must reproduce)."""
    mu, running, picked = features.mean(0), torch.zeros(features.shape[1]), []
    for k in range(1, min(m, len(features)) + 1):
        dist = (mu - (running + features) / k).norm(dim=1)
        dist[picked] = float("inf")
        i = int(dist.argmin())
        picked.append(i)
        running += features[i]
    return picked


def test_herding_matches_the_host_loop_and_stays_on_the_features_device():
    x = torch.nn.functional.normalize(torch.randn(40, 16, generator=torch.Generator().manual_seed(3)), dim=1)
    picked = herding(x, 12)
    assert picked.device == x.device and picked.dtype == torch.long
    assert picked.tolist() == reference_herding(x, 12)


def test_epoch_validation_reads_resident_views_not_the_store(toy, monkeypatch):
    """During training no val pass reads the store (the val rows are resident); predictions match the store path."""
    store, stream = toy
    s = make_strategy("fine_tuning", "audio-visual", store, stream, epochs=3)
    reads = []
    gather = type(store).gather

    def counting(self, view, rows, *a, **k):
        reads.append(len(rows))
        return gather(self, view, rows, *a, **k)

    monkeypatch.setattr(type(store), "gather", counting)
    exp = next(iter(stream.benchmark.train_stream))
    s.train(exp, eval_streams=[])
    # the store is read to build the two resident copies (train rows, val rows: 2 views each) and by the test
    # pass of the last-epoch model after training; never once per epoch
    val_rows, _ = stream.seen("val", 0)
    train_rows, _ = stream.step("train", 0)
    assert reads[:4] == [len(train_rows)] * 2 + [len(val_rows)] * 2
    assert len(reads) == 4 + 2  # + the last-epoch test pass (one eval batch, 2 views)
    assert s.resident is None and s.eval_resident is None  # released after the step
    resident = ResidentViews(store, s.views, val_rows, torch.device("cpu"))
    s.eval_resident = resident
    from_resident = s.predict_rows(val_rows)
    s.eval_resident = None
    assert torch.equal(from_resident, s.predict_rows(val_rows))


def test_resident_views_keep_the_store_dtype_and_gather_fp32(toy):
    store, _ = toy
    rows = torch.tensor([5, 1, 9])
    r = ResidentViews(store, ["audio", "visual"], rows, torch.device("cpu"))
    assert r.data["visual"].dtype == torch.from_numpy(np.asarray(store.array("visual")[:1])).dtype
    assert r.covers(torch.tensor([1, 9])) and not r.covers(torch.tensor([1, 2]))
    assert not r.covers(torch.tensor([1]), views=["logmel"])
    views = r.gather(torch.tensor([9, 5]))
    assert views["visual"].dtype == torch.float32
    assert torch.equal(views["audio"], store.gather("audio", [9, 5], dtype=torch.float32))
