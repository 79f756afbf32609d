"""The single-label template's model selection: which epoch of several with the best val accuracy is kept."""

from __future__ import annotations

import pytest
import torch

from benchmarks.core.streams import build_stream
from methods import registry

#: hand-made val accuracies per epoch: the best (70) is reached at epochs 2 and 3 (counted from 1), then lower
VAL_ACCS = [50.0, 70.0, 70.0, 60.0]


def _select(toy_store, toy_protocol, monkeypatch, method: str, **over):
    """Train step 0 for len(VAL_ACCS) epochs with `evaluate_split` replaced by the hand-made sequence;
    returns (the epoch recorded as selected, the model state restored, the states after each epoch)."""
    stream = build_stream(toy_store, toy_protocol)
    spec = registry()[method]
    cfg = spec.config("toy", "audio", {"epochs": len(VAL_ACCS)})
    cfg.update(batch_size=8, eval_batch_size=16, memory=12, **over)
    s = spec.build(
        modality="audio", store=toy_store, stream=stream, cfg=cfg, device=torch.device("cpu"), seed=0, progress=False
    )
    accs, states = iter(VAL_ACCS), []

    def fake_val(split):
        assert split == "val"
        states.append({k: v.detach().clone() for k, v in s.model.state_dict().items()})
        return next(accs)

    monkeypatch.setattr(s, "evaluate_split", fake_val)
    s.train(next(iter(stream.benchmark.train_stream)), eval_streams=[])
    assert len(states) == len(VAL_ACCS)
    return s.history[-1], s.model.state_dict(), states


@pytest.mark.parametrize(
    "ties, epoch",
    [("first", 2), ("last", 3)],  # first: strictly greater (AV-CIL family); last: >= (CIGN train.py:248)
)
def test_selection_tie_rule(ties, epoch, toy_store, toy_protocol, monkeypatch):
    chosen, restored, states = _select(toy_store, toy_protocol, monkeypatch, "fine_tuning", selection_ties=ties)
    assert chosen == {"best_val_epoch": epoch, "val_acc": 70.0}
    for k, v in restored.items():  # the restored model is that epoch's state, not the other tied one
        torch.testing.assert_close(v, states[epoch - 1][k])
    other = 5 - epoch  # the other epoch with val 70
    assert any(not torch.equal(v, states[other - 1][k]) for k, v in restored.items())


def test_selection_tie_rule_defaults_per_method(toy_store, toy_protocol, monkeypatch):
    """The AV-CIL family keeps the first best epoch (`val_top1 > best_val_res` in every train_incremental_*.py);
    CIGN the last (`av_acc >= best_avacc`, stoneMo/CIGN train.py:248), from its config.yaml."""
    assert registry()["fine_tuning"].config("toy", "audio").get("selection_ties", "first") == "first"
    assert registry()["cign"].config("toy", "audio")["selection_ties"] == "last"
    chosen, _, _ = _select(toy_store, toy_protocol, monkeypatch, "cign")
    assert chosen["best_val_epoch"] == 3


def test_selection_tie_rule_rejects_unknown_values(toy_store, toy_protocol, monkeypatch):
    with pytest.raises(Exception, match="selection_ties"):
        _select(toy_store, toy_protocol, monkeypatch, "fine_tuning", selection_ties="middle")
