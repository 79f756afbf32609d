"""Which audio clip goes with which image row of a paired image + audio store (deterministic, vectorised).

A paired store (`datasets.adapters.paired_folder`, the `--mcil-views` of `datasets.extraction.videos`,
SynthAV) names its audio in meta["audio_bank"]: a clip bank store next to it, or "self" (the store has
its own `waveform` view aligned with its rows: identity pairing). meta["pairing"] says how rows pair:

- "self":  row i with bank row i;
- "fixed": the store's int32 view `audio_clip` gives each image its bank row;
- "class": for every image, one bank clip of its class from the matching split group (image train ->
  bank train, image val -> bank val when the class has val clips else bank train, image test -> bank
  test; all of the class's clips when that group is empty, e.g. one clip per class), chosen by a
  splitmix64 hash of (seed, epoch, row): deterministic, different every epoch, vectorised.

Evaluation and feature extraction use the canonical pairing (seed 0, epoch 0), so every method sees
the same pairs. Used by the paired adapters, the extraction commands and the image + audio + text methods.
"""

from __future__ import annotations

import numpy as np

from datasets.base import SPLITS
from datasets.errors import DatasetError
from datasets.store import FeatureStore

_MASK64 = (1 << 64) - 1


def splitmix64(x) -> np.ndarray:
    """The splitmix64 finaliser on uint64 arrays (wrapping arithmetic): a fast, well-mixed integer hash."""
    z = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def pair_hash(seed: int, epoch: int, rows: np.ndarray) -> np.ndarray:
    """uint64 hash of (seed, epoch, row) per row: chained splitmix64, so each argument changes every value."""
    s = splitmix64(np.array([int(seed) & _MASK64], dtype=np.uint64))
    e = splitmix64(s ^ np.array([int(epoch) & _MASK64], dtype=np.uint64))
    return splitmix64(e ^ np.asarray(rows, dtype=np.int64).astype(np.uint64))


class AudioPairing:
    """Which audio clip goes with which image row of a paired store.

    Opens the clip bank named by the store's meta["audio_bank"] (a sibling directory), or the
    store itself for "self" (a store with its own `waveform` view aligned with its rows, e.g.
    SynthAV: identity pairing). "fixed": the store's `audio_clip` view. "class": one clip of the
    image's class from the matching split group, chosen by a hash of (seed, epoch, row); see the
    module docstring. All lookups are precomputed per row, so `clip_rows` is a few numpy ops.
    """

    def __init__(self, store: FeatureStore):
        self.store = store
        meta = store.meta
        bank = meta.get("audio_bank")
        if bank is None:
            raise DatasetError(
                f"{store.path}: the store names no audio bank (meta 'audio_bank'); it is not a paired image+audio store"
            )
        if bank == "self":
            self.bank, self.mode = store, "self"
            if "waveform" not in store.views:
                raise DatasetError(
                    f"{store.path}: meta says audio_bank 'self' but the store has no `waveform` view; "
                    "delete the store and rebuild it"
                )
            return
        path = store.path.parent / bank
        if not (path / "manifest.json").is_file():
            raise DatasetError(
                f"{path}: the audio clip bank of {store.path} is missing; delete {store.path} and open "
                "the dataset again to rebuild both"
            )
        self.bank = FeatureStore(path)
        self.mode = meta.get("pairing")
        n = len(store)
        if self.mode == "fixed":
            self._fixed = np.asarray(store.array("audio_clip"), dtype=np.int64)
            if n and (self._fixed.min() < 0 or self._fixed.max() >= len(self.bank)):
                raise DatasetError(
                    f"{store.path}: `audio_clip` points outside the bank {path}; delete both stores and rebuild"
                )
        elif self.mode == "class":
            self._start, self._count, self._flat, self.fallback_rows = self._candidates(
                store.labels, store.splits, self.bank.labels, self.bank.splits, len(store.class_names)
            )
        else:
            raise DatasetError(
                f"{store.path}: unknown pairing {self.mode!r} in meta (expected 'fixed', 'class' or audio_bank 'self')"
            )

    @staticmethod
    def _candidates(labels, splits, bank_labels, bank_splits, n_classes: int):
        """Per image row: (start, count) of its candidate clips in `flat` (bank rows sorted by class, split, row)."""
        labels, splits = np.asarray(labels, dtype=np.int64), np.asarray(splits, dtype=np.int64)
        bl, bs = np.asarray(bank_labels, dtype=np.int64), np.asarray(bank_splits, dtype=np.int64)
        k = len(SPLITS)
        flat = np.lexsort((np.arange(len(bl)), bs, bl)).astype(np.int64)
        cnt = np.bincount(bl * k + bs, minlength=n_classes * k).reshape(n_classes, k)
        off = np.concatenate([[0], np.cumsum(cnt.ravel())])[:-1].reshape(n_classes, k)
        start, count = off[labels, splits].copy(), cnt[labels, splits].copy()
        train, val = SPLITS.index("train"), SPLITS.index("val")
        m = (count == 0) & (splits == val)  # image val -> bank train when the class has no val clips
        start[m], count[m] = off[labels[m], train], cnt[labels[m], train]
        m = count == 0  # no clip in the group: any clip of the class
        fallback = np.flatnonzero(m)
        start[m], count[m] = off[labels[m], 0], cnt[labels[m]].sum(axis=1)
        if np.any(count == 0):
            c = int(labels[np.flatnonzero(count == 0)[0]])
            raise DatasetError(f"the clip bank has no clip of class {c}; delete the stores and rebuild")
        return start, count.astype(np.uint64), flat, fallback

    @staticmethod
    def _rows(rows) -> np.ndarray:
        if hasattr(rows, "detach"):
            rows = rows.detach().cpu().numpy()
        return np.asarray(rows, dtype=np.int64)

    def clip_rows(self, rows, seed: int, epoch: int) -> np.ndarray:
        """Bank row (int64) for each image row; deterministic in (seed, epoch, row)."""
        rows = self._rows(rows)
        if self.mode == "self":
            return rows.copy()
        if self.mode == "fixed":
            return self._fixed[rows]
        pick = (pair_hash(seed, epoch, rows) % self._count[rows]).astype(np.int64)
        return self._flat[self._start[rows] + pick]

    def eval_clip_rows(self, rows) -> np.ndarray:
        """The canonical pairing (seed 0, epoch 0): for val/test and feature extraction."""
        return self.clip_rows(rows, seed=0, epoch=0)

    def waveforms(self, rows, seed: int | None = None, epoch: int = 0, device="cpu", dtype=None):
        """Waveforms (tensor (B, L)) paired with image `rows`; seed None = the canonical pairing."""
        clips = self.eval_clip_rows(rows) if seed is None else self.clip_rows(rows, seed, epoch)
        return self.bank.gather("waveform", clips, device=device, dtype=dtype)
