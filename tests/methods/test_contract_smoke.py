"""Every method x modality trains on a tiny stream; method-specific behaviour is checked directly."""

import pytest
import torch

from benchmarks.core.streams import build_stream
from benchmarks.core.template import IndexBatches
from methods import registry


def make_strategy(name, modality, store, stream, **cfg_overrides):
    spec = registry()[name]
    cfg = spec.config("toy", modality, {"epochs": cfg_overrides.pop("epochs", 3)})
    cfg.update(batch_size=8, eval_batch_size=16, memory=12, **cfg_overrides)
    return spec.build(
        modality=modality, store=store, stream=stream, cfg=cfg, device=torch.device("cpu"), seed=0, progress=False
    )


FEATURE_CELLS = [
    (n, m)
    for n, s in sorted(registry().items())
    for m in s.modalities
    if set(s.required_views(m, s.config("toy", m))) <= {"audio", "visual"}
]  # raw-media methods: own tests


@pytest.mark.parametrize("name,modality", FEATURE_CELLS)
def test_every_method_and_modality_trains(name, modality, toy_store, toy_protocol):
    stream = build_stream(toy_store, toy_protocol)
    s = make_strategy(name, modality, toy_store, stream)
    for t, exp in enumerate(stream.benchmark.train_stream):
        s.train(exp, eval_streams=[])
        pred, targets = s.predict_split("test")
        assert len(pred) == len(targets) == 8 * (t + 1)
        assert pred.max() < toy_protocol.seen_classes(t)
        assert s.model.num_classes == toy_protocol.seen_classes(t)
    assert len(s.history) == 3 and all(h["best_val_epoch"] >= 1 for h in s.history)


def test_train_rows_per_method(toy_store, toy_protocol):
    stream = build_stream(toy_store, toy_protocol)
    seen = {}
    for name in ("fine_tuning", "lwf", "upper_bound", "icarl-fc"):
        s = make_strategy(name, "audio", toy_store, stream, epochs=1)
        sizes = []
        for exp in stream.benchmark.train_stream:
            s.train(exp, eval_streams=[])
            sizes.append(len(s.train_rows))
        seen[name] = sizes
    assert seen["fine_tuning"] == seen["lwf"] == [24, 24, 24]
    assert seen["upper_bound"] == [24, 48, 72]
    # iCaRL: new rows + exemplars; memory 12 over 2 then 4 seen classes -> 6 then 3 per class
    assert seen["icarl-fc"] == [24, 24 + 12, 24 + 12]


def test_icarl_memory_holds_rows_of_the_right_classes(toy_store, toy_protocol):
    stream = build_stream(toy_store, toy_protocol)
    s = make_strategy("icarl-nme", "audio-visual", toy_store, stream, epochs=2)
    for exp in stream.benchmark.train_stream:
        s.train(exp, eval_streams=[])
    assert sorted(s.memory) == list(range(6))
    for c, rows in s.memory.items():
        assert len(rows) == 12 // 6 and len(set(rows.tolist())) == len(rows)
        assert (toy_store.labels[rows.numpy()] == toy_protocol.class_order[c]).all()
        assert (toy_store.splits[rows.numpy()] == 0).all()  # exemplars come from the train split only


def test_icarl_distillation_switch(toy_store, toy_protocol, monkeypatch):
    # Default single-sigmoid (the fix); `reference` (the double sigmoid) is the form the loss calls, from step 1 on
    # (no distillation at step 0). A bad value fails at construction.
    from methods._avcil import losses

    assert registry()["icarl-fc"].config("ave", "audio-visual", {})["distillation"] == "single-sigmoid"
    assert registry()["icarl-nme"].config("ave", "audio-visual", {})["distillation"] == "single-sigmoid"
    stream = build_stream(toy_store, toy_protocol)
    with pytest.raises(ValueError, match="reference"):
        make_strategy("icarl-fc", "audio", toy_store, stream, distillation="double")
    for form in ("single-sigmoid", "reference"):
        calls = {"single-sigmoid": [], "reference": []}
        for name, fn in list(losses.ICARL_DISTILLATIONS.items()):
            monkeypatch.setitem(
                losses.ICARL_DISTILLATIONS, name, lambda z, o, n=name, f=fn, c=calls: c[n].append(1) or f(z, o)
            )
        s = make_strategy("icarl-fc", "audio", toy_store, stream, epochs=1, distillation=form)
        exps = list(stream.benchmark.train_stream)
        s.train(exps[0], eval_streams=[])
        assert calls == {"single-sigmoid": [], "reference": []}
        s.train(exps[1], eval_streams=[])
        other = "reference" if form == "single-sigmoid" else "single-sigmoid"
        assert calls[form] and not calls[other]
        monkeypatch.undo()


def test_upper_bound_starts_from_a_fresh_model(toy_store, toy_protocol):
    stream = build_stream(toy_store, toy_protocol)
    s = make_strategy("upper_bound", "audio", toy_store, stream, epochs=1)
    exps = list(stream.benchmark.train_stream)
    s.train(exps[0], eval_streams=[])
    first = s.model
    s.train(exps[1], eval_streams=[])
    assert s.model is not first and s.old_model is None


def test_lwf_uses_the_previous_model_as_frozen_teacher(toy_store, toy_protocol):
    stream = build_stream(toy_store, toy_protocol)
    s = make_strategy("lwf", "visual", toy_store, stream, epochs=2)
    exps = list(stream.benchmark.train_stream)
    s.train(exps[0], eval_streams=[])
    after0 = {k: v.clone() for k, v in s.model.state_dict().items()}
    s.train(exps[1], eval_streams=[])
    assert s.old_model.num_classes == 2
    for k, v in s.old_model.state_dict().items():
        torch.testing.assert_close(v, after0[k])
    assert not any(p.requires_grad for p in s.old_model.parameters())


def test_index_batches_are_tensors_and_cover_the_data():
    rows, targets = torch.arange(10, 30), torch.arange(20) % 3
    batches = IndexBatches(
        rows, targets, 8, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0), device="cpu"
    )
    got = list(batches)
    assert len(got) == 2 and all(b[0].shape == (8,) for b in got)
    allb = list(
        IndexBatches(rows, targets, 8, shuffle=False, drop_last=False, generator=torch.Generator(), device="cpu")
    )
    assert torch.cat([b[0] for b in allb]).tolist() == rows.tolist()
    # fewer samples than one batch: one batch of all, never zero batches
    assert len(list(IndexBatches(rows[:5], targets[:5], 8, True, True, torch.Generator(), "cpu"))) == 1


def test_best_val_state_is_restored(toy_store, toy_protocol):
    stream = build_stream(toy_store, toy_protocol)
    s = make_strategy("fine_tuning", "audio", toy_store, stream, epochs=6)
    s.train(next(iter(stream.benchmark.train_stream)), eval_streams=[])
    assert s.evaluate_split("val") == pytest.approx(s.history[0]["val_acc"])


def test_separate_exemplar_batches_cycle_the_first_pass():
    g = torch.Generator().manual_seed(0)
    ex = IndexBatches(
        torch.arange(100, 110), torch.zeros(10, dtype=torch.long), 4, True, True, g, "cpu"
    )  # 2 batches per pass
    cur = IndexBatches(torch.arange(20), torch.ones(20, dtype=torch.long), 4, True, True, g, "cpu", exemplars=ex)
    batches = list(cur)
    assert len(batches) == 5  # the epoch length is the current loader's
    for rows, targets, _task, is_ex in batches:
        assert rows.shape == (8,) and is_ex.tolist() == [False] * 4 + [True] * 4
        assert (rows[is_ex] >= 100).all() and (targets[is_ex] == 0).all() and (targets[~is_ex] == 1).all()
    ex_batches = [b[0][b[3]].tolist() for b in batches]
    assert (
        ex_batches[2] == ex_batches[0] and ex_batches[3] == ex_batches[1]
    )  # replayed, not reshuffled, within an epoch
