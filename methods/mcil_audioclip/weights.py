"""Offline weight loading for the MCIL-AudioCLIP towers from user-supplied files.

../shared/reference/mcil_audioclip.md sections 3.2 and 7.3. Nothing is downloaded; a missing
path is a FileNotFoundError naming the option to set. Files are never unpickled beyond tensors:
plain checkpoints are read with `torch.load(weights_only=True)` (a file that needs arbitrary
objects is refused with `UnsafeCheckpointError`), OpenAI `.pt` TorchScript archives with
`torch.jit.load(...).state_dict()`.

Key layouts (verified against the reference sources, see tests/methods/test_mcil_towers.py):
- OpenAI CLIP (`RN50.pt`, `ViT-B-16.pt`): `visual.*`, `transformer.resblocks.N.*`,
  `token_embedding.weight`, `positional_embedding`, `ln_final.*`, `text_projection`,
  `logit_scale`, plus the int entries `input_resolution`, `context_length`, `vocab_size`
  (dropped). open_clip's CLIP uses the same names (its own OpenAI loader loads these strictly).
- AudioCLIP (`AudioCLIP-Full-Training.pt`, `-Partial-`): one plain state dict of the whole
  AudioCLIP module: the OpenAI RN50 CLIP keys above, `audio.*` (ESResNeXtFBSP, including the
  `audio.window` buffer), `logit_scale_ai`, `logit_scale_at`.
- `ESRNXFBSP.pt`: a plain ESResNeXtFBSP state dict without prefix (AudioCLIP loads it into
  `self.audio` directly, `model/audioclip.py`); its `fc` may be an AudioSet head of another size.
- torchvision `resnext50_32x4d` (IMAGENET1K_V1 `.pth`): `conv1`, `bn1`, `layerK.*`, `fc` (1000).

Every loader returns a report {file, sha256 (first 16 hex digits), loaded, missing, unexpected, ...}.
MoE parameters (names containing `.moe.`) are the only CLIP keys allowed to be missing (and BN
`num_batches_tracked` counters, which torch fills in); an unexpected key or a shape mismatch is
a ValueError naming the file and the keys.
"""
from __future__ import annotations

import hashlib
import pickle
import warnings
import zipfile
from pathlib import Path

import torch

from methods.mcil_audioclip.esresnext import load_torchvision_resnext

OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
AUDIOCLIP_SCALE_KEYS = ("logit_scale_ai", "logit_scale_at")
OPTION_FILES = {
    "--clip-ckpt": "an OpenAI CLIP checkpoint (ViT-B-16.pt / RN50.pt)",
    "--audioclip-ckpt": "an AudioCLIP checkpoint (AudioCLIP-Full-Training.pt)",
    "--esrnx-ckpt": "the ESResNeXt-fbsp checkpoint (ESRNXFBSP.pt)",
    "--resnext-imagenet-ckpt": "torchvision's resnext50_32x4d ImageNet weights (resnext50_32x4d-7cdf4587.pth)",
}


class UnsafeCheckpointError(ValueError):
    """The file would need unpickling of arbitrary Python objects; it is not read."""


# ---- files -----------------------------------------------------------------------------------------
def sha256_16(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def file_report(path, option: str) -> dict:
    """{file, sha256} for an existing file; FileNotFoundError naming `option` otherwise."""
    what = OPTION_FILES.get(option, "the checkpoint")
    if not path:
        raise FileNotFoundError(f"no checkpoint given: set {option} to {what} (nothing is downloaded)")
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{option}: checkpoint file {str(p)!r} not found; set {option} to {what} (nothing is downloaded)")
    return {"file": str(p), "sha256": sha256_16(p)}


def is_torchscript_archive(path) -> bool:
    """A TorchScript zip holds `<name>/constants.pkl` and `<name>/code/`; a torch.save zip does not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


def _as_state_dict(obj, path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):  # common training-checkpoint wrappers
            if key in obj and isinstance(obj[key], dict) and not isinstance(obj.get(key), torch.Tensor):
                obj = obj[key]
                break
        bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        if not bad:
            return dict(obj)
        raise ValueError(f"{path}: not a state dict of tensors (non-tensor entries: {bad[:8]})")
    raise ValueError(f"{path}: not a state dict (got {type(obj).__name__})")


def read_plain_state_dict(path) -> dict[str, torch.Tensor]:
    """torch.load(weights_only=True) of a plain state dict; refuses TorchScript archives and pickled objects."""
    if is_torchscript_archive(path):
        raise ValueError(f"{path}: is a TorchScript archive (an OpenAI CLIP .pt); read it with load_openai_clip / --clip-ckpt")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as ex:
        lines = [ln.strip() for ln in str(ex).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "Unsupported" in ln or "WeightsUnpickler" in ln), lines[0] if lines else "")
        raise UnsafeCheckpointError(
            f"{path}: refused: reading it needs unpickling of arbitrary Python objects, which is never done "
            f"(torch.load(weights_only=True) failed: {why}). Re-save it as a plain state dict of tensors "
            f"(torch.save({{name: tensor}}, path)) in a session that trusts the file."
        ) from ex
    return _as_state_dict(obj, path)


def read_clip_state_dict(path) -> dict[str, torch.Tensor]:
    """An OpenAI CLIP file: TorchScript archive (torch.jit.load, no unpickling) or a plain state dict."""
    if is_torchscript_archive(path):
        with warnings.catch_warnings():  # torch.jit.load is deprecated in torch 2.11 but still the only reader
            warnings.simplefilter("ignore", DeprecationWarning)
            sd = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    else:
        sd = read_plain_state_dict(path)
    return {k: v for k, v in sd.items() if k not in OPENAI_EXTRA_KEYS}


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
            counts = tuple(len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{b}.")}) for b in (1, 2, 3, 4))
            out = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
            img = f"ModifiedResNet(layers={counts}, width={sd['visual.layer1.0.conv1.weight'].shape[0]}) @ {out * 32}px"
        else:
            img = "no recognised image tower"
        t_layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
        text = (f"text {t_layers}x{sd['ln_final.weight'].shape[0]} (ctx {sd['positional_embedding'].shape[0]}, "
                f"vocab {sd['token_embedding.weight'].shape[0]})")
        return f"{img}, {text}, embed_dim {sd['text_projection'].shape[1]}"
    except (KeyError, IndexError, AttributeError):
        return "an unrecognised CLIP layout"


def _is_moe(key: str) -> bool:
    return ".moe." in f".{key}"


def _tolerated_missing(key: str) -> bool:
    return key.endswith("num_batches_tracked")  # filled with 0 by BatchNorm when absent


def _short(keys: list[str], n: int = 12) -> str:
    return f"{keys[:n]}{f' (+{len(keys) - n} more)' if len(keys) > n else ''}"


def _check_layout(own: dict, sd: dict, path, what: str, allow_missing=lambda k: False) -> tuple[list, list]:
    """(missing, mismatched) after raising on unexpected keys, disallowed missing keys or shape mismatches."""
    unexpected = sorted(k for k in sd if k not in own)
    missing = sorted(k for k in own if k not in sd)
    bad_missing = [k for k in missing if not allow_missing(k)]
    mismatched = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    if unexpected or bad_missing or mismatched:
        parts = [f"{path}: does not fit {what}"]
        if unexpected:
            parts.append(f"unexpected keys: {_short(unexpected)}")
        if bad_missing:
            parts.append(f"missing keys: {_short(bad_missing)}")
        if mismatched:
            parts.append(f"shape mismatches: {_short(mismatched, 8)}")
        raise ValueError("; ".join(parts))
    return missing, mismatched


def _load_clip_part(towers, sd: dict, path) -> tuple[int, list[str]]:
    """Load OpenAI-layout CLIP tensors into towers.clip: only MoE parameters may be missing."""
    own = towers.clip.state_dict()
    preset = towers.preset
    what = (f"preset {preset.name!r} ({preset.summary()}); the file holds {describe_clip_state(sd)}")
    missing, _ = _check_layout(own, sd, path, what, allow_missing=lambda k: _is_moe(k) or _tolerated_missing(k))
    result = towers.clip.load_state_dict(sd, strict=False)
    left = [k for k in result.missing_keys if not (_is_moe(k) or _tolerated_missing(k))]
    if result.unexpected_keys or left:  # cannot happen after the check; kept as a guard
        raise ValueError(f"{path}: unexpected {result.unexpected_keys}, missing {left}")
    return len(sd), missing


def _load_audio_part(audio, sd: dict, path, allow_fc_mismatch: bool = False) -> tuple[int, list[str], list[str]]:
    """Load an ESResNeXtFBSP state dict: strict, except a missing `window` (the computed one equals
    scipy's) / `num_batches_tracked`, and (ESRNXFBSP.pt) an `fc` head of another size, which is skipped."""
    own = audio.state_dict()
    skipped = []
    if allow_fc_mismatch:
        skipped = sorted(k for k in sd if k.startswith("fc.") and k in own and tuple(sd[k].shape) != tuple(own[k].shape))
        sd = {k: v for k, v in sd.items() if k not in skipped}
    what = f"the ESResNeXt-fbsp audio tower ({audio.num_classes}-d, n_fft {audio.n_fft})"
    missing, _ = _check_layout(own, sd, path, what,
                               allow_missing=lambda k: k == "window" or _tolerated_missing(k) or k in skipped)
    audio.load_state_dict(sd, strict=not missing)
    return len(sd), missing, skipped


# ---- loaders ---------------------------------------------------------------------------------------
def load_openai_clip(towers, path, option: str = "--clip-ckpt") -> dict:
    """OpenAI CLIP weights (TorchScript `.pt` or a plain state dict) into `towers.clip`."""
    report = file_report(path, option)
    sd = read_clip_state_dict(report["file"])
    loaded, missing = _load_clip_part(towers, sd, report["file"])
    report.update(loaded=loaded, missing=missing, unexpected=[])
    return report


def load_audioclip(towers, path, option: str = "--audioclip-ckpt") -> dict:
    """An AudioCLIP checkpoint: `audio.*` -> towers.audio (strict), the RN50 CLIP keys -> towers.clip;
    the report also holds the stored (log) `logit_scale_ai` / `logit_scale_at` values as floats (None if absent)."""
    report = file_report(path, option)
    sd = read_plain_state_dict(report["file"])
    audio_sd = {k[len("audio."):]: v for k, v in sd.items() if k.startswith("audio.")}
    if not audio_sd:
        raise ValueError(f"{report['file']}: no 'audio.*' keys; not an AudioCLIP checkpoint "
                         f"(for an OpenAI CLIP file use {next(iter(OPTION_FILES))})")
    scales = {k: float(sd[k]) if k in sd else None for k in AUDIOCLIP_SCALE_KEYS}
    clip_sd = {k: v for k, v in sd.items() if not k.startswith("audio.") and k not in AUDIOCLIP_SCALE_KEYS}
    clip_sd = {k: v for k, v in clip_sd.items() if k not in OPENAI_EXTRA_KEYS}
    n_clip, clip_missing = _load_clip_part(towers, clip_sd, report["file"])
    n_audio, audio_missing, _ = _load_audio_part(towers.audio, audio_sd, report["file"])
    report.update(loaded=n_clip + n_audio, missing=clip_missing + [f"audio.{k}" for k in audio_missing],
                  unexpected=[], **scales)
    return report


def load_esresnext(towers, path, option: str = "--esrnx-ckpt") -> dict:
    """A standalone ESResNeXt-fbsp state dict (`ESRNXFBSP.pt`; an `audio.` or `module.` prefix is stripped)
    into towers.audio; an `fc` of another size (AudioSet head) is skipped and reported."""
    report = file_report(path, option)
    sd = read_plain_state_dict(report["file"])
    for prefix in ("module.", "audio."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    loaded, missing, skipped = _load_audio_part(towers.audio, sd, report["file"], allow_fc_mismatch=True)
    report.update(loaded=loaded, missing=missing, unexpected=[], skipped=skipped)
    return report


def load_resnext_imagenet(towers, path, option: str = "--resnext-imagenet-ckpt") -> dict:
    """The released code's audio init: torchvision resnext50_32x4d ImageNet conv/BN tensors into towers.audio."""
    return load_torchvision_resnext(towers.audio, path, option)


REAL_PRESETS = ("audioclip-rn50", "clip-vit-b16")


def load_preset_weights(towers, cfg: dict) -> dict:
    """Load the towers' pretrained weights from the user's paths (never downloaded); return a
    report for the record. Tiny presets are random by definition; a real preset without its
    checkpoints runs only with --random-encoders (the record says so)."""
    preset = cfg["towers"]
    if preset not in REAL_PRESETS:
        return {"init": f"random ({preset}: scaled-down towers, no pretrained weights exist)"}
    report: dict = {}
    if preset == "audioclip-rn50":
        if cfg.get("audioclip_ckpt"):
            report["audioclip"] = load_audioclip(towers, Path(cfg["audioclip_ckpt"]), option="audioclip_ckpt")
    else:
        if cfg.get("clip_ckpt"):
            report["clip"] = load_openai_clip(towers, Path(cfg["clip_ckpt"]), option="clip_ckpt")
        if cfg.get("esresnext_ckpt"):
            report["esresnext"] = load_esresnext(towers, Path(cfg["esresnext_ckpt"]), option="esresnext_ckpt")
        elif cfg.get("resnext_imagenet_ckpt"):
            report["resnext_imagenet"] = load_resnext_imagenet(towers, Path(cfg["resnext_imagenet_ckpt"]), option="resnext_imagenet_ckpt")
    if not report:
        if not cfg.get("random_encoders"):
            need = "audioclip_ckpt (AudioCLIP-Full-Training.pt)" if preset == "audioclip-rn50" else \
                "clip_ckpt (OpenAI ViT-B-16.pt) and resnext_imagenet_ckpt (torchvision resnext50_32x4d .pth)"
            raise ValueError(f"mcil_audioclip: towers {preset} need pretrained weights: set {need} with "
                             "`run_all.py --set KEY=PATH` (nothing is downloaded), or pass --random-encoders to run "
                             "with random towers (recorded as such)")
        report["init"] = f"random ({preset} with --random-encoders: NOT pretrained)"
    return report
