"""The harness's checkpoint loaders against state dicts of the REAL model classes (random weights, built offline).

Every file here is written from a real class (open_clip CLIP, transformers VideoMAE, timm ViT, torchvision
ResNe(X)t), never from a hand-written key list, and read back through the one weights reader
(`datasets.weights`) by the loader the harness uses for that checkpoint.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from datasets.errors import WeightsError  # noqa: E402
from datasets.weights import OPENAI_EXTRA_KEYS  # noqa: E402


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.detach().float(), b.detach().float())


# ----------------------------------------------------------------------------- OpenAI CLIP (open_clip's classes)


def _openai_clip(name: str, seed: int) -> torch.nn.Module:
    """open_clip's OpenAI-layout CLIP (`ViT-B-16-quickgelu` / `RN50-quickgelu`), random weights, plus the three int
    entries OpenAI's TorchScript files carry (registered as buffers so they are in the state dict, as in the .pt)."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None).float().eval()
    for key in OPENAI_EXTRA_KEYS:
        value = getattr(model, key, None) or 224  # input_resolution: both are 224 px models
        if hasattr(model, key):  # open_clip keeps context_length / vocab_size as plain int attributes
            delattr(model, key)
        model.register_buffer(key, torch.tensor(int(value)))
    return model


def _save_torchscript(model: torch.nn.Module, path) -> None:
    """A TorchScript archive of the whole CLIP (as OpenAI's .pt files are), by tracing encode_image (every
    submodule's parameters are kept by the trace); the file is checked to be what the reader calls TorchScript."""
    from datasets.weights import is_torchscript_archive

    # open_clip's non-persistent buffers (the text `attn_mask`) would become state-dict entries of the archive;
    # OpenAI's CLIP keeps the mask as a plain attribute, so its .pt has no such entry: drop them before tracing.
    for module in model.modules():
        for name in list(module._non_persistent_buffers_set):
            module._buffers.pop(name, None)
            module._non_persistent_buffers_set.discard(name)
    size = 224
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(model, {"encode_image": torch.zeros(1, 3, size, size)}, check_trace=False)
        torch.jit.save(traced, str(path))
    assert is_torchscript_archive(path)


@pytest.fixture(scope="module")
def openai_files(tmp_path_factory):
    """{arch: (state dict, TorchScript .pt, plain .pth)} for ViT-B/16 and RN50 (about 15 s on 2 cores)."""
    root = tmp_path_factory.mktemp("openai")
    out = {}
    for seed, (arch, name) in enumerate((("ViT-B-16", "ViT-B-16-quickgelu"), ("RN50", "RN50-quickgelu"))):
        model = _openai_clip(name, seed)
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        assert "visual.conv1.weight" in sd and "positional_embedding" in sd  # the OpenAI names, not HF's
        assert any(k.startswith("transformer.resblocks.") for k in sd)
        ts, plain = root / f"{arch}.pt", root / f"{arch}.pth"
        _save_torchscript(model, ts)
        torch.save(sd, plain)
        out[arch] = (sd, ts, plain)
        del model
    return out


def test_openai_vit_b16_into_paired_extraction_clip(openai_files):
    """datasets/encoders/clip.py (python -m datasets.extraction.paired): the TorchScript form only, strictly."""
    from datasets.encoders.clip import ClipConfig, build_clip, load_openai_clip

    sd, ts, plain = openai_files["ViT-B-16"]
    model = build_clip(ClipConfig())
    rep = load_openai_clip(model, ts)
    assert rep["missing"] == [] and rep["unexpected"] == []
    assert rep["loaded"] == len(sd) - len(OPENAI_EXTRA_KEYS)
    own = model.state_dict()
    assert all(_same(own[k], v) for k, v in sd.items() if k not in OPENAI_EXTRA_KEYS)
    with pytest.raises(WeightsError, match="TorchScript"):  # this loader documents the released .pt only
        load_openai_clip(model, plain)


@pytest.mark.parametrize(("arch", "preset"), [("ViT-B-16", "clip-vit-b16"), ("RN50", "audioclip-rn50")])
@pytest.mark.parametrize("form", ["torchscript", "plain"])
def test_openai_clip_into_mcil_towers(openai_files, arch, preset, form):
    """methods/mcil_audioclip/weights.py: TorchScript .pt and plain state dict; only MoE keys may be missing."""
    from methods.mcil_audioclip import towers as tw
    from methods.mcil_audioclip import weights as wt
    from tests.methods.test_mcil_towers import zero_factory

    sd, ts, plain = openai_files[arch]
    towers = tw.build_towers(preset, zero_factory)
    rep = wt.load_openai_clip(towers, ts if form == "torchscript" else plain)
    assert rep["loaded"] == len(sd) - len(OPENAI_EXTRA_KEYS) and rep["unexpected"] == []
    moe = set(tw.moe_parameter_names(towers.clip))
    assert moe and set(rep["missing"]) == {k for k in towers.clip.state_dict() if k not in sd}
    assert all(".moe." in f".{k}" for k in rep["missing"])
    own = towers.clip.state_dict()
    assert all(_same(own[k], v) for k, v in sd.items() if k not in OPENAI_EXTRA_KEYS)


# ----------------------------------------------------------------------------- VideoMAE-base (transformers)


def _legacy_qv(sd: dict) -> dict:
    """transformers 5.x VideoMAE names -> the published (4.x) q_bias / v_bias layout of MCG-NJU/videomae-base:
    query/value biases renamed, the (always zero) key bias dropped. Derived from the real keys."""
    out = {}
    for k, v in sd.items():
        if k.endswith(".attention.attention.key.bias"):
            continue
        for new, old in (("query.bias", "q_bias"), ("value.bias", "v_bias")):
            if k.endswith(f".attention.attention.{new}"):
                k = k[: -len(new)] + old
        out[k] = v
    return out


@pytest.fixture(scope="module")
def videomae_source():
    """VideoMAEForPreTraining (the class of the MCG-NJU/videomae-base snapshot: `videomae.*`, `encoder_to_decoder`,
    `decoder.*`, `mask_token`), base size, with the snapshot's use_mean_pooling=False (final LayerNorm kept)."""
    from transformers import VideoMAEConfig, VideoMAEForPreTraining

    torch.manual_seed(0)
    model = VideoMAEForPreTraining(VideoMAEConfig(use_mean_pooling=False)).eval()
    with torch.no_grad():  # random non-zero key/query/value biases so the legacy conversion is visible
        for name, p in model.named_parameters():
            if name.endswith(("query.bias", "value.bias")):
                p.normal_()
    return model


@pytest.mark.parametrize("safe", [True, False])
def test_videomae_snapshot_dir(videomae_source, tmp_path, safe):
    """save_pretrained (safetensors / bin) of the pretraining class -> load_videomae_weights: prefix stripped,
    decoder parts ignored, config.json checked, every encoder weight equal."""
    from datasets.encoders.videomae import VideoMAEEncoder, load_videomae_weights

    videomae_source.save_pretrained(tmp_path, safe_serialization=safe)
    if not safe:  # transformers 5.x ignores safe_serialization=False (always safetensors): write the 4.x .bin form,
        (tmp_path / "model.safetensors").unlink()  # torch.save of the same state dict, as save_pretrained did
        torch.save(videomae_source.state_dict(), tmp_path / "pytorch_model.bin")
    assert (tmp_path / ("model.safetensors" if safe else "pytorch_model.bin")).is_file()
    enc = VideoMAEEncoder()
    rep = load_videomae_weights(enc, tmp_path)
    assert rep["missing"] == [] and not rep["legacy_qv_bias"]
    assert rep["unexpected"] and all(
        k.startswith(("decoder.", "encoder_to_decoder.", "mask_token")) for k in rep["unexpected"]
    )
    src = videomae_source.videomae.state_dict()
    own = enc.model.state_dict()
    assert set(own) <= set(src) and all(_same(own[k], src[k]) for k in own)


def test_videomae_model_and_legacy_qv_bias(videomae_source, tmp_path):
    """VideoMAEModel(VideoMAEConfig) save_pretrained; then the same weights in the published q_bias/v_bias layout
    (one safetensors file): converted by normalise_keys, and one forward equals VideoMAEModel's on the same input
    (16 frames x 224^2, the only size the base config takes; the test takes about 10 s on 2 cores)."""
    from safetensors.torch import save_file
    from transformers import VideoMAEModel

    from datasets.encoders.videomae import VideoMAEEncoder, VideoMAESpec, load_videomae_weights, tokens_to_grid

    base = VideoMAEModel(videomae_source.config).eval()
    base.load_state_dict(videomae_source.videomae.state_dict())
    base.save_pretrained(tmp_path / "model", safe_serialization=True)
    enc = VideoMAEEncoder(seed=1)
    rep = load_videomae_weights(enc, tmp_path / "model")
    assert rep["missing"] == [] and rep["unexpected"] == [] and not rep["legacy_qv_bias"]

    legacy = _legacy_qv({f"videomae.{k}": v.contiguous() for k, v in base.state_dict().items()})
    assert any(k.endswith(".q_bias") for k in legacy) and not any(k.endswith(".key.bias") for k in legacy)
    save_file(legacy, str(tmp_path / "legacy.safetensors"))
    enc = VideoMAEEncoder(seed=2)
    rep = load_videomae_weights(enc, tmp_path / "legacy.safetensors")
    assert rep["legacy_qv_bias"] and rep["missing"] == [] and rep["unexpected"] == []
    own = enc.model.state_dict()
    for k, v in base.state_dict().items():
        assert _same(own[k], torch.zeros_like(v) if k.endswith(".key.bias") else v), k

    spec = VideoMAESpec()
    x = torch.randn(1, spec.frames, 3, spec.size, spec.size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base_key_bias = [m.key.bias for n, m in base.named_modules() if n.endswith("attention.attention")]
        for b in base_key_bias:  # the published layout has no key bias (it is fixed at zero)
            b.zero_()
        want = tokens_to_grid(base(pixel_values=x).last_hidden_state, spec)
        got = enc(x)
    assert torch.allclose(got, want, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- AudioMAE ViT-B/16 (timm)


def _timm_audiomae(global_pool: str, num_classes: int = 0):
    """timm's VisionTransformer with AudioMAE's ViT-B/16 configuration (models_vit.vit_base_patch16: 1024 x 128
    fbank, 1 channel, patch 16, 768 x 12 layers, 12 heads, mlp 4, qkv bias, LayerNorm eps 1e-6)."""
    from functools import partial

    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(
        img_size=(1024, 128),
        patch_size=16,
        in_chans=1,
        embed_dim=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        global_pool=global_pool,
        num_classes=num_classes,
    )


# The released AudioMAE `pretrained.pth` (ViT-B, AS-2M) is the *pretraining* model (models_mae.MaskedAutoencoderViT),
# saved as {"model": state_dict}: the timm-named encoder (patch_embed.proj, cls_token, pos_embed, blocks.N.*), the
# encoder's final `norm` (no `fc_norm`, no `head`), and the decoder (`decoder_embed`, `decoder_pos_embed`,
# `decoder_blocks`, `decoder_norm`, `decoder_pred`) with `mask_token`. The harness expects exactly that: `fc_norm`
# missing (the AV-CIL code builds models_vit with global_pool=True, which deletes `norm` and adds `fc_norm`, then
# loads strict=False, so fc_norm keeps its LayerNorm init) and `norm.*` / `decoder_*` / `mask_token` unexpected.
# A fine-tuned models_vit checkpoint (`fc_norm`, `head`) is a different file: its fc_norm loads, its head is refused.
def test_audiomae_pretrained_layout(tmp_path):
    """Encoder: timm ViT (global_pool='token' keeps `norm`, as the MAE encoder); decoder: timm Blocks with the
    models_mae decoder configuration (512 wide, 8 blocks, 16 heads; decoder_mode 0 layout)."""
    from timm.models.vision_transformer import Block

    from datasets.encoders.audiomae import AudioMAEConfig, AudioMAEEncoder, load_audiomae_checkpoint

    vit = _timm_audiomae("token")
    sd = dict(vit.state_dict())
    assert "norm.weight" in sd and "fc_norm.weight" not in sd and not any(k.startswith("head.") for k in sd)
    decoder = torch.nn.Module()
    decoder.decoder_embed = torch.nn.Linear(768, 512)
    decoder.mask_token = torch.nn.Parameter(torch.zeros(1, 1, 512))
    decoder.decoder_pos_embed = torch.nn.Parameter(torch.zeros(1, 513, 512))
    decoder.decoder_blocks = torch.nn.ModuleList(Block(512, 16, 4, qkv_bias=True) for _ in range(8))
    decoder.decoder_norm = torch.nn.LayerNorm(512)
    decoder.decoder_pred = torch.nn.Linear(512, 256)
    sd.update(decoder.state_dict())
    torch.save({"model": sd}, tmp_path / "pretrained.pth")

    enc = AudioMAEEncoder(AudioMAEConfig(), seed=3)
    rep = load_audiomae_checkpoint(enc, tmp_path / "pretrained.pth")
    assert rep["missing"] == ["fc_norm.bias", "fc_norm.weight"]
    assert {k for k in rep["unexpected"] if not k.startswith("decoder_")} == {"mask_token", "norm.bias", "norm.weight"}
    own = enc.state_dict()
    assert all(_same(own[k], v) for k, v in sd.items() if k in own)
    assert torch.equal(own["fc_norm.weight"], torch.ones(768)) and torch.equal(own["fc_norm.bias"], torch.zeros(768))
    # the harness's forward equals timm's encoder + AudioMAE's global pool (mean of patch tokens, then fc_norm)
    x = torch.randn(1, 1024, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h = vit.forward_features(x[:, None])  # timm's encoder: tokens + pos_embed, blocks, then `norm`
        tokens = vit.patch_embed(x[:, None]) + vit.pos_embed[:, 1:]
        hidden = torch.cat([(vit.cls_token + vit.pos_embed[:, :1]).expand(1, -1, -1), tokens], 1)
        hidden = vit.blocks(hidden)
        want = enc.fc_norm(hidden[:, 1:].mean(1))
        assert torch.allclose(vit.norm(hidden), h, atol=1e-5)
        assert torch.allclose(enc(x), want, atol=1e-4, rtol=0)


def test_audiomae_finetuned_models_vit_layout(tmp_path):
    """models_vit with global_pool=True (timm global_pool='avg': `fc_norm`, no `norm`): loads without a head;
    a classification `head` is not an encoder weight and is refused."""
    from datasets.encoders.audiomae import AudioMAEConfig, AudioMAEEncoder, load_audiomae_checkpoint

    sd = dict(_timm_audiomae("avg").state_dict())
    assert "fc_norm.weight" in sd and "norm.weight" not in sd
    torch.save({"model": sd}, tmp_path / "encoder.pth")
    enc = AudioMAEEncoder(AudioMAEConfig(), seed=3)
    rep = load_audiomae_checkpoint(enc, tmp_path / "encoder.pth")
    assert rep["missing"] == [] and rep["unexpected"] == []
    assert all(_same(enc.state_dict()[k], v) for k, v in sd.items())
    torch.save({"model": dict(_timm_audiomae("avg", num_classes=527).state_dict())}, tmp_path / "finetuned.pth")
    with pytest.raises(WeightsError, match="head"):
        load_audiomae_checkpoint(enc, tmp_path / "finetuned.pth")


# ----------------------------------------------------------------------------- torchvision


def test_torchvision_resnext50_into_esresnext(tmp_path):
    """torchvision resnext50_32x4d state dict -> MCIL code mode's ResNeXt loader: every backbone tensor copied."""
    import torchvision

    from methods.mcil_audioclip import towers as tw
    from methods.mcil_audioclip import weights as wt

    torch.manual_seed(0)
    sd = torchvision.models.resnext50_32x4d(weights=None).state_dict()
    torch.save(sd, tmp_path / "resnext50_32x4d.pth")
    audio = tw.build_towers("clip-vit-b16").audio
    rep = wt.load_torchvision_resnext(audio, tmp_path / "resnext50_32x4d.pth")
    backbone = [k for k in sd if not k.startswith("fc.")]
    assert rep["unexpected"] == [] and rep["skipped"] == ["fc.bias", "fc.weight"]
    assert rep["loaded"] == len(backbone)
    own = audio.state_dict()
    assert all(_same(own[k], sd[k]) for k in backbone)


def test_torchvision_resnet18_into_cign(tmp_path):
    """torchvision resnet18 state dict (with and without `fc`, and DataParallel's `module.`) -> CIGN's loader."""
    import torchvision

    from methods.cign.model import _resnet18_body, load_resnet18_weights

    torch.manual_seed(0)
    sd = torchvision.models.resnet18(weights=None).state_dict()
    variants = {
        "full": sd,
        "nofc": {k: v for k, v in sd.items() if not k.startswith("fc.")},
        "module": {f"module.{k}": v for k, v in sd.items()},
    }
    for name, state in variants.items():
        torch.save(state, tmp_path / f"{name}.pth")
        net = _resnet18_body(3)
        digest = load_resnet18_weights(net, tmp_path / f"{name}.pth")
        assert len(digest) == 64
        own = net.state_dict()
        assert all(_same(own[k], v) for k, v in sd.items() if not k.startswith("fc.")), name
