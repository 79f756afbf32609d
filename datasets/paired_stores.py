"""Where a paired image + audio dataset's stores are and which views they hold.

A paired dataset (`datasets.adapters.paired_folder` and its subclasses) has a raw store
`<data_root>/cache/store/<name>-<hash>` (CLIP-normalised images in `clip_image`, audio in a clip bank,
see `datasets.pairing`) and, once `python -m datasets.extraction.paired` ran for it, a frozen-encoder
features store `<name>-features-<hash>` next to it, which adds the views `audio` and `visual` and links
the raw views. The adapters find the features store here (`features_store_path`) without importing the
extraction; the extraction writes it where this module looks.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from datasets.base import MODALITY_VIEWS
from datasets.errors import DatasetError
from datasets.store import FeatureStore

RAW_IMAGE_VIEW = "clip_image"  # the raw paired store's image view
LEGACY_IMAGE_VIEWS = ("image",)  # accepted too: the raw stores written before the rename
FEATURE_VIEWS = MODALITY_VIEWS["audio-visual"]  # what the extraction adds: ("audio", "visual")
STORE_INFIX = "-features-"
AUDIO_CKPT_HELP = "PATH/TO/audiomae_pretrained.pth"
CLIP_CKPT_HELP = "PATH/TO/ViT-B-16.pt"


def store_dir(data_root: Path) -> Path:
    return Path(data_root) / "cache" / "store"


def image_view(store: FeatureStore) -> str:
    """The name of the raw image view in `store` (RAW_IMAGE_VIEW, or a legacy name)."""
    for name in (RAW_IMAGE_VIEW, *LEGACY_IMAGE_VIEWS):
        if name in store.views:
            return name
    raise DatasetError(
        f"{store.path}: no raw image view ({RAW_IMAGE_VIEW!r}) in this store (views "
        f"{sorted(store.views)}); "
        "it is not a paired image + audio store"
    )


def raw_store_of(store: FeatureStore) -> FeatureStore:
    """The raw paired store behind `store`: itself, or for a features store the store it was derived from."""
    rel = store.meta.get("features_of")
    if rel is None:
        return store
    path = Path(os.path.normpath(store.path / rel))
    if not (path / "manifest.json").is_file():
        raise DatasetError(
            f"{store.path}: derived from the raw store {path}, which is missing; open the dataset again to rebuild it"
        )
    return FeatureStore(path)


def read_manifest(path: Path) -> dict | None:
    try:
        return json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def newest_raw_store(adapter, folder: Path) -> Path | None:
    """The most recently published `<name>-<16 hex>` paired store (datasets.adapters.paired_folder's naming), if any."""
    pattern = re.compile(rf"{re.escape(adapter.name)}-[0-9a-f]{{16}}")
    found = []
    for path in folder.glob(f"{adapter.name}-*"):
        manifest = path / "manifest.json"
        if pattern.fullmatch(path.name) and manifest.is_file():
            found.append((manifest.stat().st_mtime_ns, path.name, path))
    return max(found)[2] if found else None


def features_store_path(adapter, data_root: Path, raw: FeatureStore | Path | None = None) -> Path | None:
    """The newest complete features store of `adapter` under `data_root`, or None.

    With `raw` (the raw paired store, or its directory), only a features store derived from exactly
    that store (same fingerprint) counts: pass it from `open()`. Without it (for `available_views()`:
    a few manifest reads, no scan), the raw store is taken to be the adapter's most recently built
    `<name>-<hash>` store when there is one (an edited folder builds a new one, whose features do
    not exist yet), else any features store whose raw store is still on disk unchanged counts.
    Passing a features store as `raw` means the raw store it was derived from.
    """
    if isinstance(raw, FeatureStore):
        raw = raw_store_of(raw)
    elif raw is not None:
        manifest = read_manifest(Path(raw))
        rel = (manifest or {}).get("meta", {}).get("features_of")
        raw = Path(os.path.normpath(Path(raw) / rel)) if rel else Path(raw)
    folder = store_dir(data_root)
    if raw is None and folder.is_dir():
        raw = newest_raw_store(adapter, folder)
    want = None
    if raw is not None:
        want = raw.fingerprint if isinstance(raw, FeatureStore) else ((read_manifest(raw) or {}).get("fingerprint"))
        if want is None:
            return None
    if not folder.is_dir():
        return None
    found = []
    for path in folder.glob(f"{adapter.name}{STORE_INFIX}*"):
        if path.suffix == ".partial" or not path.is_dir():
            continue
        manifest = read_manifest(path)
        meta = (manifest or {}).get("meta", {})
        if not manifest or meta.get("dataset") != adapter.name or "features_of" not in meta:
            continue
        if want is not None:
            if meta.get("raw_fingerprint") != want:
                continue
        else:
            origin = read_manifest(Path(os.path.normpath(path / meta["features_of"])))
            if not origin or origin.get("fingerprint") != meta.get("raw_fingerprint"):
                continue
        found.append(((path / "manifest.json").stat().st_mtime_ns, path.name, path))
    return max(found)[2] if found else None


def extraction_command(adapter, data_root: Path | str = "data") -> str:
    """The command that writes `adapter`'s features store (checkpoint paths as placeholders)."""
    parts = ["python -m datasets.extraction.paired"]
    root = getattr(adapter, "user_root", None)
    if root is not None:  # a run-time paired folder: it must be registered in the extraction process too
        parts.append(f"--paired-folder {root}={adapter.name}")
    parts.append(f"--dataset {adapter.name}")
    if Path(data_root) != Path("data"):
        parts.append(f"--data-root {data_root}")
    parts.append(f"--audio-ckpt {AUDIO_CKPT_HELP} --clip-ckpt {CLIP_CKPT_HELP} --trust-pickle")
    return " ".join(parts)
