"""CLIP ViT image tower (open_clip's `CLIP`, config built here) and OpenAI's CLIP weights.

Used by `datasets.extraction.paired` for the `visual` view of paired image + audio datasets: the
whole open_clip CLIP is built (QuickGELU, as OpenAI's: open_clip `ViT-B-16-quickgelu`), OpenAI's
TorchScript `ViT-B-16.pt` is loaded into it strictly (every key of both towers must match, so a
wrong file is refused rather than half loaded), and the image tower is kept. The images it reads
are already CLIP-normalised (`datasets.media.clip_image`: CLIP's eval transform).

Weights come only from the given local file, read through `datasets.weights` with `torch.jit.load`
(a TorchScript archive, never unpickled as Python objects).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from datasets.weights import OPENAI_EXTRA_KEYS, check_keys, load_report, read_openai_clip

log = logging.getLogger(__name__)

CLIP_MODEL = "ViT-B-16-quickgelu"
CLIP_FILE_FIX = (
    "pass OpenAI's ViT-B-16.pt exactly as released (the TorchScript file the `clip` package and "
    "open_clip's 'openai' tag download) with --clip-ckpt"
)


@dataclass(frozen=True)
class ClipConfig:
    """open_clip CLIP architecture (both towers: the checkpoint is checked against all of it).

    The defaults are OpenAI's ViT-B/16 (open_clip `ViT-B-16-quickgelu`); `tiny` is for tests.
    """

    embed_dim: int = 512
    image_size: int = 224
    width: int = 768
    layers: int = 12
    head_width: int = 64
    patch_size: int = 16
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 512
    text_heads: int = 8
    text_layers: int = 12

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size or self.width % self.head_width:
            raise ValueError(f"ClipConfig: image_size must divide by patch_size and width by head_width: {self}")

    @classmethod
    def tiny(cls, image_size: int) -> ClipConfig:
        """2 layers, width 64, patch 16, over `image_size` px images (tests and debugging, random weights only)."""
        return cls(
            embed_dim=32,
            image_size=image_size,
            width=64,
            layers=2,
            head_width=32,
            patch_size=16,
            context_length=8,
            vocab_size=64,
            text_width=32,
            text_heads=2,
            text_layers=1,
        )

    @property
    def grid(self) -> tuple[int, int]:
        """(T, P) of the `visual` view: (1, 196) for ViT-B/16 at 224 px."""
        return 1, (self.image_size // self.patch_size) ** 2

    def to_json(self) -> dict:
        return {"model": CLIP_MODEL, **asdict(self)}


def build_clip(cfg: ClipConfig = ClipConfig(), seed: int = 0) -> torch.nn.Module:
    """The whole open_clip CLIP (QuickGELU, as OpenAI's), random weights from `seed`; fp32."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    vision = CLIPVisionCfg(
        layers=cfg.layers,
        width=cfg.width,
        head_width=cfg.head_width,
        patch_size=cfg.patch_size,
        image_size=cfg.image_size,
    )
    text = CLIPTextCfg(
        context_length=cfg.context_length,
        vocab_size=cfg.vocab_size,
        width=cfg.text_width,
        heads=cfg.text_heads,
        layers=cfg.text_layers,
    )
    with torch.random.fork_rng(devices=[]):  # random weights depend on the seed only
        torch.manual_seed(seed)
        model = CLIP(cfg.embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=True)
    return model.float().eval()


def load_openai_clip(model: torch.nn.Module, path: Path) -> dict:
    """Load OpenAI's TorchScript ViT-B-16.pt into an open_clip CLIP; every key must match exactly.

    Missing or unexpected keys (other than input_resolution / context_length / vocab_size, which the
    TorchScript file carries as ints) and shape mismatches are one WeightsError naming them. Returns the
    load report (datasets.weights.load_report).
    """
    path = Path(path)
    sd = read_openai_clip(path, plain=False, fix=CLIP_FILE_FIX)
    own = model.state_dict()
    what = f"the OpenAI CLIP checkpoint of this architecture ({CLIP_MODEL}, {own['visual.conv1.weight'].shape[0]} wide)"
    check_keys(
        own,
        sd,
        path,
        what,
        "pass OpenAI's ViT-B-16.pt (TorchScript), not another model's file or an open_clip/HF re-save",
    )
    model.load_state_dict(sd, strict=True)
    log.info(
        "CLIP checkpoint %s: %d tensors loaded, no missing or unexpected keys (dropped the TorchScript ints %s)",
        path,
        len(sd),
        ", ".join(OPENAI_EXTRA_KEYS),
    )
    return load_report(path, len(sd), [], [])
