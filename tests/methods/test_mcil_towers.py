"""MCIL-AudioCLIP towers: ESResNeXt-fbsp port, open_clip towers with MoE hooks, offline weight loading.

The AudioCLIP key layout (RN50 CLIP + ESResNeXt-fbsp audio tower) is the committed manifest
`fixtures/audioclip_state_dict_layout.json`: the (key, shape) pairs of the state dict of the public
reference class `model.audioclip.AudioCLIP` (AndreyGuzhov/AudioCLIP; its header says how it was derived).
The OpenAI ViT-B/16 layout is written out here from `model/clip/model.py` (= OpenAI CLIP). Both are
independent of the implementation and compared with the models' state dicts. Fake checkpoint files use
the real layouts: a TorchScript archive with OpenAI CLIP names, AudioCLIP-style plain state dicts.
"""

from __future__ import annotations

import copy
import json
import logging
import socket
from pathlib import Path

import pytest
import torch
from torch import nn

from datasets.errors import ConfigError, WeightsError
from datasets.weights import OPENAI_EXTRA_KEYS, is_torchscript_archive
from methods.mcil_audioclip import esresnext as esx
from methods.mcil_audioclip import towers as tw
from methods.mcil_audioclip import weights as wt


# ---- helpers -----------------------------------------------------------------------------------------
class RecordingMoE(nn.Module):
    """Stand-in MoE: a linear map of the tokens (zero-initialised unless `std` > 0) that records its inputs."""

    def __init__(self, d_model: int, std: float = 0.0):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)
        with torch.no_grad():
            self.proj.weight.normal_(std=std) if std > 0 else self.proj.weight.zero_()
            self.proj.bias.zero_()
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, router_input):
        assert x.dim() == 3 and router_input.shape == (x.shape[0], x.shape[2])
        self.seen.append((x.detach().clone(), router_input.detach().clone()))
        return self.proj(x)


def zero_factory(d):
    return RecordingMoE(d)


def random_factory(d):
    return RecordingMoE(d, std=0.05)


def non_moe_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.state_dict().items() if ".moe." not in f".{k}"}


def shapes(sd: dict) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def _ln(exp, name, d):
    exp[f"{name}.weight"] = (d,)
    exp[f"{name}.bias"] = (d,)


MANIFEST = Path(__file__).parent / "fixtures" / "audioclip_state_dict_layout.json"


def audioclip_layout() -> dict[str, tuple]:
    """The reference AudioCLIP state dict's {key: shape}, in its state_dict() order (the manifest)."""
    data = json.loads(MANIFEST.read_text())
    assert data["header"]["class"] == "model.audioclip.AudioCLIP" and data["header"]["entries"] == len(data["layout"])
    return {key: tuple(shape) for key, shape in data["layout"]}


def audioclip_parts() -> tuple[dict[str, tuple], dict[str, tuple]]:
    """(CLIP part, audio part without the `audio.` prefix) of the manifest; the two AudioCLIP logit
    scales belong to neither tower."""
    layout = audioclip_layout()
    clip = {k: v for k, v in layout.items() if not k.startswith("audio.") and k not in wt.AUDIOCLIP_SCALE_KEYS}
    audio = {k[len("audio.") :]: v for k, v in layout.items() if k.startswith("audio.")}
    return clip, audio


def random_state(layout: dict[str, tuple], seed: int) -> dict[str, torch.Tensor]:
    """Random tensors of the layout's shapes (BN counters as int64, as torch saves them)."""
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randint(0, 1000, shape, generator=g)
        if k.endswith("num_batches_tracked")
        else torch.randn(shape, generator=g)
        for k, shape in layout.items()
    }


def expected_openai_clip_layout(embed, vision, text=None):
    """OpenAI CLIP ViT state-dict names and shapes (AudioCLIP model/clip/model.py = openai/CLIP model.py)."""
    text = text or dict(context_length=77, vocab_size=49408, width=512, layers=12)
    exp = {}

    def resblock(p, d):
        exp[f"{p}.attn.in_proj_weight"], exp[f"{p}.attn.in_proj_bias"] = (3 * d, d), (3 * d,)
        exp[f"{p}.attn.out_proj.weight"], exp[f"{p}.attn.out_proj.bias"] = (d, d), (d,)
        _ln(exp, f"{p}.ln_1", d)
        exp[f"{p}.mlp.c_fc.weight"], exp[f"{p}.mlp.c_fc.bias"] = (4 * d, d), (4 * d,)
        exp[f"{p}.mlp.c_proj.weight"], exp[f"{p}.mlp.c_proj.bias"] = (d, 4 * d), (d,)
        _ln(exp, f"{p}.ln_2", d)

    w_t = text["width"]
    exp["positional_embedding"] = (text["context_length"], w_t)
    exp["text_projection"] = (w_t, embed)
    exp["logit_scale"] = ()
    exp["token_embedding.weight"] = (text["vocab_size"], w_t)
    _ln(exp, "ln_final", w_t)
    for i in range(text["layers"]):
        resblock(f"transformer.resblocks.{i}", w_t)
    s, w, p = vision["image_size"], vision["width"], vision["patch_size"]
    exp["visual.class_embedding"] = (w,)
    exp["visual.positional_embedding"] = ((s // p) ** 2 + 1, w)
    exp["visual.proj"] = (w, embed)
    exp["visual.conv1.weight"] = (w, 3, p, p)
    _ln(exp, "visual.ln_pre", w)
    _ln(exp, "visual.ln_post", w)
    for i in range(vision["layers"]):
        resblock(f"visual.transformer.resblocks.{i}", w)
    return exp


class _Holder(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def save_torchscript_state(sd: dict, path) -> None:
    """A TorchScript archive whose state_dict() is `sd` (tensors nested in modules named by the keys)."""
    root = _Holder()
    for key, value in sd.items():
        *parts, leaf = key.split(".")
        mod = root
        for p in parts:
            if p not in mod._modules:
                mod.add_module(p, nn.Module())
            mod = mod._modules[p]
        if value.is_floating_point():
            mod.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=False))
        else:
            mod.register_buffer(leaf, value.clone())
    torch.jit.save(torch.jit.script(root), str(path))


def openai_style_state(clip: nn.Module, image_size: int) -> dict:
    """The CLIP tensors as an OpenAI file holds them: matrices/convs in fp16, plus the three int entries."""
    sd = {k: (v.half() if v.dim() >= 2 else v.clone()) for k, v in non_moe_state(clip).items()}
    sd["input_resolution"] = torch.tensor(image_size)
    sd["context_length"] = torch.tensor(77)
    sd["vocab_size"] = torch.tensor(49408)
    return sd


_UNPICKLED = []


class _Payload:
    """An arbitrary object; unpickling it would record itself in _UNPICKLED."""

    def __init__(self):
        self.note = "pickled"

    def __setstate__(self, state):
        _UNPICKLED.append(state)


# ---- shapes, presets --------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["tiny-rn", "tiny-vit"])
def test_tiny_preset_shapes(preset):
    torch.manual_seed(0)
    towers = tw.build_towers(preset, zero_factory).eval()
    assert (towers.embed_dim, towers.audio_dim, towers.image_size) == (64, 64, 64)
    tokens = towers.tokenize(["a photo of a dog.", "a bad photo of a {}.".format("violin")])
    assert tokens.shape == (2, 77) and tokens.dtype == torch.long
    with torch.no_grad():
        assert towers.encode_image(torch.randn(3, 3, 64, 64)).shape == (3, 64)
        assert towers.encode_text(tokens).shape == (2, 64)
        audio = towers.encode_audio(torch.randn(2, 16000) * 3000)
    assert audio.shape == (2, 64) and torch.isfinite(audio).all()


def test_tokenizer_is_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the tokenizer tried the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    tw._tokenizer.cache_clear()
    towers = tw.build_towers("tiny-vit")
    tok = towers.tokenizer
    ids = towers.tokenize("a photo of a cat")
    assert ids[0, 0] == tok.sot_token_id and tok.eot_token_id in ids[0].tolist() and tok.vocab_size == 49408


@pytest.mark.parametrize("preset", ["clip-vit-b16", "audioclip-rn50"])
def test_full_presets_match_openai_and_audioclip_layouts(preset):
    with torch.device("meta"):
        towers = tw.build_towers(preset, zero_factory)
    clip_layout, audio_layout = audioclip_parts()
    if preset == "clip-vit-b16":
        clip_layout = expected_openai_clip_layout(512, dict(width=768, layers=12, patch_size=16, image_size=224))
    embed = 512 if preset == "clip-vit-b16" else 1024
    assert shapes(non_moe_state(towers.clip)) == clip_layout
    assert list(shapes(towers.audio.state_dict()).items()) == list(audio_layout.items())  # names, shapes, order
    assert (towers.embed_dim, towers.audio_dim, towers.image_size) == (embed, 1024, 224)
    n_blocks = 24 if preset == "clip-vit-b16" else 12 + 4
    assert towers.n_moe == n_blocks
    summary = wt.describe_clip_state(towers.clip.state_dict())
    want = (
        "ViT(width=768, layers=12, patch=16) @ 224px"
        if preset == "clip-vit-b16"
        else "ModifiedResNet(layers=(3, 4, 6, 3), width=64) @ 224px"
    )
    assert summary == f"{want}, text 12x512 (ctx 77, vocab 49408), embed_dim {embed}"
    blocks = tw._transformer_blocks(towers.clip)
    assert blocks and all(b.attn.batch_first for b in blocks)  # open_clip 3.x: (B, L, D)
    assert all(type(b.mlp.gelu).__name__ == "QuickGELU" for b in blocks)  # OpenAI weights need QuickGELU


def test_esresnext_full_layout_matches_reference_and_torchvision():
    import torchvision

    model = esx.esresnext("full")
    got = shapes(model.state_dict())
    _, expected = audioclip_parts()
    assert list(got.items()) == list(expected.items())  # same names, shapes and registration order as the reference
    # AudioCLIP's LinearFBSP(bias=False) registers `bias` as Parameter(None): an empty (0,) tensor in every checkpoint
    assert expected["fbsp.bias"] == (0,) and model.fbsp.bias.shape == (0,)
    with torch.device("meta"):
        tv = torchvision.models.resnext50_32x4d(weights=None)
    tv_shapes = {k: v for k, v in shapes(tv.state_dict()).items() if not k.startswith("fc.")}
    backbone = {k: v for k, v in got.items() if not k.startswith(("att", "fbsp.", "fc.", "window"))}
    assert backbone == tv_shapes
    assert model.fbsp.m.abs().sum() == 0 and torch.equal(model.fbsp.fc, torch.arange(1025.0))


# ---- MoE injection ----------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["tiny-rn", "tiny-vit"])
def test_zero_moe_is_bit_exact_and_nonzero_moe_changes_outputs(preset):
    torch.manual_seed(1)
    base = tw.build_clip(tw.PRESETS[preset]).eval()
    zero = copy.deepcopy(base)
    assert tw.inject_moe(zero, zero_factory) == (2 + 4 if preset == "tiny-rn" else 2 + 2)
    nonzero = copy.deepcopy(base)
    tw.inject_moe(nonzero, random_factory)
    img = torch.randn(2, 3, 64, 64)
    tok = tw.build_towers(preset).tokenize(["a dog barking", "rain on a roof"])
    with torch.no_grad():
        ref_i, ref_t = base.encode_image(img), base.encode_text(tok)
        assert torch.equal(zero.encode_image(img), ref_i)
        assert torch.equal(zero.encode_text(tok), ref_t)
        assert not torch.allclose(nonzero.encode_image(img), ref_i)
        assert not torch.allclose(nonzero.encode_text(tok), ref_t)
    # MoE parameters are exactly the ones named `.moe.`
    moe_ids = {id(p) for m in nonzero.modules() if isinstance(m, RecordingMoE) for p in m.parameters()}
    named = {n: id(p) for n, p in nonzero.named_parameters()}
    assert {n for n, i in named.items() if i in moe_ids} == set(tw.moe_parameter_names(nonzero))
    assert len(tw.moe_parameter_names(nonzero)) == len(moe_ids) > 0
    assert not tw.moe_parameter_names(base)
    # the OpenAI key names of the non-MoE parameters are unchanged by the injection
    assert shapes(non_moe_state(nonzero)) == shapes(base.state_dict())


def test_router_input_is_the_first_token_of_the_post_attention_stream():
    torch.manual_seed(2)
    clip = tw.build_clip(tw.PRESETS["tiny-vit"]).eval()
    tw.inject_moe(clip, zero_factory)
    img = torch.randn(2, 3, 64, 64)
    tok = tw.build_towers("tiny-vit").tokenize(["a dog barking", "an orchestra tuning up before a concert"])
    captured = {}
    vblock, tblock = clip.visual.transformer.resblocks[0], clip.transformer.resblocks[0]
    hooks = [
        b.register_forward_pre_hook(lambda m, args, kw, key=key: captured.__setitem__(key, args[0]), with_kwargs=True)
        for key, b in (("v", vblock), ("t", tblock))
    ]
    with torch.no_grad():
        clip.encode_image(img)
        clip.encode_text(tok)
        for key, block, mask in (("v", vblock, None), ("t", tblock, clip.attn_mask)):
            q = captured[key]
            expected = q + block.ls_1(block.attention(q_x=block.ln_1(q), attn_mask=mask))
            x, router = block.moe.seen[-1]
            assert x.shape == q.shape and torch.allclose(x, expected, atol=1e-6)
            assert torch.equal(router, x[:, 0])
    for h in hooks:
        h.remove()
    # [CLS] is token 0 of the image stream; the text router sees <sot>, identical for every prompt (causal mask)
    for block in clip.transformer.resblocks:
        _, router = block.moe.seen[-1]
        assert torch.allclose(router[0], router[1], atol=1e-6)
    # RN stages: tokens (B, HW, C), router = mean over tokens
    rn = tw.build_clip(tw.PRESETS["tiny-rn"]).eval()
    tw.inject_moe(rn, zero_factory)
    with torch.no_grad():
        rn.encode_image(img)
    widths = []
    for moe in rn.visual.moe:
        x, router = moe.seen[-1]
        widths.append(x.shape[-1])
        assert torch.allclose(router, x.mean(1), atol=1e-6)
    assert widths == [32, 64, 128, 256]


# ---- ESResNeXt-fbsp ---------------------------------------------------------------------------------
def test_blackman_harris_window_equals_scipy():
    signal = pytest.importorskip("scipy.signal")
    import numpy as np

    ref = signal.get_window("blackmanharris", 1654, fftbins=True)
    ours = esx.blackman_harris(1654, dtype=torch.float64).numpy()
    assert np.allclose(ours, ref, rtol=0, atol=1e-13)
    ref32 = torch.from_numpy(ref).to(torch.float32)  # the reference's buffer dtype
    assert (esx.blackman_harris(1654) - ref32).abs().max() <= 6e-8
    assert torch.allclose(esx.esresnext("full").window, ref32, atol=6e-8)


def test_fbsp_front_end_finite_deterministic_and_shapes():
    torch.manual_seed(3)
    tiny = esx.esresnext("tiny").eval()
    x = torch.randn(3, 16000) * 5000
    with torch.no_grad():
        a, b = tiny.log_power_bands(x), tiny.log_power_bands(x)
        silence = tiny.log_power_bands(torch.zeros(1, 16000))
    assert a.shape == (3, 1, 3, 43, 124)  # 129 bins -> 3 bands of 43; 1 + ceil((16000 - 256) / 128) frames
    assert torch.isfinite(a).all() and torch.isfinite(silence).all() and torch.equal(a, b)
    full = esx.esresnext("full").eval()
    with torch.no_grad():
        spec = full.log_power_bands(torch.randn(1, 2, 220500) * 3000)
    assert spec.shape == (1, 2, 3, 341, 392) and torch.isfinite(spec).all()


def test_esresnext_channels_summed_after_pooling_and_fbsp_gradients():
    torch.manual_seed(4)
    model = esx.esresnext("tiny").eval()
    x = torch.randn(2, 16000) * 3000
    with torch.no_grad():
        one = model.features(x)
        two = model.features(torch.stack((x, x), dim=1))
        out = model(torch.stack((x, x), dim=1))
    assert torch.allclose(two, 2 * one, rtol=1e-5, atol=1e-5)
    assert torch.allclose(out, model.fc(two), atol=1e-6)
    model.train()
    model(x).pow(2).mean().backward()
    for p in (model.fbsp.m, model.fbsp.fb, model.fbsp.fc):
        assert torch.isfinite(p.grad).all() and p.grad.abs().max() <= 1.0 + 1e-5  # inf-norm normalised
    assert model.conv1.weight.grad is not None and torch.isfinite(model.fbsp_norm_loss())


def test_torchvision_resnext_init(tmp_path):
    import torchvision

    # a torchvision ResNeXt of reduced depth with the same naming; the ESResNeXt scaled to match
    tv = torchvision.models.resnet.ResNet(
        torchvision.models.resnet.Bottleneck, [1, 1, 1, 1], groups=4, width_per_group=16
    )
    path = tmp_path / "resnext.pth"
    torch.save(tv.state_dict(), path)
    model = esx.ESResNeXtFBSP(
        layers=(1, 1, 1, 1), groups=4, width_per_group=16, num_classes=64, n_fft=256, hop_length=128, win_length=256
    )
    report = wt.load_torchvision_resnext(model, path)
    assert report["skipped"] == ["fc.bias", "fc.weight"] and report["unexpected"] == []
    assert torch.equal(model.layer3[0].conv2.weight, tv.layer3[0].conv2.weight)
    assert torch.equal(model.bn1.running_var, tv.bn1.running_var)
    assert all(torch.all(a.bn.weight == 1) and torch.all(a.bn.bias == 1) for a in model.attention_blocks())
    assert {k.split(".")[0] for k in report["missing"]} == {
        "window",
        "att1",
        "att2",
        "att3",
        "att4",
        "att5",
        "fc",
        "fbsp",
    }
    assert len(report["sha256"]) == 16 and report["loaded"] == len(tv.state_dict()) - 2
    plain = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 1, 1, 1])  # not grouped
    torch.save(plain.state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(WeightsError, match="conv2.weight.*--resnext-imagenet-ckpt"):
        wt.load_torchvision_resnext(model, tmp_path / "resnet.pth")


# ---- weight loading ---------------------------------------------------------------------------------
def test_load_openai_torchscript_archive(tmp_path):
    torch.manual_seed(5)
    source = tw.build_clip(tw.PRESETS["tiny-vit"])
    sd = openai_style_state(source, 64)
    path = tmp_path / "ViT-tiny.pt"
    save_torchscript_state(sd, path)
    assert is_torchscript_archive(path)
    towers = tw.build_towers("tiny-vit", zero_factory)
    report = wt.load_openai_clip(towers, path)
    assert report["file"] == str(path) and len(report["sha256"]) == 16 and report["unexpected"] == []
    assert report["missing"] == sorted(tw.moe_parameter_names(towers.clip))
    assert report["loaded"] == len(sd) - 3
    own = towers.clip.state_dict()
    for k, v in sd.items():
        if k not in OPENAI_EXTRA_KEYS:
            assert own[k].dtype == torch.float32 or not own[k].is_floating_point()
            assert torch.equal(own[k], v.to(own[k].dtype)), k
    # a plain state-dict file of the same tensors loads the same way
    torch.save({k: v for k, v in sd.items()}, tmp_path / "plain.pt")
    assert (
        wt.load_openai_clip(tw.build_towers("tiny-vit", zero_factory), tmp_path / "plain.pt")["loaded"] == len(sd) - 3
    )


def test_load_audioclip_plain_state_dict_splits_keys(tmp_path):
    torch.manual_seed(6)
    source = tw.build_towers("tiny-rn")
    with torch.no_grad():  # non-default BN statistics, so the copy is visible
        for m in source.audio.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
    sd = {k: v for k, v in non_moe_state(source.clip).items()}
    sd.update({f"audio.{k}": v for k, v in source.audio.state_dict().items()})
    sd["logit_scale_ai"] = torch.tensor(4.25)
    sd["logit_scale_at"] = torch.tensor(3.5)
    path = tmp_path / "AudioCLIP-tiny.pt"
    torch.save(sd, path)
    towers = tw.build_towers("tiny-rn", zero_factory)
    report = wt.load_audioclip(towers, path)
    assert (report["logit_scale_ai"], report["logit_scale_at"]) == (4.25, 3.5)
    assert report["missing"] == sorted(tw.moe_parameter_names(towers.clip)) and report["unexpected"] == []
    assert report["loaded"] == len(sd) - 2
    for k, v in source.audio.state_dict().items():
        assert torch.equal(towers.audio.state_dict()[k], v), k
    for k, v in non_moe_state(source.clip).items():
        assert torch.equal(towers.clip.state_dict()[k], v), k
    x = torch.randn(2, 16000) * 3000
    with torch.no_grad():
        assert torch.equal(towers.eval().encode_audio(x), source.eval().encode_audio(x))
    # ESRNXFBSP.pt: the audio state dict alone (no prefix), with an AudioSet-sized head that is skipped
    esrnx = dict(source.audio.state_dict())
    esrnx["fc.weight"], esrnx["fc.bias"] = torch.zeros(527, 512), torch.zeros(527)
    torch.save(esrnx, tmp_path / "ESRNXFBSP.pt")
    rep = wt.load_esresnext(tw.build_towers("tiny-rn"), tmp_path / "ESRNXFBSP.pt")
    assert rep["skipped"] == ["fc.bias", "fc.weight"] and rep["missing"] == ["fc.bias", "fc.weight"]
    assert rep["loaded"] == len(esrnx) - 2


def test_checkpoints_with_the_reference_audioclip_layout_load_end_to_end(tmp_path):
    """AudioCLIP-Full-Training.pt and ESRNXFBSP.pt as the reference class saves them: every key of the
    manifest (the empty `audio.fbsp.bias` included), random tensors, into the full paper-mode towers."""
    layout = audioclip_layout()
    assert layout["audio.fbsp.bias"] == (0,)
    sd = random_state(layout, seed=0)
    path = tmp_path / "AudioCLIP-Full-Training.pt"
    torch.save(sd, path)
    towers = tw.build_towers("audioclip-rn50", zero_factory)
    report = wt.load_preset_weights(towers, {"towers": "audioclip-rn50", "audioclip_ckpt": str(path)})["audioclip"]
    assert report["unexpected"] == [] and report["missing"] == sorted(tw.moe_parameter_names(towers.clip))
    assert report["loaded"] == len(layout) - 2  # all but the two AudioCLIP logit scales, which are reported
    assert report["logit_scale_ai"] == float(sd["logit_scale_ai"])
    own_clip, own_audio = towers.clip.state_dict(), towers.audio.state_dict()
    for k, v in sd.items():
        if k not in wt.AUDIOCLIP_SCALE_KEYS:
            own = own_audio[k[len("audio.") :]] if k.startswith("audio.") else own_clip[k]
            assert torch.equal(own, v), k
    del sd, own_clip, own_audio
    # ESRNXFBSP.pt: the audio tower's entries alone, the `audio.` prefix stripped (other values, so the copy shows)
    _, audio_layout = audioclip_parts()
    esrnx = random_state(audio_layout, seed=1)
    torch.save(esrnx, tmp_path / "ESRNXFBSP.pt")
    rep = wt.load_esresnext(towers, tmp_path / "ESRNXFBSP.pt")
    assert rep["missing"] == rep["unexpected"] == rep["skipped"] == [] and rep["loaded"] == len(audio_layout)
    own_audio = towers.audio.state_dict()
    assert all(torch.equal(own_audio[k], v) for k, v in esrnx.items())


def test_code_mode_clip_weights_need_audio_weights(tmp_path, monkeypatch, caplog):
    """A CLIP checkpoint without the audio tower's (or the reverse) is a ConfigError naming both options;
    with --random-encoders it runs, warns, and the record says which tower is random."""
    monkeypatch.setattr(wt, "REAL_PRESETS", (*wt.REAL_PRESETS, "tiny-vit"))  # the code-mode branch, small towers
    torch.manual_seed(8)
    sd = non_moe_state(tw.build_clip(tw.PRESETS["tiny-vit"]))
    torch.save(sd, tmp_path / "ViT-tiny.pt")
    cfg = {"towers": "tiny-vit", "clip_ckpt": str(tmp_path / "ViT-tiny.pt"), "resnext_imagenet_ckpt": None}
    towers = tw.build_towers("tiny-vit", zero_factory)
    with pytest.raises(ConfigError, match=r"clip_ckpt.*without.*resnext_imagenet_ckpt.*--random-encoders"):
        wt.load_preset_weights(towers, cfg)
    with pytest.raises(ConfigError, match=r"resnext_imagenet_ckpt.*without.*clip_ckpt"):
        wt.load_preset_weights(towers, {"towers": "tiny-vit", "resnext_imagenet_ckpt": str(tmp_path / "r.pth")})
    with caplog.at_level(logging.WARNING, logger=wt.__name__):
        report = wt.load_preset_weights(towers, {**cfg, "random_encoders": True})
    assert report["clip"]["loaded"] == len(sd) and report["random_towers"] == ["audio"]
    assert "audio tower random" in report["init"] and "resnext_imagenet_ckpt" in report["init"]
    assert any("resnext_imagenet_ckpt" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert torch.equal(towers.clip.state_dict()["text_projection"], sd["text_projection"])


def test_loader_errors(tmp_path):
    torch.manual_seed(7)
    towers = tw.build_towers("tiny-rn", zero_factory)
    good = non_moe_state(tw.build_clip(tw.PRESETS["tiny-rn"]))
    # (c) an unexpected key is named
    torch.save({**good, "visual.extra_adapter.weight": torch.zeros(3)}, tmp_path / "extra.pt")
    with pytest.raises(WeightsError, match=r"extra\.pt.*unexpected \['visual\.extra_adapter\.weight'\].*--clip-ckpt"):
        wt.load_openai_clip(towers, tmp_path / "extra.pt")
    # a missing non-MoE key is named
    torch.save({k: v for k, v in good.items() if k != "ln_final.weight"}, tmp_path / "short.pt")
    with pytest.raises(WeightsError, match=r"missing \['ln_final\.weight'\]"):
        wt.load_openai_clip(towers, tmp_path / "short.pt")
    # a ViT file into an RN preset: both layouts named
    vit = openai_style_state(tw.build_clip(tw.PRESETS["tiny-vit"]), 64)
    save_torchscript_state(vit, tmp_path / "vit.pt")
    with pytest.raises(
        WeightsError, match=r"preset 'tiny-rn' \(ModifiedResNet.*the file holds ViT\(width=64, layers=2, patch=16\)"
    ):
        wt.load_openai_clip(towers, tmp_path / "vit.pt")
    # a shape mismatch (other width / context)
    torch.save({**good, "positional_embedding": torch.zeros(40, 64)}, tmp_path / "ctx40.pt")
    with pytest.raises(
        WeightsError, match=r"shape mismatches: \['positional_embedding: file \(40, 64\) vs model \(77, 64\)'\]"
    ):
        wt.load_openai_clip(towers, tmp_path / "ctx40.pt")
    # an AudioCLIP file without audio keys, an audio key of the wrong shape
    with pytest.raises(WeightsError, match="no 'audio.*--audioclip-ckpt"):
        wt.load_audioclip(towers, tmp_path / "extra.pt")
    bad_audio = {**good, **{f"audio.{k}": v for k, v in towers.audio.state_dict().items()}}
    bad_audio["audio.fbsp.m"] = torch.zeros(7)
    torch.save(bad_audio, tmp_path / "bad_audio.pt")
    with pytest.raises(WeightsError, match=r"fbsp\.m: file \(7,\) vs model \(129,\)"):
        wt.load_audioclip(towers, tmp_path / "bad_audio.pt")
    # missing files name the option
    with pytest.raises(WeightsError, match="--clip-ckpt"):
        wt.load_openai_clip(towers, tmp_path / "nope.pt")
    with pytest.raises(WeightsError, match="--audioclip-ckpt"):
        wt.load_audioclip(towers, None)
    with pytest.raises(WeightsError, match="--esrnx-ckpt"):
        wt.load_esresnext(towers, tmp_path / "nope.pt")
    with pytest.raises(WeightsError, match="--resnext-imagenet-ckpt"):
        wt.load_resnext_imagenet(towers, tmp_path / "nope.pth")
    # a TorchScript archive given where a plain state dict is expected
    with pytest.raises(WeightsError, match="TorchScript archive"):
        wt.load_audioclip(towers, tmp_path / "vit.pt")


def test_checkpoint_needing_arbitrary_unpickling_is_refused(tmp_path):
    _UNPICKLED.clear()
    good = non_moe_state(tw.build_clip(tw.PRESETS["tiny-rn"]))
    torch.save({"state_dict": good, "config": _Payload()}, tmp_path / "pickled.pt")
    towers = tw.build_towers("tiny-rn")
    for loader in (wt.load_openai_clip, wt.load_audioclip, wt.load_esresnext):
        with pytest.raises(WeightsError, match=r"pickled\.pt: refused: .*arbitrary Python objects.*_Payload"):
            loader(towers, tmp_path / "pickled.pt")
    assert _UNPICKLED == []  # the object was never reconstructed
