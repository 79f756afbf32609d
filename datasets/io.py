"""Atomic writes, hashing and device choice: the small IO helpers every layer uses (one copy each)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from datasets.errors import ConfigError, DatasetError, HarnessError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same directory, fsync, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def config_hash(obj) -> str:
    """Stable short hash of a JSON-serialisable config."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def pick_device(name: str) -> torch.device:
    """`auto` (CUDA when present), `cpu`, `cuda`, `cuda:1` ...; CUDA asked for but absent is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    return device


def read_yaml(path: Path, fix: str, mapping: str | None = None, error: type[HarnessError] = DatasetError):
    """A YAML file's content (an empty file is None, or {} when a mapping is expected). Invalid YAML, or anything
    but a mapping when `mapping` describes the expected keys, is `error` naming the file and `fix`."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None) or str(e).splitlines()[0]
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise error(f"{path}: not valid YAML ({where}{problem}); {fix}") from None
    if mapping is None:
        return data
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise error(f"{path}: expected a mapping ({mapping}), got {type(data).__name__}; {fix}")
    return data
