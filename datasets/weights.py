"""The one reader of checkpoint files and the one report of what was loaded from them.

Every pretrained weight the harness uses comes from a local file the user names; nothing is
downloaded and nothing is unpickled beyond tensors:

- plain state dicts (`.pth`, `.pt`, `.bin`) through `torch.load(weights_only=True)`: tensors, plus
  `argparse.Namespace` (the training `args` MAE-style checkpoints carry); a `{'model': ...}` or
  `{'state_dict': ...}` wrapper is unwrapped. A file that needs any other Python object is refused
  (`WeightsError`), never unpickled;
- `.safetensors` files through safetensors;
- OpenAI's CLIP `.pt` files, TorchScript archives, through `torch.jit.load(...).state_dict()` (an
  archive is not unpickled as Python objects); their three int entries `input_resolution`,
  `context_length`, `vocab_size` are dropped.

`check_keys` compares a state dict with a model's and raises one `WeightsError` naming the file,
the checkpoint expected, every unexpected key, missing key and shape mismatch, and the fix; `load_report`
is the record of a load: {file, sha256 (first 16 hex digits), loaded, missing, unexpected}.
`checkpoint_record` is the full-sha256 record a feature store's meta keeps of its checkpoints.
"""

from __future__ import annotations

import argparse
import pickle
import re
import warnings
import zipfile
from functools import lru_cache
from pathlib import Path

import torch

from datasets.errors import WeightsError
from datasets.io import config_hash, file_sha256

OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")  # ints in OpenAI's TorchScript files
WRAPPER_KEYS = ("model", "state_dict")  # training-checkpoint wrappers around the state dict
RESAVE = (
    "re-save only its state dict of tensors (torch.save(ckpt['model'], 'weights.pth')) in a session that "
    "trusts the file"
)


# ----------------------------------------------------------------------------- files


@lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))


def checkpoint_sha256(path: Path) -> str:
    """sha256 of a checkpoint file (datasets.io.file_sha256), computed once per file state in a process."""
    st = Path(path).stat()
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def checkpoint_record(path: Path, files: list[Path] | None = None) -> dict:
    """What a store's meta keeps of a checkpoint: {"kind": "file", "sha256": ...}, or for a directory
    {"kind": "directory", "sha256": {relative name: sha256}} over `files` (default: every file in it)."""
    path = Path(path)
    if path.is_file():
        return {"kind": "file", "sha256": checkpoint_sha256(path)}
    files = sorted(f for f in path.rglob("*") if f.is_file()) if files is None else files
    return {"kind": "directory", "sha256": {str(Path(f).relative_to(path)): checkpoint_sha256(f) for f in files}}


def load_report(path: Path, loaded: int, missing, unexpected, files: list[Path] | None = None, **extra) -> dict:
    """The record of one load: {file, sha256 (16 hex; of the per-file hashes for a directory), loaded,
    missing, unexpected, **extra}."""
    path = Path(path)
    digest = checkpoint_sha256(path)[:16] if path.is_file() else config_hash(checkpoint_record(path, files)["sha256"])
    return {
        "file": str(path),
        "sha256": digest,
        "loaded": int(loaded),
        "missing": sorted(missing),
        "unexpected": sorted(unexpected),
        **extra,
    }


def is_torchscript_archive(path: Path) -> bool:
    """A TorchScript zip holds `<name>/constants.pkl` and `<name>/code/`; a torch.save zip does not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


def require_file(path, what: str, fix: str = "pass the path of the downloaded file") -> Path:
    """`path` as a Path when it is a file, else a WeightsError naming it, the checkpoint and the fix."""
    if not path or not Path(path).expanduser().is_file():
        raise WeightsError(f"{path}: {what} checkpoint not found; {fix}")
    return Path(path).expanduser()


# ----------------------------------------------------------------------------- readers


def _reason(e: Exception) -> str:
    """The informative line of a torch.load error (its WeightsUnpickler line when there is one)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return next((ln for ln in lines if "Unsupported" in ln or "WeightsUnpickler" in ln), lines[0] if lines else "")


def _tensors(obj, path: Path, what: str) -> dict[str, torch.Tensor]:
    """Unwrap `{'model': sd}` / `{'state_dict': sd}`; the state dict must map names to tensors."""
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        got = f"an empty {type(obj).__name__}" if isinstance(obj, dict) else type(obj).__name__
        raise WeightsError(
            f"{path}: not a {what} state dict: expected a mapping of names to tensors (optionally under "
            f"{' or '.join(repr(k) for k in WRAPPER_KEYS)}), got {got}; pass the {what} checkpoint file"
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise WeightsError(
            f"{path}: not a {what} state dict of tensors (non-tensor entries: {short_list(bad, 8)}); {RESAVE}"
        )
    return dict(obj)


def read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A plain state dict from `path`: `.safetensors`, else torch.load(weights_only=True) (see the module docstring).

    A TorchScript archive, a file that needs other pickled objects, a truncated or foreign file is a
    WeightsError naming the file and the fix.
    """
    path = require_file(path, what)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return _tensors(load_file(str(path)), path, what)
        except WeightsError:
            raise
        except Exception as e:
            raise WeightsError(
                f"{path}: unreadable safetensors file ({type(e).__name__}: {e}); download it again"
            ) from e
    if is_torchscript_archive(path):
        raise WeightsError(
            f"{path}: is a TorchScript archive (an OpenAI CLIP .pt), not the {what} state dict expected "
            "here; pass it as the CLIP checkpoint (--clip-ckpt / clip_ckpt), or the right file here"
        )
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):
            raise WeightsError(
                f"{path}: refused: reading it needs unpickling of arbitrary Python objects, which is never done "
                f"(torch.load(weights_only=True) failed: {_reason(e)}). Re-save it as a plain state dict of tensors "
                "(torch.save({name: tensor}, path)) in a session that trusts the file."
            ) from e
        raise WeightsError(
            f"{path}: cannot load the {what} checkpoint with torch.load(weights_only=True) "
            f"({_reason(e)}); it is not a torch checkpoint or it is truncated: download it again"
        ) from e
    except Exception as e:  # truncated zip, not a torch file, ...
        raise WeightsError(
            f"{path}: cannot load the {what} checkpoint with torch.load(weights_only=True) ({type(e).__name__}: "
            f"{_reason(e)}). If the file is truncated, download it again; if it holds other pickled objects, {RESAVE}"
        ) from e
    return _tensors(obj, path, what)


def read_torchscript_state_dict(path: Path, what: str, fix: str) -> dict[str, torch.Tensor]:
    """The state dict of a TorchScript archive (torch.jit.load, map_location cpu); `fix` says which file to pass."""
    path = require_file(path, what, fix)
    try:
        with warnings.catch_warnings():  # torch 2.11 marks TorchScript deprecated; OpenAI's CLIP files are TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # RuntimeError for a non-TorchScript file, truncated archives, ...
        first = str(e).splitlines()[0] if str(e) else ""
        raise WeightsError(
            f"{path}: not a TorchScript archive ({type(e).__name__}: {first}); {fix}; if the file is "
            "truncated, download it again"
        ) from e
    return dict(module.state_dict())


def read_openai_clip(
    path: Path, plain: bool = True, fix: str = "pass OpenAI's CLIP .pt file"
) -> dict[str, torch.Tensor]:
    """An OpenAI CLIP checkpoint without its int entries: the TorchScript archive as released, or (with
    `plain`) a plain state dict of the same tensors."""
    path = require_file(path, "CLIP", fix)
    if plain and not is_torchscript_archive(path):
        sd = read_state_dict(path, "CLIP")
    else:
        sd = read_torchscript_state_dict(path, "CLIP", fix)
    return {k: v for k, v in sd.items() if k not in OPENAI_EXTRA_KEYS}


# ----------------------------------------------------------------------------- key checks


def summarise_keys(keys) -> str:
    """Compact listing: block indices folded, e.g. 'decoder_blocks.*.attn.qkv.weight (x8)'."""
    groups: dict[str, int] = {}
    for k in sorted(keys):
        g = re.sub(r"\.\d+\.", ".*.", k)
        groups[g] = groups.get(g, 0) + 1
    return ", ".join(f"{g} (x{n})" if n > 1 else g for g, n in groups.items()) or "none"


def short_list(keys, n: int = 12) -> str:
    keys = list(keys)
    return f"{keys[:n]}{f' (+{len(keys) - n} more)' if len(keys) > n else ''}"


def check_keys(
    own: dict, sd: dict, path: Path, what: str, fix: str = "", allow_missing=None, allow_unexpected=None
) -> tuple[list[str], list[str]]:
    """(missing, unexpected) keys of state dict `sd` against the model's `own`, after raising one WeightsError
    naming the file, the checkpoint expected (`what`), every unexpected key, missing key and shape mismatch that
    `allow_unexpected` / `allow_missing` (key -> bool) do not accept, and `fix` (which file to pass instead)."""
    unexpected = sorted(k for k in sd if k not in own)
    missing = sorted(k for k in own if k not in sd)
    bad_unexpected = [k for k in unexpected if not (allow_unexpected and allow_unexpected(k))]
    bad_missing = [k for k in missing if not (allow_missing and allow_missing(k))]
    mismatched = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sd
        if k in own and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if bad_unexpected or bad_missing or mismatched:
        parts = [f"{path}: does not fit {what}"]
        if bad_unexpected:
            parts.append(f"unexpected {short_list(bad_unexpected)}")
        if bad_missing:
            parts.append(f"missing {short_list(bad_missing)}")
        if mismatched:
            parts.append(f"shape mismatches: {short_list(mismatched, 8)}")
        if fix:
            parts.append(fix)
        raise WeightsError("; ".join(parts))
    return missing, unexpected
