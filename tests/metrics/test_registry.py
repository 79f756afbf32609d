"""The metrics registry: one entry per metric, and the summaries the records store are exactly its entries.

Why this matters: the leaderboard prints `REGISTRY[key].formula` under every column, so a summary key that the code
stores without an entry (or an entry whose function is not the one that computed the value) would be a page that
describes something else than it shows.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.metrics import REGISTRY, accuracy, mcil, multilabel
from benchmarks.metrics.registry import Metric, build, evaluate

R3 = [[90.0], [60.0, 80.0], [50.0, 70.0, 85.0]]
A3 = accuracy.pooled_accuracy(R3, [10, 20, 30])


def phases():
    """Three phases of a tiny multi-label problem (2 base classes, then 1 more per phase)."""
    rng = np.random.default_rng(0)
    out = []
    for t in range(3):
        y = (rng.random((12, 2 + t)) > 0.5).astype(int)
        out.append(multilabel.phase_metrics(y, rng.random(y.shape), base=2))
    return out


def test_every_entry_has_a_name_a_formula_and_a_function():
    groups = (accuracy.METRICS, multilabel.PHASE_METRICS, multilabel.METRICS, mcil.METRICS)
    assert list(REGISTRY) == [m.key for group in groups for m in group]
    for key, m in REGISTRY.items():
        assert m.key == key and m.name.strip() and len(m.formula) > 10 and callable(m.compute), key
        assert m.per_phase is None or REGISTRY[m.per_phase].per_phase is None, key


def test_single_label_summary_is_the_registry_entries_in_order():
    s = accuracy.summarize(R3, A3)
    assert list(s) == [m.key for m in accuracy.METRICS]
    for m in accuracy.METRICS:
        direct = m.compute(*({"R": R3, "A": A3}[i] for i in m.inputs))
        assert s[m.key] == direct and REGISTRY[m.key] is m


def test_multilabel_summary_keys_come_from_the_registry():
    ph = phases()
    s = multilabel.summarize(ph)
    stored = [k for k in s if k not in ("curves", "fr", "ap_matrix")]
    assert stored == [m.key for m in multilabel.METRICS]
    for m in multilabel.METRICS:
        assert m.per_phase in REGISTRY and m.key == f"{m.key.split('_', 1)[0]}_{m.per_phase}"
        assert s[m.key] == m.compute(ph), m.key
    assert s["avg_mAP"] == multilabel.mean_defined([p["mAP"] for p in ph])
    assert s["final_mAP_binarized"] == ph[-1]["mAP_binarized"]
    assert REGISTRY["forgetting_macro_f1"].higher_is_better is False


def test_per_phase_entries_compute_the_stored_phase_values():
    rng = np.random.default_rng(1)
    y = (rng.random((20, 4)) > 0.5).astype(int)
    s = rng.random(y.shape)
    stored = multilabel.phase_metrics(y, s, base=2)
    for m in multilabel.PHASE_METRICS:
        assert stored[m.key] == pytest.approx(100.0 * m.compute(y, s)), m.key


def test_the_papers_map_is_labelled_apart_from_the_scores_map():
    assert REGISTRY["mAP"].name == "mAP (scores)"
    assert REGISTRY["mAP_binarized"].name == "mAP (thresholded, as the papers)"
    assert "thresholded predictions" in REGISTRY["mAP_binarized"].formula


def test_mcil_entries_name_their_functions():
    assert REGISTRY["mcil_m1"].compute is mcil.mcil_metric1 and REGISTRY["mcil_m2"].compute is mcil.mcil_metric2
    assert REGISTRY["continuum_forgetting"].compute(R3) == mcil.continuum_forgetting(R3)
    assert all(m.source for m in mcil.METRICS)  # they live in method_metrics, not results.metrics


def test_build_refuses_a_key_defined_twice():
    m = Metric("x", "X", "x = 1", lambda: 1)
    assert evaluate([m]) == {"x": 1}
    with pytest.raises(ValueError, match="defined twice"):
        build([m], [m])
