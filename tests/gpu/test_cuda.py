"""The device path on a GPU (every test skipped without CUDA; benchmarks/tools/device_check.sh runs them on an H200).

- no synchronising CUDA call inside a training iteration, for every feature-level method, under
  `torch.cuda.set_sync_debug_mode("error")` (from `_unpack_minibatch` to the end of `_after_training_iteration`);
- the step's views resident on the device in the store's dtype, gathered per batch as fp32;
- herding on the device picks what the host loop picks;
- bf16 autocast within tolerance of fp32 at AVE size (benchmarks.tools.precision);
- a CUDA run (fp32 and bf16) predicts what the CPU run predicts on nearly every test sample.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.core.memory import herding
from tests.core.test_cuda_path import (
    FEATURE_METHODS,
    KNOWN_SYNCS,
    make_strategy,
    reference_herding,
    toy,
    train_two_steps,
)

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (run by benchmarks/tools/device_check.sh)"
)
__all__ = ["toy"]  # the module-scoped fixture, shared with the CPU tests


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN_SYNCS[n])) if n in KNOWN_SYNCS else n
        for n in FEATURE_METHODS
    ],
)
def test_cuda_training_iterations_do_not_synchronise(name, toy):
    """Every synchronising CUDA call inside a training iteration (from `_unpack_minibatch` to the end of
    `_after_training_iteration`) raises under sync debug mode "error"."""
    store, stream = toy
    s = make_strategy(name, "audio-visual", store, stream, device="cuda")
    unpack, after = s._unpack_minibatch, s._after_training_iteration

    def unpack_guarded():
        torch.cuda.set_sync_debug_mode("error")
        unpack()

    def after_guarded(**kw):
        try:
            after(**kw)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    s._unpack_minibatch, s._after_training_iteration = unpack_guarded, after_guarded
    try:
        train_two_steps(s, stream)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert s.model.classifier.weight.is_cuda


def test_cuda_resident_views_stay_in_the_store_dtype(toy):
    store, stream = toy
    s = make_strategy("fine_tuning", "audio-visual", store, stream, device="cuda", epochs=1)
    seen = {}
    make = s.make_train_dataloader

    def spy(**kw):
        make(**kw)
        seen.update({v: (x.device.type, x.dtype) for v, x in s.resident.data.items()})
        seen["batch"] = s.resident.gather(s.dataloader.rows[:4])["visual"].dtype

    s.make_train_dataloader = spy
    s.train(next(iter(stream.benchmark.train_stream)), eval_streams=[])
    dtype = torch.from_numpy(np.asarray(store.array("visual")[:1])).dtype
    assert seen["visual"] == ("cuda", dtype) and seen["batch"] == torch.float32


def test_cuda_herding_picks_what_the_cpu_picks():
    x = torch.nn.functional.normalize(torch.randn(200, 64, generator=torch.Generator().manual_seed(5)), dim=1)
    picked = herding(x.cuda(), 30)
    assert picked.is_cuda and picked.cpu().tolist() == reference_herding(x.double().float(), 30)


@pytest.mark.parametrize("modality", ["audio", "visual", "audio-visual"])
def test_cuda_bf16_matches_fp32_at_ave_size(modality):
    from benchmarks.tools.precision import check, compare

    report = compare(modality, 768, (8, 196, 768), 64, 28, torch.device("cuda"))
    assert check(report) == [], report


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_run_matches_cpu_predictions(precision, toy):
    """One step on CUDA and on CPU from the same seed: the test predictions agree on nearly every sample."""
    store, stream = toy
    preds = {}
    for device in ("cpu", "cuda"):
        s = make_strategy("av_cil", "audio-visual", store, stream, device=device, epochs=3, precision=precision)
        s.train(next(iter(stream.benchmark.train_stream)), eval_streams=[])
        preds[device] = s.predict_split("test")[0]
    assert (preds["cpu"] == preds["cuda"]).float().mean() >= 0.75
