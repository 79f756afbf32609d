"""Columnar feature store: one memory-mapped array per view, plus the sample table.

Layout of a store directory (no pickle anywhere; `np.load(..., allow_pickle=False)`):

    manifest.json          format version, dataset, class names, views {name: shape, dtype},
                           meta (encoders, pretrained flags, checkpoint hashes, conversion errors)
    ids.json               sample ids, row order
    labels.npy             int64 dataset class index per row
    splits.npy             int8 split code per row (0 train, 1 val, 2 test)
    views/<name>.npy       (N, *shape) array, opened memory-mapped

A view may instead be *linked*: its manifest entry carries `"link": {"store": REL, "view": V,
"fingerprint": F}`, REL the path of another store directory relative to this one (e.g.
`../ave-raw`), and `array` opens that store's view V memory-mapped instead of a file of its own.
Derived stores (e.g. frozen-encoder features over a raw image store) expose the raw views this
way without copying them. Both stores must hold the same sample table (same table digest);
opening a store whose link target holds another table, or is gone, is a DatasetError naming
both paths and the fix. `StoreWriter(..., links={view: (target_dir, target_view)})` writes them.

A store is written by `StoreWriter` into `<dir>.partial/` and renamed to `<dir>` only when
every row of every view is filled, so a reader never sees a half-written store. Extraction
is resumable: the writer records how many rows of each view are filled (`progress.json`,
replaced atomically after each batch) and a new writer over the same partial directory
continues from there.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from datasets.base import SPLITS, SampleTable
from datasets.errors import DatasetError
from datasets.io import atomic_write_text, config_hash

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ViewSpec:
    name: str
    shape: tuple[int, ...]  # per-sample shape, e.g. (768,) or (8, 196, 768)
    dtype: str = "float16"

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype}


_LINKS_OPENING = threading.local()  # store directories whose links are being resolved (cycle guard)


def _link_spec(target: FeatureStore, view: str, base: Path) -> dict:
    """Manifest entry of a view linked to `target`'s `view` (itself resolved if it is a link)."""
    if view not in target.views:
        raise DatasetError(f"{target.path}: has no view {view!r} to link to; it has {sorted(target.views)}")
    if view in target.links:  # link to the array's owner, so reading never follows a chain
        owner, owner_view = target.links[view]
        return _link_spec(FeatureStore(owner), owner_view, base)
    rel = os.path.relpath(target.path.resolve(), Path(base).resolve())
    return {"store": Path(rel).as_posix(), "view": view, "fingerprint": target.fingerprint}


def link_mismatch_error(store_path: Path, target_path: Path, view: str) -> DatasetError:
    return DatasetError(
        f"{store_path}: view {view!r} is linked to {target_path}, which now holds a different sample table "
        f"(table digests differ: the linked store was rebuilt after {store_path.name} was derived from it); "
        f"delete {store_path} and derive it again from the current {target_path.name}"
    )


REBUILD = "delete the store folder and run the same command again to rebuild it"


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: unreadable or incomplete ({e}); {REBUILD}") from None


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: unreadable or incomplete ({e}); {REBUILD}") from None


class FeatureStore:
    """Read side. Views are memory-mapped; `gather` is one fancy-index operation per view."""

    def __init__(self, path: Path):
        self.path = Path(path)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.is_file():
            raise DatasetError(
                f"{manifest_path}: not a feature store (no manifest); rebuild it by re-running the import/extraction"
            )
        self.manifest = _read_json(manifest_path)
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise DatasetError(
                f"{manifest_path}: store format {self.manifest.get('format_version')} "
                f"!= {FORMAT_VERSION}; delete the store and rebuild it"
            )
        self.dataset: str = self.manifest["dataset"]
        self.class_names: list[str] = self.manifest["class_names"]
        self.meta: dict = self.manifest.get("meta", {})
        self.ids: list[str] = _read_json(self.path / "ids.json")
        self.labels = _read_npy(self.path / "labels.npy")
        self.splits = _read_npy(self.path / "splits.npy")
        self.views = {k: ViewSpec(k, tuple(v["shape"]), v["dtype"]) for k, v in self.manifest["views"].items()}
        #: linked views: name -> (target store directory, target view name); see the module docstring
        self.links: dict[str, tuple[Path, str]] = {
            k: (Path(os.path.normpath(self.path / v["link"]["store"])), v["link"]["view"])
            for k, v in self.manifest["views"].items()
            if v.get("link")
        }
        self._arrays: dict[str, np.ndarray] = {}
        self._table_digest: str | None = None
        for name, spec in self.views.items():
            arr = self.array(name)
            if arr.shape != (len(self.ids), *spec.shape):
                where = (
                    f"{self.path}: view {name!r} linked to {self.links[name][0]} view {self.links[name][1]!r}"
                    if name in self.links
                    else str(self.path / "views" / (name + ".npy"))
                )
                fix = (
                    f"the linked store was rebuilt differently; delete {self.path} and derive it again"
                    if name in self.links
                    else "the store is corrupt, delete it and rebuild"
                )
                raise DatasetError(f"{where}: shape {arr.shape} != expected {(len(self.ids), *spec.shape)}; {fix}")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def table_digest(self) -> str:
        """`SampleTable.digest()` of this store's table (what linked stores must share)."""
        if self._table_digest is None:
            self._table_digest = self.table().digest()
        return self._table_digest

    def _linked_array(self, view: str) -> np.ndarray:
        target_path, target_view = self.links[view]
        if not (target_path / "manifest.json").is_file():
            raise DatasetError(
                f"{self.path}: view {view!r} is linked to the store {target_path}, which is missing or incomplete; "
                f"restore or rebuild {target_path}, or delete {self.path} and derive it again"
            )
        opening = getattr(_LINKS_OPENING, "paths", None)
        if opening is None:
            opening = _LINKS_OPENING.paths = set()
        key = str(self.path.resolve())
        if key in opening:
            raise DatasetError(
                f"{self.path}: linked views form a cycle through {target_path}; delete the derived store and rebuild it"
            )
        opening.add(key)
        try:
            target = FeatureStore(target_path)
        finally:
            opening.discard(key)
        if target.table_digest != self.table_digest:
            raise link_mismatch_error(self.path, target_path, view)
        if target_view not in target.views:
            raise DatasetError(
                f"{self.path}: view {view!r} is linked to view "
                f"{target_view!r} of {target_path}, which has no such view "
                f"(it has {sorted(target.views)}); delete {self.path} and derive it again"
            )
        return target.array(target_view)

    def array(self, view: str) -> np.ndarray:
        if view not in self._arrays:
            if view not in self.views:
                raise KeyError(f"store {self.path} has no view {view!r}; it has {sorted(self.views)}")
            if view in self.links:
                self._arrays[view] = self._linked_array(view)
                return self._arrays[view]
            path = self.path / "views" / f"{view}.npy"
            try:
                self._arrays[view] = np.load(path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as e:
                raise DatasetError(f"{path}: unreadable view array ({e}); delete the store and rebuild it") from e
        return self._arrays[view]

    def rows(self, split: str, classes=None) -> np.ndarray:
        """Row indices of one split, optionally restricted to dataset class indices `classes`."""
        mask = self.splits == SPLITS.index(split)
        if classes is not None:
            mask &= np.isin(self.labels, np.asarray(list(classes)))
        return np.flatnonzero(mask)

    def gather(self, view: str, rows, device="cpu", dtype=None) -> torch.Tensor:
        """Rows of one view as a tensor: one vectorised index into the memory map."""
        rows = np.asarray(rows.cpu() if torch.is_tensor(rows) else rows, dtype=np.int64)
        # Sorted reads are sequential on disk; undo the permutation afterwards.
        order = np.argsort(rows, kind="stable")
        block = torch.from_numpy(np.ascontiguousarray(self.array(view)[rows[order]]))
        out = torch.empty_like(block)
        out[torch.from_numpy(order)] = block
        return out.to(device=device, dtype=dtype or out.dtype, non_blocking=True)

    def table(self) -> SampleTable:
        return SampleTable(list(self.ids), self.labels.copy(), np.array(SPLITS)[self.splits], list(self.class_names))


class StoreWriter:
    """Write side: fill views in row batches, resumably, then publish atomically."""

    def __init__(
        self,
        path: Path,
        table: SampleTable,
        views: list[ViewSpec],
        meta: dict,
        source: str,
        required_splits: tuple[str, ...] = SPLITS,
        links: dict | None = None,
    ):
        """`links` {view: (store directory or FeatureStore, its view name)}: views this store exposes
        from another store over the same sample table, without copying (see the module docstring)."""
        if required_splits == SPLITS:
            table.validate(source)  # any table type (e.g. the multi-label table) checks itself
        else:
            table.validate(source, required_splits)  # narrower for stores that are no training set, e.g. clip banks
        self.final = Path(path)
        self.partial = self.final.with_name(self.final.name + ".partial")
        self.table, self.views, self.meta = table, {v.name: v for v in views}, meta
        self.links: dict[str, dict] = {}
        self.linked_views: dict[str, ViewSpec] = {}
        digest = table.digest()
        for name, (target, target_view) in (links or {}).items():
            if name in self.views:
                raise ValueError(f"view {name!r} is both written and linked")
            target = target if isinstance(target, FeatureStore) else FeatureStore(Path(target))
            if target.table_digest != digest:
                raise DatasetError(
                    f"cannot link view {name!r} of {self.final} to "
                    f"{target.path}: the two stores hold different sample tables "
                    f"(table digests differ); derive {self.final.name} from "
                    f"the current {target.path.name} (same ids, labels, "
                    "splits and classes)"
                )
            self.links[name] = _link_spec(target, target_view, self.final)
            self.linked_views[name] = ViewSpec(name, target.views[target_view].shape, target.views[target_view].dtype)
        spec = {
            "format_version": FORMAT_VERSION,
            "table": digest,
            "views": {k: v.to_json() for k, v in self.views.items()},
            "meta": meta,
        }
        if self.links:  # only then: stores without links keep their fingerprints
            spec["links"] = self.links
        self.fingerprint = config_hash(spec)
        spec_path = self.partial / "spec.json"
        if self.partial.exists():
            old = json.loads(spec_path.read_text()) if spec_path.is_file() else None
            if old != json.loads(json.dumps(spec, default=str)):
                shutil.rmtree(self.partial)  # a different build was in progress: start over
        if not self.partial.exists():
            (self.partial / "views").mkdir(parents=True)
            n = len(table.ids)
            for v in self.views.values():
                np.lib.format.open_memmap(
                    self.partial / "views" / f"{v.name}.npy", mode="w+", dtype=v.dtype, shape=(n, *v.shape)
                ).flush()
            atomic_write_text(self.partial / "progress.json", json.dumps({k: 0 for k in self.views}))
            atomic_write_text(spec_path, json.dumps(spec, default=str))
        self.filled: dict[str, int] = json.loads((self.partial / "progress.json").read_text())
        self._maps = {k: np.load(self.partial / "views" / f"{k}.npy", mmap_mode="r+") for k in self.views}

    def write(self, view: str, start: int, values) -> None:
        """Write rows [start, start + len(values)) of `view`; rows must arrive in order."""
        if start != self.filled[view]:
            raise RuntimeError(f"view {view}: expected rows from {self.filled[view]}, got {start}")
        values = values.detach().cpu().numpy() if torch.is_tensor(values) else np.asarray(values)
        spec = self.views[view]
        if values.shape[1:] != spec.shape:
            raise DatasetError(f"view {view}: got per-sample shape {values.shape[1:]}, expected {spec.shape}")
        m = self._maps[view]
        m[start : start + len(values)] = values.astype(spec.dtype)
        m.flush()
        self.filled[view] = start + len(values)
        atomic_write_text(self.partial / "progress.json", json.dumps(self.filled))

    def written(self, view: str) -> np.ndarray:
        """The rows of `view` filled so far (a read-only view of the partial array), e.g. to rebuild a cache on
        resume."""
        out = self._maps[view][: self.filled[view]].view()
        out.flags.writeable = False
        return out

    def add_meta(self, **kv) -> None:
        """Metadata known only after writing (e.g. conversion error); not part of the fingerprint."""
        self.meta = {**self.meta, **kv}

    def finalize(self) -> FeatureStore:
        n = len(self.table.ids)
        unfinished = {k: v for k, v in self.filled.items() if v != n}
        if unfinished:
            raise RuntimeError(f"store {self.final}: views not fully written {unfinished} of {n} rows")
        self._maps.clear()
        atomic_write_text(self.partial / "ids.json", json.dumps(self.table.ids))
        np.save(self.partial / "labels.npy", self.table.labels)
        np.save(self.partial / "splits.npy", np.array([SPLITS.index(s) for s in self.table.splits], dtype=np.int8))
        manifest = {
            "format_version": FORMAT_VERSION,
            "dataset": self.meta.get("dataset", self.final.name),
            "fingerprint": self.fingerprint,
            "class_names": self.table.class_names,
            "views": {
                **{k: v.to_json() for k, v in self.views.items()},
                **{k: {**v.to_json(), "link": self.links[k]} for k, v in self.linked_views.items()},
            },
            "meta": self.meta,
        }
        atomic_write_text(self.partial / "manifest.json", json.dumps(manifest, indent=1, default=str))
        for f in ("progress.json", "spec.json"):
            (self.partial / f).unlink()
        if self.final.exists():
            shutil.rmtree(self.final)
        os.replace(self.partial, self.final)
        return FeatureStore(self.final)
