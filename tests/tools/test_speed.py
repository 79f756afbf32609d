"""benchmarks.tools.speed: `--grid` dispatch, the matmul peak, and the FLOP tally of a whole tiny preset run."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from benchmarks.tools import speed


def test_grid_dispatches_the_remaining_arguments(monkeypatch):
    seen = []
    module = types.ModuleType("benchmarks.tools.grid_speed")
    module.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "benchmarks.tools.grid_speed", module)
    monkeypatch.setattr(speed.importlib.util, "find_spec", lambda name: object())
    assert speed.main(["--grid", "--device", "cpu", "--json", "g.json"]) == 0
    assert seen == [["--device", "cpu", "--json", "g.json"]]


def test_grid_without_its_module_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(speed.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit, match="grid_speed.py is not in this checkout"):
        speed.main(["--grid"])


def test_flop_tally_counts_one_epoch_per_step_times_the_epochs(tmp_path):
    """FLOPs of a tiny run equal the analytic count of its matmuls: with 1 epoch and with 3 epochs per step the
    training FLOPs scale by exactly 3 (the first epoch is counted and multiplied), the rest does not move."""
    one = speed.run_preset("tiny", torch.device("cpu"), "fp32", store_dir=tmp_path, epochs=1)
    three = speed.run_preset("tiny", torch.device("cpu"), "fp32", store_dir=tmp_path, epochs=3)
    assert three["flops"]["train"] == 3 * one["flops"]["train"] > 0
    assert three["flops"]["val"] == 3 * one["flops"]["val"] > 0
    # step 0's batches: 16 train clips of the 2 first classes in batches of 8 (drop_last) -> 2 iterations;
    # the largest matmul is W_av over the T x P = 8 tokens of each clip: 2 * 8 * 16 * 16 FLOPs per clip forward,
    # the same again for its weight gradient
    assert one["flops"]["train"] >= 2 * 8 * (2 * 8 * 16 * 16) * 2
    assert one["ratio"] == pytest.approx(one["achieved_tflops"] / one["peak_tflops"])


def test_matmul_peak_is_a_positive_rate():
    assert speed.matmul_peak(torch.device("cpu"), "fp32", seconds=0.05) > 1e6


def test_compiled_attention_traces_in_one_graph_and_matches_eager():
    """The attention chain compiles without a graph break (dynamo with the eager backend: tracing only, fast on
    CPU) and gives the eager numbers; switching back restores eager."""
    from methods._avcil.model import AVCILNet, compiled_attention, use_compiled_attention

    torch.manual_seed(0)
    net = AVCILNet("audio-visual", 16, 16, 5)
    views = {"audio": torch.randn(3, 16), "visual": torch.randn(3, 2, 4, 16)}
    eager = net(views)
    try:
        use_compiled_attention(True, backend="eager", fullgraph=True)
        assert compiled_attention()
        compiled = net(views)
        compiled["logits"].sum().backward()
    finally:
        use_compiled_attention(False)
    assert not compiled_attention()
    for key in ("spatial_attention", "temporal_attention", "pooled_visual", "logits"):
        torch.testing.assert_close(compiled[key], eager[key], rtol=0, atol=0)
