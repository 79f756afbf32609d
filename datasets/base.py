"""The contract every dataset adapter implements.

An adapter knows one on-disk format. It says whether its data is present under a data
root (and, if not, exactly what to put where), and opens a `FeatureStore` holding the
sample table (ids, labels, splits, class names) and the views the methods consume. Heavy
views are computed once and cached; a second `open` is a cheap read of the store.
"""

from __future__ import annotations

import hashlib
import importlib
import numbers
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.errors import DatasetError

SPLITS = ("train", "val", "test")
MODALITIES = ("audio", "visual", "audio-visual")
#: the cached feature views a modality reads
MODALITY_VIEWS = {"audio": ("audio",), "visual": ("visual",), "audio-visual": ("audio", "visual")}


def _join(words) -> str:
    """('train', 'val', 'test') -> 'train, val and test'."""
    words = list(words)
    return " and ".join([", ".join(words[:-1]), words[-1]]) if len(words) > 1 else "".join(words)


@dataclass(frozen=True)
class Availability:
    present: bool
    message: str  # when missing: what to put where; when present: where it was found


@dataclass
class SampleTable:
    """Ids, integer labels in the dataset's own class order, split names, class names."""

    ids: list[str]
    labels: np.ndarray
    splits: np.ndarray
    class_names: list[str]

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.splits = np.asarray(self.splits, dtype="<U5")

    def validate(self, source: str, required_splits: tuple[str, ...] = SPLITS) -> None:
        """Raise a DatasetError naming `source` on duplicate ids, bad labels/splits or empty classes.

        Every class needs samples in each of `required_splits` (default: train, val and test).
        A narrower set is for tables that are not a training set of their own, e.g. an audio
        clip bank that image rows draw from, which has no val split.
        """
        n = len(self.ids)
        if not (len(self.labels) == len(self.splits) == n):
            raise DatasetError(
                f"{source}: ids/labels/splits lengths differ ({n}, {len(self.labels)}, {len(self.splits)})"
            )
        if len(set(self.ids)) != n:
            seen, dup = set(), None
            for i in self.ids:
                if i in seen:
                    dup = i
                    break
                seen.add(i)
            raise DatasetError(f"{source}: sample id {dup!r} appears more than once; ids must be unique")
        bad = sorted(set(self.splits.tolist()) - set(SPLITS))
        if bad:
            raise DatasetError(f"{source}: unknown split name(s) {bad}; use one of {SPLITS}")
        n_classes = len(self.class_names)
        if n and (self.labels.min() < 0 or self.labels.max() >= n_classes):
            raise DatasetError(
                f"{source}: labels must lie in [0, {n_classes}); found {self.labels.min()}..{self.labels.max()}"
            )
        unknown = sorted(set(required_splits) - set(SPLITS))
        if unknown:
            raise ValueError(f"required_splits: unknown split name(s) {unknown}; use a subset of {SPLITS}")
        for split in required_splits:
            counts = np.bincount(self.labels[self.splits == split], minlength=n_classes)
            empty = [self.class_names[c] for c in np.flatnonzero(counts == 0)]
            if empty:
                raise DatasetError(
                    f"{source}: class(es) {empty[:5]}{'...' if len(empty) > 5 else ''} have no {split} samples; "
                    f"every class needs {_join(required_splits)} samples (fix the split lists or drop the class)"
                )

    def digest(self) -> str:
        h = hashlib.sha256()
        for part in (self.ids, self.labels.tolist(), self.splits.tolist(), self.class_names):
            h.update(repr(part).encode())
        return h.hexdigest()


def step_sizes(
    num_classes: int, per_step: int, initial: int | None = None, *, source: str = "protocol", last_step: bool = False
) -> tuple[int, ...]:
    """Classes per step: `initial` classes (default: `per_step`), then steps of `per_step`, covering `num_classes`.

    What is left after the last full step is an error naming `source`, or with `last_step` a smaller last
    step of its own. The one "initial + per step" rule behind `benchmarks.core.protocols.Protocol.uniform`
    and the paired folders' protocol.yaml (`initial`, `per_step`).
    """
    checks = (("per_step", per_step),) if initial is None else (("initial", initial), ("per_step", per_step))
    for key, v in checks:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise DatasetError(f"{source}: `{key}` must be a positive integer, got {v!r}")
    first = () if initial is None else (int(initial),)
    if initial is not None and initial > num_classes:
        raise DatasetError(
            f"{source}: initial step of {initial} classes but the dataset has only {num_classes}; lower `initial`"
        )
    rest = num_classes - sum(first)
    steps, left = divmod(rest, int(per_step))
    if left and not last_step:
        if initial is None:
            raise DatasetError(
                f"{source}: {num_classes} classes do not divide into steps of {per_step} (remainder {left}); "
                f"give explicit classes per step or allow an explicit last step of {left}"
            )
        raise DatasetError(
            f"{source}: {num_classes} classes do not split into an initial step of {initial} and steps of {per_step}: "
            f"{rest} classes remain after the first step and {rest} is not a multiple of {per_step} (the last step "
            f"may not be partial); change `initial` or `per_step` so that {num_classes} - initial is a multiple of "
            "per_step"
        )
    return first + (int(per_step),) * steps + ((left,) if left else ())


@dataclass(frozen=True)
class ProtocolSpec:
    """A dataset's default class-incremental protocol (see benchmarks.core.protocols.Protocol)."""

    name: str
    classes_per_step: tuple[int, ...]
    memory: int
    class_order: tuple[int, ...] | None = None  # None: the dataset's own class index order


class DatasetAdapter(ABC):
    """One dataset family. Subclasses set the class attributes and implement the methods."""

    name: str = ""  # registry key used on the command line, e.g. "synth_av", "ave"
    title: str = ""  # shown in the leaderboard
    suites: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ("audio", "visual", "audio-visual")
    views: tuple[str, ...] = ("audio", "visual")  # store views the dataset provides

    @abstractmethod
    def availability(self, data_root: Path) -> Availability: ...

    @abstractmethod
    def open(self, data_root: Path, progress: bool = True):
        """Return the dataset's FeatureStore, building or importing it first if needed."""

    @abstractmethod
    def protocols(self) -> list[ProtocolSpec]: ...

    def available_views(self, data_root: Path) -> tuple[str, ...]:
        """The views `open(data_root)` provides now. Default: the class attribute `views`.

        Adapters whose views depend on what has been built under the data root override it, e.g.
        a paired image + audio dataset gains `audio`/`visual` once its frozen-encoder feature store
        exists (`datasets.paired_stores.features_store_path`). Keep it cheap: no store is built.
        """
        return tuple(self.views)

    def missing_views_hint(self, data_root: Path, lacking: set[str]) -> str:
        """How to get views a method needs that this dataset lacks now ("" when there is no way)."""
        return ""


def discover(package, attr: str, what: str, packages_only: bool = False) -> dict:
    """{entry.name: entry} over the `attr` lists of a package's modules (or sub-packages), in name order, skipping
    names that start with `_`; a name registered twice is an error naming both. The one discovery of the harness:
    dataset adapters (`ADAPTERS` in datasets.adapters) and methods (`METHODS` in methods)."""
    found: dict = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name.startswith("_") or (packages_only and not info.ispkg):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for entry in getattr(module, attr, []):
            if entry.name in found:
                raise RuntimeError(f"{what} name {entry.name!r} registered twice ({module.__name__})")
            found[entry.name] = entry
    return found
