"""The CIGN differential (benchmarks.tools.differential.cign): its key mapping covers the harness's network one to one
and round-trips, its Gumbel-noise reconstruction is what the harness draws, the tie-rule side and the exit code do
what they say; and, when AVCIL_REFERENCE_CIGN names a checkout of stoneMo/CIGN, the end-to-end comparison."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from benchmarks.tools.differential import cign
from benchmarks.tools.differential.functional import Check
from datasets.errors import ConfigError

#: the reference's top-level module / parameter names (model.py:18-113) every translated key must fall under
REFERENCE_TOP = {
    "av_token",
    "av_token_1",
    "fc_cls",
    "imgnet",
    "img_proj",
    "audnet",
    "aud_proj",
    "fc_prob_a",
    "fc_prob_v",
}
REFERENCE_TOP |= {"audio_encoder", "visual_encoder"}


@pytest.fixture(scope="module")
def two_step_net():
    return cign.harness_model((2, 2), cign.EXPECTED, "hard", 0.0, seed=0)


def test_key_mapping_is_one_to_one_and_round_trips(two_step_net):
    state = two_step_net.state_dict()
    ref = cign.reference_state(state)
    assert sum(v.numel() for v in ref.values()) == sum(v.numel() for v in state.values())
    assert {k.split(".")[0] for k in ref} == REFERENCE_TOP
    back = cign.harness_state(ref, state)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
    # the cross-attention's fused kv is split in order (k first); the self-attention's qkv stays fused, as there
    kv = state["branch.audio.grouping.pre_assign.attn.kv.weight"]
    k, v = (ref[f"audio_encoder.grouping.pre_assign_attn.attn.{p}_proj.weight"] for p in "kv")
    assert torch.equal(k, kv[: cign.DIM]) and torch.equal(v, kv[cign.DIM :])
    assert torch.equal(ref["visual_encoder.blocks.0.attn.qkv.weight"], state["branch.visual.blocks.0.attn.qkv.weight"])
    assert torch.equal(ref["av_token_1"], state["tokens.1"])
    assert torch.equal(ref["fc_prob_v.bias"], state["branch.visual.head.bias"])


def test_resnet_body_indices_are_torchvision_children(two_step_net):
    """body.i of the harness's encoders is torchvision ResNet-18's i-th child (conv1, bn1, relu, maxpool, layer1..4)."""
    from torchvision.models import resnet18

    tv = dict(resnet18(weights=None).named_children())
    children = cign.resnet_children()
    body = two_step_net.encoders["visual"].body
    for i, mod in enumerate(body):
        ours = {k: v.shape for k, v in mod.state_dict().items()}
        assert ours == {k: v.shape for k, v in tv[children[i]].state_dict().items()}, children[i]
    ref = cign.reference_state(two_step_net.state_dict(), children)
    assert ref["imgnet.layer4.1.bn2.running_var"].shape == (512,)
    assert ref["audnet.conv1.weight"].shape == (64, 1, 7, 7)  # the reference's 1-channel audio conv1 (model.py:26)


def test_gumbel_noise_is_what_the_harness_draws():
    """The noise handed to the reference is the harness's own: its train-mode hard assignment is the one-hot argmax
    of the assignment logits plus that noise (a changed F.gumbel_softmax draw would break this)."""
    from methods.cign.model import CIGNNet

    torch.manual_seed(0)
    net = CIGNNet("audio-visual", "features", 5, dim=16, depth=1, heads=2, drop_path=0.0, audio_dim=8, visual_dim=8)
    views = {"audio": torch.randn(3, 8), "visual": torch.randn(3, 2, 6, 8)}
    net.train()
    torch.manual_seed(cign.GUMBEL_SEED)
    out = net(views)
    noise = cign.gumbel_noise(out, net.branches)
    for m in net.branches:
        drawn = F.one_hot((out[f"{m}_assign_logits"] + noise[m]).argmax(1), 5).transpose(1, 2).float()
        assert torch.equal(out[f"{m}_assign"].detach(), drawn)
    other = cign.gumbel_noise(out, net.branches[::-1])  # the draw order matters: the audio draw comes first
    assert not torch.equal(other["audio"], noise["audio"])


def test_harness_tie_rule_keeps_the_last_best_epoch():
    assert cign.harness_selection([0.5, 0.8, 0.8, 0.7]) == 2
    assert cign.harness_selection([0.9, 0.8, 0.9, 0.9, 0.2]) == 3
    assert cign.harness_selection([0.1, 0.2, 0.3]) == 2


def test_deviation_rows_never_fail_and_expected_rows_do():
    exact, off = torch.zeros(3), torch.tensor([0.0, 0.5, 0.0])
    assert cign.coupling_check("x", exact, off, 1e-5, "w", True, "eval-1step").ok is False
    dev = cign.coupling_check("x", exact, off, 1e-5, "w", False, "eval-2steps")
    assert dev.ok and dev.max_abs_diff == 0.5 and "deviation 7" in dev.note and "per step" in dev.note
    grads = {"a": torch.ones(2), "b": torch.zeros(2)}
    assert cign.tensors_check(
        "g", grads, {**grads, "b": torch.full((2,), 1e-3)}, 1e-5, True
    ).max_abs_diff == pytest.approx(1e-3)
    assert not cign.tensors_check("g", grads, {"a": torch.ones(2)}, 1e-5, True).ok  # a missing key is a failure


@pytest.mark.parametrize("failing_expected", [False, True])
def test_exit_code_counts_only_expected_checks(tmp_path, monkeypatch, failing_expected):
    (tmp_path / "ref").mkdir()
    for name in ("grouping.py", "model.py"):
        (tmp_path / "ref" / name).write_text("")
    checks = [Check("deviation row", 0.7, float("inf"), "w", "deviation 7"), Check("exact row", 0.0, 1e-5, "w")]
    if failing_expected:
        checks.append(Check("broken row", 1e-3, 1e-5, "w"))
    monkeypatch.setattr(cign, "run", lambda *a, **k: (checks, {"seconds": 1.0, "filled": {"eval-1step": 42}}))
    rc = cign.main(["--reference", str(tmp_path / "ref"), "--out", str(tmp_path / "out")])
    assert rc == (1 if failing_expected else 0)
    payload = json.loads((tmp_path / "out" / "cign.json").read_text())
    assert [c["ok"] for c in payload["checks"]] == [True, True] + ([False] if failing_expected else [])
    assert ("**NO**" in (tmp_path / "out" / "cign.md").read_text()) == failing_expected


def test_main_refuses_a_folder_that_is_not_the_reference(tmp_path):
    with pytest.raises(ConfigError, match="stoneMo/CIGN"):
        cign.main(["--reference", str(tmp_path), "--out", str(tmp_path / "out")])


@pytest.mark.skipif(
    not os.environ.get("AVCIL_REFERENCE_CIGN"), reason="CI has no CIGN checkout; set AVCIL_REFERENCE_CIGN=PATH to run"
)
def test_end_to_end_against_the_reference(tmp_path):
    """The reference's own classes on the harness's state and inputs. Its interpreter needs einops and timm:
    AVCIL_REFERENCE_CIGN_PYTHON names one (default: this one)."""
    python = os.environ.get("AVCIL_REFERENCE_CIGN_PYTHON", sys.executable)
    rc = cign.main(["--reference", os.environ["AVCIL_REFERENCE_CIGN"], "--out", str(tmp_path), "--python", python])
    checks = json.loads((tmp_path / "cign.json").read_text())["checks"]
    bad = [c["name"] for c in checks if not c["ok"]]
    assert rc == 0 and not bad, bad
    by_name = {c["name"]: c for c in checks}
    exact = [c for c in checks if c["name"].startswith(cign.EXPECTED)]
    assert len(exact) >= 50 and all(c["tolerance"] <= 1e-5 for c in exact)
    assert by_name["cign-refcoupling, train iteration (hard): loss total"]["max_abs_diff"] <= 1e-5
    assert by_name["model selection: epoch kept, ties (>= then ==)"]["max_abs_diff"] == 0
    # the default coupling is measurably different (README deviation 7): the mask changes the grouped features
    assert by_name["cign, eval-1step: audio grouped features"]["max_abs_diff"] > 1e-2
