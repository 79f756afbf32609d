"""CLIP image/text towers (open_clip) with Mixture-of-Experts hooks, plus the ESResNeXt-fbsp audio tower.

../shared/reference/mcil_audioclip.md sections 3.1, 3.4 and 7.1-7.2. Nothing here downloads:
the CLIP is built from a config with `open_clip.model.CLIP(...)` (random init), weights come
from user-supplied files through `weights.py`, and the tokenizer reads open_clip's bundled BPE file.

Presets (`PRESETS`):
- `audioclip-rn50` (mode "paper"): AudioCLIP = OpenAI RN50 CLIP (ModifiedResNet image tower,
  12 x 512 text transformer, 8 heads, embed_dim 1024, QuickGELU) + the full ESResNeXt-fbsp
  (audio_dim 1024, the same joint space). Weights: `AudioCLIP-Full-Training.pt`.
- `clip-vit-b16` (mode "code"): OpenAI ViT-B/16 (open_clip `ViT-B-16-quickgelu`, embed_dim 512)
  + the full ESResNeXt-fbsp (audio_dim 1024; the method adds the 1024 -> 512 projection).
  Weights: OpenAI `ViT-B-16.pt` + torchvision `resnext50_32x4d` ImageNet for the audio CNN.
- `tiny-rn`, `tiny-vit`: the same classes scaled down for tests (64 px images, 2 x 64 text
  transformer with the real 77-token context and 49,408 vocab, embed_dim 64, the tiny
  ESResNeXt with audio_dim 64 on 1 s at 16 kHz).

MoE injection (`inject_moe`): every open_clip `ResidualAttentionBlock` of the text transformer
and, for a ViT, of the image transformer gets `block.moe = moe_factory(width)` and computes

    x = q + ls_1(attn(ln_1(q)))
    x = x + ls_2(mlp(ln_2(x))) + block.moe(x, x[:, 0])

(MoE beside the MLP, fed the post-attention residual stream without LayerNorm; the router input
is the first token: [CLS] for images, <sot> for text; open_clip 3.x blocks are batch-first, a
sequence-first block is transposed for the MoE). The RN50 image tower has no transformer blocks:
chosen construction (documented deviation; the paper only says the image tower is "partially
frozen" with MoE) is one MoE after each residual stage layer1..layer4,

    out (B, C, H, W) -> tokens (B, HW, C);  out <- out + moe(tokens, tokens.mean(1)) reshaped back,

held in `visual.moe[0..3]` (so the OpenAI `visual.layerK.*` key names are unchanged). Every MoE
parameter has `.moe.` in its name; nothing else does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
from open_clip.model import CLIP
from open_clip.modified_resnet import ModifiedResNet
from open_clip.tokenizer import SimpleTokenizer, default_bpe
from open_clip.transformer import CustomResidualAttentionBlock, ResidualAttentionBlock, VisionTransformer
from torch import nn

from methods.mcil_audioclip.esresnext import ESRESNEXT_PRESETS, ESResNeXtConfig, ESResNeXtFBSP

MoEFactory = Callable[[int], nn.Module]


@dataclass(frozen=True)
class TowerPreset:
    """One tower configuration. `vision` / `text` are open_clip `CLIPVisionCfg` / `CLIPTextCfg` kwargs
    (`vision["layers"]` a 4-tuple: ModifiedResNet; an int: ViT), `audio` the ESResNeXtFBSP config."""

    name: str
    embed_dim: int
    vision: dict
    text: dict
    quick_gelu: bool
    audio: ESResNeXtConfig
    description: str = ""
    openai_file: str = ""  # the OpenAI / AudioCLIP file whose layout this preset matches

    @property
    def is_resnet(self) -> bool:
        return isinstance(self.vision["layers"], (tuple, list))

    @property
    def image_size(self) -> int:
        return int(self.vision["image_size"])

    @property
    def audio_dim(self) -> int:
        return self.audio.num_classes

    @property
    def context_length(self) -> int:
        return int(self.text["context_length"])

    def summary(self) -> str:
        v = self.vision
        img = (
            f"ModifiedResNet(layers={tuple(v['layers'])}, width={v['width']})"
            if self.is_resnet
            else f"ViT(width={v['width']}, layers={v['layers']}, patch={v['patch_size']})"
        )
        t = self.text
        return (
            f"{img} @ {v['image_size']}px, text {t['layers']}x{t['width']} (ctx {t['context_length']}, "
            f"vocab {t['vocab_size']}), embed_dim {self.embed_dim}"
        )


_TEXT_OPENAI = dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12)
_TEXT_TINY = dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2)

PRESETS: dict[str, TowerPreset] = {
    "audioclip-rn50": TowerPreset(
        "audioclip-rn50",
        1024,
        vision=dict(layers=(3, 4, 6, 3), width=64, patch_size=None, image_size=224),  # 32 attnpool heads
        text=_TEXT_OPENAI,
        quick_gelu=True,
        audio=ESRESNEXT_PRESETS["full"],
        description="paper: AudioCLIP (OpenAI RN50 CLIP + ESResNeXt-fbsp, 1024-d joint space)",
        openai_file="RN50.pt / AudioCLIP-Full-Training.pt",
    ),
    "clip-vit-b16": TowerPreset(
        "clip-vit-b16",
        512,
        vision=dict(layers=12, width=768, patch_size=16, image_size=224),  # 12 heads
        text=_TEXT_OPENAI,
        quick_gelu=True,
        audio=ESRESNEXT_PRESETS["full"],
        description=(
            "released code: OpenAI CLIP ViT-B/16 (ViT-B-16-quickgelu) + ESResNeXt-fbsp "
            "(1024-d, projected by the method)"
        ),
        openai_file="ViT-B-16.pt",
    ),
    "tiny-rn": TowerPreset(
        "tiny-rn",
        64,
        vision=dict(
            layers=(1, 1, 1, 1), width=8, head_width=64, patch_size=None, image_size=64
        ),  # 256-d attnpool, 4 heads
        text=_TEXT_TINY,
        quick_gelu=True,
        audio=ESRESNEXT_PRESETS["tiny"],
        description="tests: scaled-down audioclip-rn50",
    ),
    "tiny-vit": TowerPreset(
        "tiny-vit",
        64,
        vision=dict(layers=2, width=64, head_width=32, patch_size=16, image_size=64),  # 2 heads
        text=_TEXT_TINY,
        quick_gelu=True,
        audio=ESRESNEXT_PRESETS["tiny"],
        description="tests: scaled-down clip-vit-b16",
    ),
}


# ---- MoE injection ---------------------------------------------------------------------------------
class MoEResidualAttentionBlock(ResidualAttentionBlock):
    """An open_clip ResidualAttentionBlock with `self.moe` beside the MLP (set by `inject_moe`)."""

    moe: nn.Module

    def forward(
        self,
        q_x: torch.Tensor,
        k_x: torch.Tensor | None = None,
        v_x: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ):
        k_x = self.ln_1_kv(k_x) if hasattr(self, "ln_1_kv") and k_x is not None else None
        v_x = self.ln_1_kv(v_x) if hasattr(self, "ln_1_kv") and v_x is not None else None
        x = q_x + self.ls_1(self.attention(q_x=self.ln_1(q_x), k_x=k_x, v_x=v_x, attn_mask=attn_mask))
        if self.attn.batch_first:
            y = self.moe(x, x[:, 0])
        else:  # (L, B, D)
            tokens = x.transpose(0, 1)
            y = self.moe(tokens, tokens[:, 0]).transpose(0, 1)
        return x + self.ls_2(self.mlp(self.ln_2(x))) + y


class MoEModifiedResNet(ModifiedResNet):
    """open_clip's ModifiedResNet with one MoE after each residual stage (`self.moe[0..3]`)."""

    moe: nn.ModuleList

    @staticmethod
    def _stage_moe(moe: nn.Module, out: torch.Tensor) -> torch.Tensor:
        b, c, h, w = out.shape
        tokens = out.flatten(2).transpose(1, 2)  # (B, HW, C)
        y = moe(tokens, tokens.mean(1))
        return out + y.transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x):
        x = self.stem(x)
        for moe, layer in zip(self.moe, (self.layer1, self.layer2, self.layer3, self.layer4)):
            x = self._stage_moe(moe, layer(x))
        return self.attnpool(x)


def _transformer_blocks(clip: CLIP) -> list[nn.Module]:
    blocks = list(clip.transformer.resblocks)
    if isinstance(clip.visual, VisionTransformer):
        blocks += list(clip.visual.transformer.resblocks)
    return blocks


def inject_moe(clip: CLIP, moe_factory: MoEFactory) -> int:
    """Add a MoE module (`moe_factory(d_model)`, forward(x (B, L, D), router_input (B, D)) -> (B, L, D))
    to every transformer block of the text and ViT image towers, or after each stage of a ModifiedResNet.
    Returns the number of MoE modules added. Existing modules are kept (no double injection)."""
    added = 0
    for block in _transformer_blocks(clip):
        if isinstance(block, CustomResidualAttentionBlock):
            raise TypeError("CustomResidualAttentionBlock (qk_norm / scaled attention configs) is not supported")
        if not isinstance(block, ResidualAttentionBlock):
            raise TypeError(f"unexpected transformer block {type(block).__name__}")
        if isinstance(block, MoEResidualAttentionBlock):
            continue
        d_model = block.ln_1.normalized_shape[0]
        block.__class__ = MoEResidualAttentionBlock
        block.moe = moe_factory(d_model)
        added += 1
    visual = clip.visual
    if isinstance(visual, ModifiedResNet) and not isinstance(visual, MoEModifiedResNet):
        widths = [layer[-1].bn3.num_features for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4)]
        visual.__class__ = MoEModifiedResNet
        visual.moe = nn.ModuleList([moe_factory(w) for w in widths])
        added += 4
    elif not isinstance(visual, (ModifiedResNet, VisionTransformer)):
        raise TypeError(f"unsupported image tower {type(visual).__name__}")
    return added


def moe_parameter_names(module: nn.Module) -> list[str]:
    return [n for n, _ in module.named_parameters() if ".moe." in f".{n}"]


# ---- towers ----------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _tokenizer(bpe_path: str, context_length: int) -> SimpleTokenizer:
    return SimpleTokenizer(bpe_path=bpe_path, context_length=context_length)


def build_clip(preset: TowerPreset) -> CLIP:
    """An open_clip CLIP with random weights for `preset` (no download, no pretrained tag)."""
    return CLIP(
        preset.embed_dim, vision_cfg=dict(preset.vision), text_cfg=dict(preset.text), quick_gelu=preset.quick_gelu
    )


class AudioCLIPTowers(nn.Module):
    """`clip` (open_clip CLIP, MoE-injected when a factory is given), `audio` (ESResNeXtFBSP) and the
    CLIP BPE tokenizer (open_clip's bundled vocabulary, or `bpe_path`). Encoders return unnormalised
    embeddings: image / text (B, embed_dim), audio (B, audio_dim)."""

    def __init__(self, preset: TowerPreset, moe_factory: MoEFactory | None = None, bpe_path: str | None = None):
        super().__init__()
        self.preset = preset
        self.clip = build_clip(preset)
        self.n_moe = inject_moe(self.clip, moe_factory) if moe_factory is not None else 0
        self.audio: ESResNeXtFBSP = preset.audio.build()
        self.bpe_path = str(bpe_path or default_bpe())

    @property
    def tokenizer(self) -> SimpleTokenizer:
        return _tokenizer(self.bpe_path, self.preset.context_length)

    def tokenize(self, texts: str | list[str]) -> torch.Tensor:
        """(N, context_length) int64 tokens on CPU; over-long texts are truncated (EOT kept)."""
        return self.tokenizer(texts)

    @property
    def embed_dim(self) -> int:
        return self.preset.embed_dim

    @property
    def audio_dim(self) -> int:
        return self.preset.audio_dim

    @property
    def image_size(self) -> int:
        return self.preset.image_size

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens)

    def encode_audio(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Waveforms (B, L) / (B, C, L) in int16 scale (the caller multiplies [-1, 1] audio by 32768)."""
        return self.audio(waveforms)


def build_towers(preset: str, moe_factory: MoEFactory | None = None, bpe_path: str | None = None) -> AudioCLIPTowers:
    if preset not in PRESETS:
        raise KeyError(f"unknown tower preset {preset!r}; known: {', '.join(PRESETS)}")
    return AudioCLIPTowers(PRESETS[preset], moe_factory, bpe_path)
