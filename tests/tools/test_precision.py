"""bf16 autocast matches fp32 within the documented tolerances (CPU autocast here; CUDA on a GPU)."""

import pytest
import torch

from benchmarks.tools.precision import check, compare
from methods._avcil.model import MODALITIES


@pytest.mark.parametrize("modality", MODALITIES)
def test_bf16_matches_fp32(modality):
    report = compare(modality, audio_dim=32, grid=(4, 16, 32), batch=32, n_classes=7, device=torch.device("cpu"))
    assert check(report) == []


def test_check_flags_out_of_tolerance():
    assert check({"logits_rel": 0.5, "grad_cos": 0.5}) == [
        "logits_rel=0.5 (tolerance 0.05)",
        "grad_cos=0.5 (tolerance 0.98)",
    ]


@pytest.mark.parametrize("preset", ["tiny-rn", "tiny-vit"])
def test_mcil_towers_bf16_match_fp32(preset):
    from benchmarks.tools.precision import compare_mcil

    report = compare_mcil(preset, batch=8, device=torch.device("cpu"))
    assert check(report) == [], report
