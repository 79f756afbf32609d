"""The CIL-ML-Audio differentials (benchmarks/tools/differential/cil_ml_audio{,_run}.py).

Without a reference checkout: the project's own parts (key mapping, inputs, comparison plumbing, phase-file
rewriting, log parsing, table). With AVCIL_REFERENCE_CIL_ML_AUDIO=/path/to/CIL-ML-Audio: the reference's functions
against the harness's (every check must agree), and the whole-run patches applied to a copy of the checkout.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.tools.differential import cil_ml_audio as fn
from benchmarks.tools.differential import cil_ml_audio_run as whole
from benchmarks.tools.differential.patches import apply_patches
from datasets.adapters.audio_multilabel import format_record, parse_phase_file
from methods._cnn14.model import CNN14

REFERENCE = os.environ.get("AVCIL_REFERENCE_CIL_ML_AUDIO")
needs_reference = pytest.mark.skipif(
    not REFERENCE, reason="CI has no CIL-ML-Audio checkout; set AVCIL_REFERENCE_CIL_ML_AUDIO=PATH to run"
)


# ----------------------------------------------------------------------------- no reference needed
@pytest.mark.parametrize("norm", ["bn", "gn", "cn"])
def test_key_mapping_loads_a_reference_layout_state_strictly(norm):
    """The reference's layout (CN: the BN parameters directly on bnJ, no nested module) maps onto the harness's
    CNN14 keys one to one, so `load_state_dict(strict=True)` accepts it; values land where they should."""
    model = CNN14(30, widths=(32, 32, 32, 32, 32, 64), norm=norm)
    own = model.state_dict()
    reference_layout = {
        k.replace(".bn.", ".") if norm == "cn" else k: torch.randn_like(v.float())
        for k, v in own.items()
        if v.is_floating_point()
    }
    reference_layout |= {
        (k.replace(".bn.", ".") if norm == "cn" else k): v for k, v in own.items() if not v.is_floating_point()
    }
    mapped = fn.harness_state(reference_layout, norm)
    assert set(mapped) == set(own)
    model.load_state_dict(mapped, strict=True)
    key = "conv_block3.bn2.bn.running_var" if norm == "cn" else "conv_block3.bn2.weight"
    ref_key = "conv_block3.bn2.running_var" if norm == "cn" else key
    assert torch.equal(model.state_dict()[key], reference_layout[ref_key])
    renamed = fn.renamed_keys(reference_layout, norm)
    assert len(renamed) == (12 * 5 if norm == "cn" else 0)  # 12 CN layers x weight, bias, 2 stats, counter


def test_harness_key_leaves_non_block_keys_alone():
    assert fn.harness_key("bn0.running_mean", "cn") == "bn0.running_mean"  # bn0 is BatchNorm in every variant
    assert fn.harness_key("fc.weight", "cn") == "fc.weight"
    assert fn.harness_key("conv_block6.conv2.weight", "cn") == "conv_block6.conv2.weight"
    assert fn.harness_key("conv_block6.bn1.bias", "cn") == "conv_block6.bn1.bn.bias"
    assert fn.harness_key("conv_block6.bn1.bias", "gn") == "conv_block6.bn1.bias"


def test_inputs_hold_the_cases_the_checks_need():
    a, b = fn.make_inputs(0, frames=33), fn.make_inputs(0, frames=33)
    assert torch.equal(a["x"], b["x"]) and a["x"].shape == (4, 33, 64)  # deterministic from the seed
    y = a["metrics"]["y"]
    assert y.shape[1] == fn.METRIC_CLASSES and y[:, fn.EMPTY_CLASS].sum() == 0  # a class without positives
    assert y[:, [c for c in range(y.shape[1]) if c != fn.EMPTY_CLASS]].sum(0).min() > 0  # the others have some
    assert y[0].sum() > 0  # clip 0 is labelled: the reference's alias changes what it scores
    for phase, old, seen in fn.LOSS_PHASES:
        case = a["losses"][f"p{phase}"]
        assert case["y"].shape[1] == seen and case["y"][:, :old].sum() == 0 and case["y"][:, old:].sum() > 0
        assert case["teacher_logits"].shape[1] == max(old, 1)


def test_loss_checks_agree_with_themselves_and_flag_a_perturbed_value():
    inputs = fn.make_inputs(1, frames=33)
    harness = fn.harness_loss_values(inputs)
    checks = fn.loss_checks(harness, fn.harness_loss_values(inputs))
    assert checks and all(c.ok for c in checks)
    names = [c.name for c in checks]
    assert "phase 0: output KD (T=2, KLDivLoss mean)" not in names  # no distillation at phase 0
    assert "phase 4: feature distillation 1 - cos" in names and "phase 1: adaptive lambda" in names
    lam = [c for c in checks if c.name == "phase 1: adaptive lambda"]
    assert float(harness["loss_p1"]["factor"]) == pytest.approx(5 * 7**0.66)
    assert lam[0].max_abs_diff == 0
    bad = {k: dict(v) for k, v in harness.items()}
    bad["loss_p1"]["dist_loss"] = bad["loss_p1"]["dist_loss"] + 1e-3
    del bad["loss_p4"]["feat_loss"]  # a term the reference lacks: infinite difference, not silently skipped
    failed = {c.name for c in fn.loss_checks(bad, harness) if not c.ok}
    assert failed == {"phase 1: output KD (T=2, KLDivLoss mean)", "phase 4: feature distillation 1 - cos"}


def test_phase_file_written_in_the_reference_format_is_read_back(tmp_path):
    labels = fn.make_inputs(0, frames=33)["phase_labels"]
    paths = fn.write_phase_file(tmp_path / "train_phase_0.txt", labels)
    records, skipped = parse_phase_file(tmp_path / "train_phase_0.txt", width=30)
    assert not skipped and [r.path for r in records] == paths
    assert all(p.startswith(fn.REFERENCE_PATH_PREFIX) for p in paths)
    np.testing.assert_array_equal(np.stack([r.labels for r in records]), labels.numpy())


def test_reference_phase_files_are_absolute_with_a_distinct_sentinel(tmp_path):
    phases, folder = tmp_path / "phases", tmp_path / "synth"
    phases.mkdir()
    rows = np.eye(30)[:3]
    (phases / "train_phase_0.txt").write_text(
        "\n".join(format_record(f"wav/c{i}.wav", r) for i, r in enumerate(rows)) + "\n"
    )
    whole.reference_phase_files(phases, folder, tmp_path / "data_txt")
    text = (tmp_path / "data_txt" / "train_phase_0.txt").read_text()
    starts = [ln for ln in text.splitlines() if not ln[:1].isspace()]
    assert all(ln.startswith(f"{folder}/wav/") for ln in starts)
    assert len(set(starts)) == len(starts) == 4  # READ_DATA finds records with list.index: no repeated line
    records, _ = parse_phase_file(tmp_path / "data_txt" / "train_phase_0.txt", width=30)
    assert [r.path for r in records[:3]] == [f"{folder}/wav/c{i}.wav" for i in range(3)]
    assert records[3].path.endswith("never-read-sentinel.wav")
    np.testing.assert_array_equal(records[3].labels, rows[0])


def test_reference_log_parser_and_table():
    log = "noise\n" + "".join(
        whole.MARK + json.dumps({"phase": t, "mAP": 0.5 - 0.1 * t, "f1_micro": 0.4, "f1_macro": 0.3}) + "\n"
        for t in range(2)
    )
    phases = whole.parse_reference_log(log)
    assert [p["phase"] for p in phases] == [0, 1] and phases[1]["mAP"] == pytest.approx(0.4)
    ref = [{"phases": phases}, {"phases": [{**p, "mAP": p["mAP"] + 0.02} for p in phases]}]
    h = [{"phases": [{"mAP_binarized": 0.45, "micro_f1": 0.4, "macro_f1": 0.3}] * 2}] * 2
    md = whole.table(ref, {"ml_indl-bn": h}, ["# t"])
    # phase 0: reference 50.0 and 52.0 -> 51.0 ± 1.4; harness 45.0; difference -6.0
    assert "| 0 | 51.0 ± 1.4 | 45.0 ± 0.0 | -6.0 |" in md
    assert "| avg | 46.0 ± 1.4 | 45.0 ± 0.0 | -1.0 |" in md


def test_whole_run_patches_are_distinct_and_scaled():
    todo = whole.patches("/data/x/", 0.64, (4, 8, 16, 32, 64, 128), 0.0)
    olds = [(p.files, p.old) for p in todo]
    assert len(set(olds)) == len(olds)
    assert any("int(round(self.sample_rate * 0.64))" in p.new for p in todo)
    assert any(p.new == "nn.Linear(128, classes_num)" for p in todo)


# ----------------------------------------------------------------------------- with the reference
@needs_reference
def test_reference_functions_agree_with_the_harness(tmp_path):
    rc = fn.main(["--reference", REFERENCE, "--out", str(tmp_path), "--frames", "101"])
    report = json.loads((tmp_path / "cil_ml_audio.json").read_text())
    bad = [c for c in report["checks"] if not c["ok"]]
    assert not bad, "\n".join(f"{c['name']}: {c['max_abs_diff']} > {c['tolerance']} ({c['where']})" for c in bad)
    assert rc == 0
    names = [c["name"] for c in report["checks"]]
    for norm in ("bn", "gn", "cn"):
        assert f"CNN14-{norm} eval: logits" in names and f"CNN14-{norm} train: block-6 map z" in names
    strict = [c for c in report["checks"] if math.isfinite(c["tolerance"])]
    assert len(strict) >= 50 and (tmp_path / "cil_ml_audio.md").is_file()


@needs_reference
def test_whole_run_patches_apply_to_the_checkout(tmp_path):
    for part in ("main_audioset.py", "data", "models"):
        src = Path(REFERENCE) / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / part)
    notes = apply_patches(tmp_path, whole.patches("/data/x/", 0.64, (4, 8, 16, 32, 64, 128), 0.0))
    assert len(notes) == len(whole.patches("/data/x/", 0.64, (4, 8, 16, 32, 64, 128), 0.0))
    assert "p=0.2" not in (tmp_path / "models/cnn14_pann_lin.py").read_text()
    with pytest.raises(RuntimeError, match="not found"):  # applying twice: the old text is gone, said loudly
        apply_patches(tmp_path, whole.patches("/data/x/", 0.64, (4, 8, 16, 32, 64, 128), 0.0)[2:3])
