"""Offline weight loading for the MCIL-AudioCLIP towers from user-supplied files.

../shared/reference/mcil_audioclip.md sections 3.2 and 7.3. Nothing is downloaded; a missing
path is a WeightsError naming the option to set. Files are read by `datasets.weights` and never
unpickled beyond tensors: plain checkpoints with `torch.load(weights_only=True)` (a file that needs
arbitrary objects is refused), OpenAI `.pt` TorchScript archives with `torch.jit.load(...).state_dict()`.

Key layouts (verified against the reference sources, see tests/methods/test_mcil_towers.py):
- OpenAI CLIP (`RN50.pt`, `ViT-B-16.pt`): `visual.*`, `transformer.resblocks.N.*`,
  `token_embedding.weight`, `positional_embedding`, `ln_final.*`, `text_projection`,
  `logit_scale`, plus the int entries `input_resolution`, `context_length`, `vocab_size`
  (dropped). open_clip's CLIP uses the same names (its own OpenAI loader loads these strictly).
- AudioCLIP (`AudioCLIP-Full-Training.pt`, `-Partial-`): one plain state dict of the whole
  AudioCLIP module: the OpenAI RN50 CLIP keys above, `audio.*` (ESResNeXtFBSP, including the
  `audio.window` buffer and the empty (0,) `audio.fbsp.bias`, the reference's disabled bias
  registered as `Parameter(None)`), `logit_scale_ai`, `logit_scale_at`. The whole layout is the
  manifest `tests/methods/fixtures/audioclip_state_dict_layout.json`, derived from the reference class.
- `ESRNXFBSP.pt`: a plain ESResNeXtFBSP state dict without prefix (AudioCLIP loads it into
  `self.audio` directly, `model/audioclip.py`); its `fc` may be an AudioSet head of another size.
- torchvision `resnext50_32x4d` (IMAGENET1K_V1 `.pth`): `conv1`, `bn1`, `layerK.*`, `fc` (1000).

Every loader returns the load report of `datasets.weights.load_report` {file, sha256 (first 16 hex
digits), loaded, missing, unexpected, ...}. MoE parameters (names containing `.moe.`) are the only
CLIP keys allowed to be missing (and BN `num_batches_tracked` counters, which torch fills in); an
unexpected key or a shape mismatch is a WeightsError naming the file and the keys.

`load_preset_weights` loads a real preset's towers from the config's paths. In code mode the image/text
towers (`clip_ckpt`) and the audio tower (`resnext_imagenet_ckpt` or `esresnext_ckpt`) come from separate
files; giving one without the other is a ConfigError naming both options, unless `random_encoders` is set:
then the missing tower stays random, a warning is logged and the report's `init` / `random_towers` say so.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from datasets.errors import ConfigError, WeightsError
from datasets.weights import OPENAI_EXTRA_KEYS, check_keys, load_report, read_openai_clip, read_state_dict

log = logging.getLogger(__name__)

AUDIOCLIP_SCALE_KEYS = ("logit_scale_ai", "logit_scale_at")
OPTION_FILES = {
    "--clip-ckpt": "an OpenAI CLIP checkpoint (ViT-B-16.pt / RN50.pt)",
    "--audioclip-ckpt": "an AudioCLIP checkpoint (AudioCLIP-Full-Training.pt)",
    "--esrnx-ckpt": "the ESResNeXt-fbsp checkpoint (ESRNXFBSP.pt)",
    "--resnext-imagenet-ckpt": "torchvision's resnext50_32x4d ImageNet weights (resnext50_32x4d-7cdf4587.pth)",
}


# ---- files -----------------------------------------------------------------------------------------
def checkpoint_file(path, option: str) -> Path:
    """The file `option` names; a WeightsError naming `option` and what to give when it is unset or absent."""
    what = OPTION_FILES.get(option, "the checkpoint")
    if not path:
        raise WeightsError(f"no checkpoint given: set {option} to {what} (nothing is downloaded)")
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsError(
            f"{option}: checkpoint file {str(p)!r} not found; set {option} to {what} (nothing is downloaded)"
        )
    return p


# ---- layout checks ---------------------------------------------------------------------------------
def describe_clip_state(sd: dict) -> str:
    """A one-line architecture summary of an OpenAI-layout CLIP state dict (for error messages)."""
    try:
        if "visual.proj" in sd:
            w = sd["visual.conv1.weight"]
            layers = sum(1 for k in sd if k.startswith("visual.") and k.endswith(".attn.in_proj_weight"))
            grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            img = f"ViT(width={w.shape[0]}, layers={layers}, patch={w.shape[-1]}) @ {w.shape[-1] * grid}px"
        elif "visual.layer1.0.conv1.weight" in sd:
            counts = tuple(
                len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{b}.")}) for b in (1, 2, 3, 4)
            )
            out = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
            img = f"ModifiedResNet(layers={counts}, width={sd['visual.layer1.0.conv1.weight'].shape[0]}) @ {out * 32}px"
        else:
            img = "no recognised image tower"
        t_layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
        text = (
            f"text {t_layers}x{sd['ln_final.weight'].shape[0]} (ctx {sd['positional_embedding'].shape[0]}, "
            f"vocab {sd['token_embedding.weight'].shape[0]})"
        )
        return f"{img}, {text}, embed_dim {sd['text_projection'].shape[1]}"
    except (KeyError, IndexError, AttributeError):
        return "an unrecognised CLIP layout"


def _is_moe(key: str) -> bool:
    return ".moe." in f".{key}"


def _tolerated_missing(key: str) -> bool:
    return key.endswith("num_batches_tracked")  # filled with 0 by BatchNorm when absent


def _empty_in_model(own: dict, key: str) -> bool:
    """An empty model tensor (ESResNeXt's disabled `fbsp.bias`, shape (0,)): nothing to load, so a file
    re-saved without it still fits."""
    return key in own and own[key].numel() == 0


def _fix(option: str, kind: str) -> str:
    """What to do about a file that does not fit: set `option` to the file of `kind` (an OPTION_FILES key)."""
    return f"set {option} to {OPTION_FILES[kind]}"


def _load_clip_part(towers, sd: dict, path, fix: str) -> tuple[int, list[str]]:
    """Load OpenAI-layout CLIP tensors into towers.clip: only MoE parameters may be missing."""
    preset = towers.preset
    what = f"preset {preset.name!r} ({preset.summary()}); the file holds {describe_clip_state(sd)}"
    missing, _ = check_keys(
        towers.clip.state_dict(), sd, path, what, fix, allow_missing=lambda k: _is_moe(k) or _tolerated_missing(k)
    )
    towers.clip.load_state_dict(sd, strict=False)
    return len(sd), missing


def _load_audio_part(
    audio, sd: dict, path, fix: str, allow_fc_mismatch: bool = False
) -> tuple[int, list[str], list[str]]:
    """Load an ESResNeXtFBSP state dict: strict (the reference's empty `fbsp.bias` is a model key like any
    other), except a missing `window` (the computed one equals scipy's) / `num_batches_tracked` / empty
    `fbsp.bias`, and (ESRNXFBSP.pt) an `fc` head of another size, which is skipped."""
    own = audio.state_dict()
    skipped = []
    if allow_fc_mismatch:
        skipped = sorted(
            k for k in sd if k.startswith("fc.") and k in own and tuple(sd[k].shape) != tuple(own[k].shape)
        )
        sd = {k: v for k, v in sd.items() if k not in skipped}
    what = f"the ESResNeXt-fbsp audio tower ({audio.num_classes}-d, n_fft {audio.n_fft})"
    missing, _ = check_keys(
        own,
        sd,
        path,
        what,
        fix,
        allow_missing=lambda k: k == "window" or _tolerated_missing(k) or _empty_in_model(own, k) or k in skipped,
    )
    audio.load_state_dict(sd, strict=not missing)
    return len(sd), missing, skipped


# ---- loaders ---------------------------------------------------------------------------------------
def load_openai_clip(towers, path, option: str = "--clip-ckpt") -> dict:
    """OpenAI CLIP weights (TorchScript `.pt` or a plain state dict) into `towers.clip`."""
    file = checkpoint_file(path, option)
    sd = read_openai_clip(file, plain=True, fix=_fix(option, "--clip-ckpt"))
    loaded, missing = _load_clip_part(towers, sd, file, _fix(option, "--clip-ckpt"))
    return load_report(file, loaded, missing, [])


def load_audioclip(towers, path, option: str = "--audioclip-ckpt") -> dict:
    """An AudioCLIP checkpoint: `audio.*` -> towers.audio (strict), the RN50 CLIP keys -> towers.clip;
    the report also holds the stored (log) `logit_scale_ai` / `logit_scale_at` values as floats (None if absent)."""
    file = checkpoint_file(path, option)
    sd = read_state_dict(file, "AudioCLIP")
    audio_sd = {k[len("audio.") :]: v for k, v in sd.items() if k.startswith("audio.")}
    if not audio_sd:
        raise WeightsError(
            f"{file}: no 'audio.*' keys; not an AudioCLIP checkpoint "
            f"(for an OpenAI CLIP file use {next(iter(OPTION_FILES))}); "
            f"{_fix(option, '--audioclip-ckpt')}"
        )
    scales = {k: float(sd[k]) if k in sd else None for k in AUDIOCLIP_SCALE_KEYS}
    clip_sd = {k: v for k, v in sd.items() if not k.startswith("audio.") and k not in AUDIOCLIP_SCALE_KEYS}
    clip_sd = {k: v for k, v in clip_sd.items() if k not in OPENAI_EXTRA_KEYS}
    fix = _fix(option, "--audioclip-ckpt")
    n_clip, clip_missing = _load_clip_part(towers, clip_sd, file, fix)
    n_audio, audio_missing, _ = _load_audio_part(towers.audio, audio_sd, file, fix)
    return load_report(file, n_clip + n_audio, clip_missing + [f"audio.{k}" for k in audio_missing], [], **scales)


def load_esresnext(towers, path, option: str = "--esrnx-ckpt") -> dict:
    """A standalone ESResNeXt-fbsp state dict (`ESRNXFBSP.pt`; an `audio.` or `module.` prefix is stripped)
    into towers.audio; an `fc` of another size (AudioSet head) is skipped and reported."""
    file = checkpoint_file(path, option)
    sd = read_state_dict(file, "ESResNeXt-fbsp")
    for prefix in ("module.", "audio."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    loaded, missing, skipped = _load_audio_part(
        towers.audio, sd, file, _fix(option, "--esrnx-ckpt"), allow_fc_mismatch=True
    )
    return load_report(file, loaded, missing, [], skipped=skipped)


def load_torchvision_resnext(model, path, option: str = "--resnext-imagenet-ckpt") -> dict:
    """The released code's init (`pretrained=True` in `esresnet/base.py`): copy the conv/BN tensors of a
    torchvision `resnext50_32x4d` ImageNet state dict (`.pth`, read with weights_only=True) whose names
    and shapes match into an ESResNeXtFBSP; `fc` (1000 classes), `fbsp`, `window` and the attention gates
    keep their init, and the gates' BN weight and bias are set to 1 (the reference's `_reset_attention`).

    Returns the load report with missing (model keys not copied), unexpected (file keys not used) and
    skipped (file keys with a different shape). A backbone tensor of a different shape (e.g. a plain
    ResNet-50 file) is a WeightsError; only `fc.*` may differ."""
    file = checkpoint_file(path, option)
    sd = read_state_dict(file, "torchvision resnext50_32x4d")
    sd = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in sd.items()}
    own = model.state_dict()
    skipped = [k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    bad = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in skipped if not k.startswith("fc.")]
    if bad:
        raise WeightsError(
            f"{file}: not a torchvision resnext50_32x4d state dict for this ESResNeXt "
            f"(shape mismatches: {bad[:8]}{' ...' if len(bad) > 8 else ''}); "
            f"{_fix(option, '--resnext-imagenet-ckpt')}"
        )
    take = {k: v for k, v in sd.items() if k in own and k not in skipped}
    if not any(k.startswith("layer") for k in take):
        raise WeightsError(
            f"{file}: no ResNeXt backbone tensor matches the model (keys like {sorted(sd)[:5]}); "
            f"{_fix(option, '--resnext-imagenet-ckpt')}"
        )
    with torch.no_grad():
        for k, v in take.items():
            own[k].copy_(v)
        for att in model.attention_blocks():
            att.bn.weight.fill_(1.0)
            att.bn.bias.fill_(1.0)
    return load_report(
        file, len(take), [k for k in own if k not in take], [k for k in sd if k not in own], skipped=sorted(skipped)
    )


def load_resnext_imagenet(towers, path, option: str = "--resnext-imagenet-ckpt") -> dict:
    """The released code's audio init: torchvision resnext50_32x4d ImageNet conv/BN tensors into towers.audio."""
    return load_torchvision_resnext(towers.audio, path, option)


REAL_PRESETS = ("audioclip-rn50", "clip-vit-b16")


CODE_MODE_PARTS = {
    "image and text towers": ("clip_ckpt",),
    "audio tower": ("resnext_imagenet_ckpt", "esresnext_ckpt"),
}


def load_preset_weights(towers, cfg: dict) -> dict:
    """Load the towers' pretrained weights from the user's paths (never downloaded); return a
    report for the record. Tiny presets are random by definition; a real preset without its
    checkpoints runs only with --random-encoders (the record says so). In code mode a checkpoint
    for one part (CLIP, or the audio tower) without the other's is a ConfigError naming both options;
    with --random-encoders the missing part stays random, with a warning, and the report lists it under
    `random_towers` and `init`. `random_towers` names the towers left random ("clip", "audio")."""
    preset = cfg["towers"]
    if preset not in REAL_PRESETS:
        return {
            "init": f"random ({preset}: scaled-down towers, no pretrained weights exist)",
            "random_towers": ["clip", "audio"],
        }
    report: dict = {}
    random_towers: list[str] = []
    if preset == "audioclip-rn50":
        if cfg.get("audioclip_ckpt"):
            report["audioclip"] = load_audioclip(towers, Path(cfg["audioclip_ckpt"]), option="audioclip_ckpt")
    else:
        given = {part: [o for o in options if cfg.get(o)] for part, options in CODE_MODE_PARTS.items()}
        absent = [part for part, opts in given.items() if not opts]
        if len(absent) == 1:  # one part given, the other not: its tower would silently stay random
            (present,) = [part for part in given if part not in absent]
            what = " + ".join(given[present])
            need = " or ".join(CODE_MODE_PARTS[absent[0]])
            problem = f"mcil_audioclip: towers {preset}: {what} is set without {need}"
            if not cfg.get("random_encoders"):
                raise ConfigError(
                    f"{problem}, so the {absent[0]} would stay random; set clip_ckpt (OpenAI ViT-B-16.pt) and "
                    "resnext_imagenet_ckpt (torchvision resnext50_32x4d .pth, the release's audio init) with "
                    "`run_all.py --set KEY=PATH`, or pass --random-encoders to run with a random "
                    f"{absent[0]} (recorded as such)"
                )
            log.warning("%s: the %s stays random (--random-encoders; recorded)", problem, absent[0])
            random_towers.append("audio" if absent[0] == "audio tower" else "clip")
        if cfg.get("clip_ckpt"):
            report["clip"] = load_openai_clip(towers, Path(cfg["clip_ckpt"]), option="clip_ckpt")
        if cfg.get("esresnext_ckpt"):
            report["esresnext"] = load_esresnext(towers, Path(cfg["esresnext_ckpt"]), option="esresnext_ckpt")
        elif cfg.get("resnext_imagenet_ckpt"):
            report["resnext_imagenet"] = load_resnext_imagenet(
                towers, Path(cfg["resnext_imagenet_ckpt"]), option="resnext_imagenet_ckpt"
            )
    if not report:
        if not cfg.get("random_encoders"):
            need = (
                "audioclip_ckpt (AudioCLIP-Full-Training.pt)"
                if preset == "audioclip-rn50"
                else "clip_ckpt (OpenAI ViT-B-16.pt) and resnext_imagenet_ckpt (torchvision resnext50_32x4d .pth)"
            )
            raise ConfigError(
                f"mcil_audioclip: towers {preset} need pretrained weights: set {need} with "
                "`run_all.py --set KEY=PATH` (nothing is downloaded), or pass --random-encoders to run "
                "with random towers (recorded as such)"
            )
        report["init"] = f"random ({preset} with --random-encoders: NOT pretrained)"
        report["random_towers"] = ["clip", "audio"]
    elif random_towers:
        tower = "audio tower random (no resnext_imagenet_ckpt / esresnext_ckpt)"
        if random_towers == ["clip"]:
            tower = "image and text towers random (no clip_ckpt)"
        report["init"] = f"partly random ({preset} with --random-encoders: {tower}; NOT fully pretrained)"
        report["random_towers"] = random_towers
    return report
