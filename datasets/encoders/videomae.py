"""VideoMAE-base visual encoder (transformers `VideoMAEModel`, config built here) and its preprocessing.

Used by `datasets.extraction.videos` to compute the AV-CIL visual feature of a clip:

    16 RGB frames (uint8, any size)
      -> resize the shorter side to 224 (bilinear, antialiased; the longer side to int(224 * long / short)),
         round to uint8, centre crop 224 x 224 (offsets (H - 224) // 2, (W - 224) // 2)
      -> / 255, ImageNet mean (0.485, 0.456, 0.406) / std (0.229, 0.224, 0.225)
      -> VideoMAEModel (16 frames, patch 16, tubelet 2, hidden 768, 12 layers, 12 heads,
         use_mean_pooling=False so the final LayerNorm is applied, layer_norm_eps 1e-12)
      -> last_hidden_state (1568, 768) = 8 tubelets x 196 patches, t-major -> (8, 196, 768)

This is what `VideoMAEImageProcessor` does with the `MCG-NJU/videomae-base` preprocessor config,
written in torch so that nothing depends on a processor config from the network.

Weights come only from a local path: a directory holding `model.safetensors` or
`pytorch_model.bin` (the Hugging Face `MCG-NJU/videomae-base` snapshot), or one state-dict file.
They are read directly (safetensors / `torch.load(weights_only=True)`) rather than through
`VideoMAEModel.from_pretrained`: the published VideoMAE checkpoints store the attention biases as
`q_bias` / `v_bias` (transformers 4.x layout, key bias fixed at zero), and transformers 5.x (5.17
here) renamed them to `query.bias` / `key.bias` / `value.bias` without a loading rule, so
`from_pretrained` silently leaves those biases at zero. `load_videomae_weights` converts the old
names, logs the missing / unexpected key lists and refuses anything unexpected (datasets.weights reads
and checks the files).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from datasets.errors import WeightsError
from datasets.weights import check_keys, load_report, read_state_dict, summarise_keys

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Pretraining-checkpoint parts that the encoder does not use.
EXPECTED_UNEXPECTED = ("decoder.", "encoder_to_decoder.", "mask_token")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_LEGACY_BIAS = re.compile(r"^(encoder\.layer\.\d+\.attention\.attention\.)(q_bias|v_bias)$")


@dataclass(frozen=True)
class VideoMAESpec:
    """Architecture. The defaults are VideoMAE-base (MCG-NJU/videomae-base); smaller values are for tests."""

    frames: int = 16
    size: int = 224
    patch: int = 16
    tubelet: int = 2
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp: int = 3072
    eps: float = 1e-12

    def __post_init__(self) -> None:
        if self.frames % self.tubelet or self.size % self.patch or self.dim % self.heads:
            raise ValueError(f"VideoMAESpec: frames must divide by tubelet, size by patch, dim by heads: {self}")

    @property
    def grid(self) -> tuple[int, int]:
        """(T, P): (8, 196) for VideoMAE-base."""
        return self.frames // self.tubelet, (self.size // self.patch) ** 2

    def to_json(self) -> dict:
        return asdict(self)

    def hf_config(self):
        from transformers import VideoMAEConfig

        return VideoMAEConfig(
            image_size=self.size,
            num_frames=self.frames,
            patch_size=self.patch,
            tubelet_size=self.tubelet,
            num_channels=3,
            hidden_size=self.dim,
            num_hidden_layers=self.depth,
            num_attention_heads=self.heads,
            intermediate_size=self.mlp,
            hidden_act="gelu",
            qkv_bias=True,
            use_mean_pooling=False,
            layer_norm_eps=self.eps,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )


# ----------------------------------------------------------------------------- preprocessing


def resize_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> uint8 (N, size, size, 3): shorter side to `size`, then centre crop."""
    n, h, w, _ = frames.shape
    if min(h, w) != size:
        nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
        x = frames.permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        frames = x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        h, w = nh, nw
    top, left = (h - size) // 2, (w - size) // 2
    return frames[:, top : top + size, left : left + size]


def pixel_values(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (B, N, S, S, 3) -> float32 (B, N, 3, S, S), ImageNet-normalised."""
    x = frames.permute(0, 1, 4, 2, 3).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 1, 3, 1, 1)
    return (x - mean) / std


def tokens_to_grid(hidden: torch.Tensor, spec: VideoMAESpec) -> torch.Tensor:
    """(B, T * P, D) t-major tokens (token = t * P + p) -> (B, T, P, D)."""
    t, p = spec.grid
    return hidden.reshape(hidden.shape[0], t, p, hidden.shape[-1])


# ----------------------------------------------------------------------------- encoder


class VideoMAEEncoder(nn.Module):
    """pixel values (B, frames, 3, size, size) -> token grid (B, T, P, dim)."""

    def __init__(self, spec: VideoMAESpec = VideoMAESpec(), seed: int = 0):
        super().__init__()
        from transformers import VideoMAEModel

        self.spec = spec
        with torch.random.fork_rng(devices=[]):  # random weights depend on the seed only
            torch.manual_seed(seed)
            self.model = VideoMAEModel(spec.hf_config())
        self.model.eval()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return tokens_to_grid(self.model(pixel_values=pixels).last_hidden_state, self.spec)


def _read_weights(path: Path) -> tuple[dict, dict | None]:
    """State dict (and config.json, if any) from a snapshot directory or a single file (datasets.weights reads it)."""
    if path.is_file():
        return read_state_dict(path, "VideoMAE"), None
    if not path.is_dir():
        raise WeightsError(
            f"{path}: VideoMAE weights not found; pass a local snapshot directory of "
            "MCG-NJU/videomae-base (with model.safetensors or pytorch_model.bin) or a state-dict file"
        )
    config = None
    if (path / "config.json").is_file():
        try:
            config = json.loads((path / "config.json").read_text())
        except ValueError as e:
            raise WeightsError(
                f"{path / 'config.json'}: not valid JSON ({e}); download the snapshot's config.json again"
            ) from e
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return _read_weights(path / name)[0], config
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index).is_file():
            shards = sorted(set(json.loads((path / index).read_text())["weight_map"].values()))
            sd = {}
            for shard in shards:
                sd.update(_read_weights(path / shard)[0])
            return sd, config
    raise WeightsError(
        f"{path}: no {' or '.join(WEIGHT_FILES)} in this directory; pass the MCG-NJU/videomae-base snapshot directory"
    )


def weight_files(path: Path) -> list[Path]:
    """The files whose hashes identify the weights (config.json included for a directory)."""
    path = Path(path)
    if path.is_file():
        return [path]
    names = [n for n in ("config.json", *WEIGHT_FILES) if (path / n).is_file()]
    if not any(n in WEIGHT_FILES for n in names):
        for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            if (path / index).is_file():
                names += [index, *sorted(set(json.loads((path / index).read_text())["weight_map"].values()))]
                break
    return [path / n for n in names]


def _check_config(config: dict | None, spec: VideoMAESpec, path: Path) -> None:
    if not config:
        return
    fields = {
        "hidden_size": spec.dim,
        "num_hidden_layers": spec.depth,
        "num_attention_heads": spec.heads,
        "intermediate_size": spec.mlp,
        "patch_size": spec.patch,
        "tubelet_size": spec.tubelet,
        "num_frames": spec.frames,
        "image_size": spec.size,
        "use_mean_pooling": False,
    }
    bad = {k: config[k] for k, v in fields.items() if k in config and config[k] != v}
    if bad:
        raise WeightsError(
            f"{path / 'config.json'}: {bad} differ from the VideoMAE-base encoder AV-CIL uses "
            f"({fields}); pass the self-supervised MCG-NJU/videomae-base snapshot (not a fine-tuned "
            "classifier)"
        )


def normalise_keys(sd: dict) -> tuple[dict, bool]:
    """Strip the `videomae.` prefix; map legacy q_bias / v_bias to query / value biases (key bias = 0).

    Returns (state dict, whether legacy biases were converted).
    """
    out, legacy = {}, False
    for k, v in sd.items():
        k = k[len("videomae.") :] if k.startswith("videomae.") else k
        m = _LEGACY_BIAS.match(k)
        if m:
            legacy = True
            prefix, which = m.groups()
            out[prefix + ("query.bias" if which == "q_bias" else "value.bias")] = v
            out.setdefault(prefix + "key.bias", torch.zeros_like(v))
        else:
            out[k] = v
    return out, legacy


def load_videomae_weights(encoder: VideoMAEEncoder, path: Path) -> dict:
    """Load local VideoMAE weights into `encoder.model`; log and check the key lists.

    Accepted: unexpected `decoder.*`, `encoder_to_decoder.*`, `mask_token` (pretraining parts);
    nothing missing. Anything else is a WeightsError naming the keys. Returns the load report
    (datasets.weights.load_report) with `legacy_qv_bias`: whether legacy biases were converted.
    """
    path = Path(path)
    raw, config = _read_weights(path)
    _check_config(config, encoder.spec, path)
    sd, legacy = normalise_keys(raw)
    missing, unexpected = check_keys(
        encoder.model.state_dict(),
        sd,
        path,
        "the VideoMAE-base encoder this extraction builds",
        "expected every encoder weight present and only decoder.*, encoder_to_decoder.*, mask_token extra: pass the "
        "self-supervised MCG-NJU/videomae-base checkpoint",
        allow_unexpected=lambda k: k.startswith(EXPECTED_UNEXPECTED),
    )
    encoder.model.load_state_dict(sd, strict=False)
    log.info(
        "VideoMAE weights %s:\n%s  missing keys (%d): %s\n  unexpected keys (%d, ignored): %s",
        path,
        "  legacy q_bias/v_bias converted to query/value biases (key bias 0)\n" if legacy else "",
        len(missing),
        summarise_keys(missing),
        len(unexpected),
        summarise_keys(unexpected),
    )
    return load_report(
        path, len(sd) - len(unexpected), missing, unexpected, files=weight_files(path), legacy_qv_bias=legacy
    )
