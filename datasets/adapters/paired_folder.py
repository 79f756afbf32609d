"""Paired image+audio datasets from a folder tree: the generic adapter and the shared machinery.

Why: image+audio+text methods (MCIL-AudioCLIP and the CLIP-style baselines) train on raw
images paired with raw audio clips, and the datasets they are evaluated on (ImageNet-ESC,
miniARIC, a user's own folder) are not videos but two folders of files. This module turns
such a tree into two feature stores the harness already knows how to read, once:

Layout (generic; `register_paired_folder` or `run_all.py --paired-folder PATH[=NAME]`):

    root/image/{train,test}/<class>/*.{jpg,jpeg,png}     any size, any mode (converted to RGB)
    root/image/val/<class>/...                           optional
    root/audio/{train,test}/<class>/*.{wav,flac}         any rate / channel count ("split" audio layout)
      or root/audio/<class>.{wav,flac}                   one clip per class ("per-class" audio layout)
    root/protocol.yaml                                   the class-incremental protocol (or --paired-protocol)

protocol.yaml (or the same keys as a mapping: `register_paired_folder(protocol=...)`; the
command line's `--paired-protocol INITIAL,PER_STEP` gives only the two step sizes):

    name: 4+3x5            optional; default `<initial>+<per_step>x<later steps>`
    initial: 4             classes in step 0
    per_step: 3            classes in each later step; a partial last step is an error
    class_order: [...]     optional: class names or indices; or `class_order_file: f.yaml` (a YAML list)
    memory: 300            optional exemplar budget (methods with memory); default 15 per class
    prompt_template: "a photo of a {}."   optional (one `{}`)

Class names are the image class folder names, sorted (label = position); the name put in
prompts is the folder name with `_` read as a space (subclasses give their own). Every class needs
images in every image split; an audio class folder without a matching image class, an image
class without any audio clip, a class without images in a split and an unreadable file are
each a DatasetError naming the file or folder and the fix.

val split: when there is no `image/val`, a deterministic val split is carved out of train: of
each class's train images in sorted file-name order, every 10th one (positions 9, 19, 29, ...,
i.e. 10 %), and at least one (the last) for classes with fewer than 10; a class needs at least
2 train images for this. The carve-out is done on the scanned file list, before bad files are
skipped, so the val set of a class never depends on the health of other files.

Stores (under `<data_root>/cache/store/`, written with StoreWriter: batched, resumable after an
interruption, published atomically):

  `<name>-bank-<hash>`: the clip bank, rows = audio clips, label = class index, split = the
      clip's folder split (per-class layout: "train"), view `waveform` (L,) float16 mono in
      [-1, 1] at `sample_rate` (44.1 kHz default, ESC-50's and AudioCLIP's rate),
      L = sample_rate * clip_seconds (5 s default): channels averaged, polyphase-resampled
      (datasets.media.mix_resample) when the file's rate differs, centre-cropped when longer,
      zero-padded on both sides (centred) when shorter. A bank is no training set, so it is
      validated only for the splits every class has clips in (`required_splits`).
  `<name>-<hash>`: the image store, rows = images, view `clip_image` (3, S, S) float16: shorter side
      resized to S (PIL bicubic, the long side truncated as torchvision's Resize does), centre
      crop S (torchvision's CenterCrop rounding), CLIP mean/std normalisation: exactly CLIP's
      eval transform, so a CLIP tower sees what it was trained on. S = 224 for real datasets.
      With "fixed" pairing also the int32 view `audio_clip`: the bank row of each image.

Image store meta: dataset, audio_bank (the bank directory name, a sibling of the image store),
pairing ("fixed" | "class"), sample_rate, clip_samples, image_size, image_mean, image_std,
prompt_template, class_prompt_names, skipped ([{file, reason}]), plus val_split, audio_layout
and pairing_fallback (classes whose clips come from another split group, see AudioPairing).

The store hashes cover the file lists with sizes and mtimes, the preprocessing parameters, the
prompts and the skip list, so editing, adding or fixing a file builds a new store.

Bad files are found before the long build by a cheap header check of every file (PIL open +
verify, soundfile info), remembered in `<name>-check.json` for that exact file list; a file
whose header is fine but whose data is not (a truncated JPEG) is caught while building and
remembered the same way. Without skip_bad the first bad file stops the run with its name; with
skip_bad (constructor, `run_all.py --skip-bad`, or PAIRED_SKIP_BAD=1) bad files are left out,
logged and listed in meta["skipped"] (an image whose fixed audio partner is bad goes too).

Pairing for training (AudioPairing): "class" pairing draws, for every image, one bank clip of
its class from the matching split group (image train -> bank train, image val -> bank val when
the class has val clips else bank train, image test -> bank test; all of the class's clips when
that group is empty, e.g. one clip per class), by a splitmix64 hash of (seed, epoch, row):
deterministic, different every epoch, vectorised. Evaluation and feature extraction use the
canonical pairing (seed 0, epoch 0) so every method sees the same pairs.
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import re
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from datasets.base import SPLITS, Availability, DatasetAdapter, ProtocolSpec, SampleTable
from datasets.errors import ConfigError, DatasetError
from datasets.io import atomic_write_text, config_hash
from datasets.store import FeatureStore, StoreWriter, ViewSpec

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
AUDIO_EXTS = (".wav", ".flac")
DEFAULT_TEMPLATE = "a photo of a {}."
MEMORY_PER_CLASS = 15
SKIP_ENV = "PAIRED_SKIP_BAD"
SKIP_FIX = f"replace it, or delete it, or run with --skip-bad ({SKIP_ENV}=1) to leave it out (listed in the store's meta)"
PREPROCESS_VERSION = 2  # bump whenever preprocessing changes the stored views

_SKIP_BAD_DEFAULT: bool | None = None  # set by configure() (run_all --skip-bad)


def configure(skip_bad: bool | None = None) -> None:
    """Run-time default for every paired adapter without an explicit `skip_bad` (None: unset, the env var decides)."""
    global _SKIP_BAD_DEFAULT
    _SKIP_BAD_DEFAULT = skip_bad


# ----------------------------------------------------------------------------- preprocessing (module level: runs in workers)


def load_image(path: Path, size: int, mean=CLIP_MEAN, std=CLIP_STD, fix: str = SKIP_FIX) -> np.ndarray:
    """float32 (3, size, size): RGB, shorter side -> size (bicubic), centre crop, normalised.

    Sizes follow torchvision's Resize(int)/CenterCrop (as in CLIP's eval transform): the long
    side is truncated, the crop offset rounded.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            if w <= h:
                nw, nh = size, int(size * h / w)
            else:
                nw, nh = int(size * w / h), size
            if (nw, nh) != (w, h):
                im = im.resize((nw, nh), Image.BICUBIC)
            left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
            im = im.crop((left, top, left + size, top + size))
            x = np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DatasetError(f"{path}: not a readable image, corrupt or truncated ({type(e).__name__}: {e}); {fix}") from e
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def fit_center(wave: np.ndarray, n: int) -> np.ndarray:
    """Centre-crop to `n` samples, or zero-pad on both sides (the signal centred) to `n`."""
    if len(wave) >= n:
        start = (len(wave) - n) // 2
        return wave[start : start + n]
    pad = n - len(wave)
    return np.pad(wave, (pad // 2, pad - pad // 2))


def load_clip(path: Path, sample_rate: int, clip_samples: int, fix: str = SKIP_FIX) -> tuple[np.ndarray, bool]:
    """(float32 (clip_samples,) mono in [-1, 1] at `sample_rate`, was it resampled?)."""
    import soundfile as sf

    from datasets.media import mix_resample

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
        raise DatasetError(f"{path}: not a readable audio file, corrupt or truncated ({e}); {fix}") from e
    if len(data) == 0 or data.shape[1] == 0:
        raise DatasetError(f"{path}: contains no audio samples; {fix}")
    wave = mix_resample(data, int(rate), int(sample_rate))
    return np.clip(fit_center(wave, clip_samples), -1.0, 1.0).astype(np.float32), int(rate) != int(sample_rate)


def _image_job(job: tuple) -> tuple:
    path, rel, size, mean, std = job
    try:
        return ("ok", load_image(Path(path), size, mean, std))
    except DatasetError as e:
        return ("error", rel, str(e))


def _clip_job(job: tuple) -> tuple:
    path, rel, sample_rate, clip_samples = job
    try:
        wave, resampled = load_clip(Path(path), sample_rate, clip_samples)
        return ("ok", wave, resampled)
    except DatasetError as e:
        return ("error", rel, str(e))


def _check_job(job: tuple) -> str | None:
    """Header-level check of one file (cheap: no full decode); None when it looks fine, else the reason."""
    kind, path = job
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
    except OSError as e:
        return f"cannot be read ({e})"
    if kind == "image":
        from PIL import Image

        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as e:  # PIL raises many types on damaged headers
            return f"not a readable image ({type(e).__name__}: {e})"
        return None
    import soundfile as sf

    try:
        info = sf.info(path)
    except Exception as e:  # LibsndfileError, RuntimeError, ...
        return f"not a readable audio file ({e})"
    if info.frames <= 0 or info.channels <= 0:
        return "contains no audio samples"
    return None


class _Workers:
    """A process pool of at most `n` workers (fork where available), or in-process for small jobs."""

    def __init__(self, n: int, n_jobs: int):
        self.pool = None
        if n > 1 and n_jobs >= 8:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
            self.pool = ProcessPoolExecutor(max_workers=n, mp_context=ctx)

    def map(self, fn, jobs: list) -> list:
        if self.pool is None:
            return [fn(j) for j in jobs]
        return list(self.pool.map(fn, jobs, chunksize=max(1, len(jobs) // 16)))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


class _BadFiles(Exception):
    """Files that failed while building (header fine, data not); {rel: reason}."""

    def __init__(self, bad: dict[str, str]):
        super().__init__(f"{len(bad)} bad file(s)")
        self.bad = bad


# ----------------------------------------------------------------------------- pairing


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
            raise DatasetError(f"{store.path}: the store names no audio bank (meta 'audio_bank'); it is not a paired image+audio store")
        if bank == "self":
            self.bank, self.mode = store, "self"
            if "waveform" not in store.views:
                raise DatasetError(f"{store.path}: meta says audio_bank 'self' but the store has no `waveform` view; delete the store and rebuild it")
            return
        path = store.path.parent / bank
        if not (path / "manifest.json").is_file():
            raise DatasetError(f"{path}: the audio clip bank of {store.path} is missing; delete {store.path} and open the dataset again to rebuild both")
        self.bank = FeatureStore(path)
        self.mode = meta.get("pairing")
        n = len(store)
        if self.mode == "fixed":
            self._fixed = np.asarray(store.array("audio_clip"), dtype=np.int64)
            if n and (self._fixed.min() < 0 or self._fixed.max() >= len(self.bank)):
                raise DatasetError(f"{store.path}: `audio_clip` points outside the bank {path}; delete both stores and rebuild")
        elif self.mode == "class":
            self._start, self._count, self._flat, self.fallback_rows = self._candidates(store.labels, store.splits, self.bank.labels, self.bank.splits, len(store.class_names))
        else:
            raise DatasetError(f"{store.path}: unknown pairing {self.mode!r} in meta (expected 'fixed', 'class' or audio_bank 'self')")

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


# ----------------------------------------------------------------------------- protocols

_PROTOCOL_KEYS = {"name", "initial", "per_step", "class_order", "class_order_file", "memory", "prompt_template"}


def step_sizes(initial: int, per_step: int, num_classes: int, source: str) -> tuple[int, ...]:
    """(initial, per_step, per_step, ...) covering `num_classes` exactly; a partial last step is an error."""
    for key, v in (("initial", initial), ("per_step", per_step)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise DatasetError(f"{source}: `{key}` must be a positive integer, got {v!r}")
    if initial > num_classes:
        raise DatasetError(f"{source}: initial step of {initial} classes but the dataset has only {num_classes}; lower `initial`")
    rest = num_classes - initial
    if rest % per_step:
        raise DatasetError(
            f"{source}: {num_classes} classes do not split into an initial step of {initial} and steps of {per_step}: "
            f"{rest} classes remain after the first step and {rest} is not a multiple of {per_step} (the last step may not be "
            f"partial); change `initial` or `per_step` so that {num_classes} - initial is a multiple of per_step")
    return (initial,) + (per_step,) * (rest // per_step)


def protocol_name(sizes: tuple[int, ...]) -> str:
    """`<initial>+<per_step>x<n>` (n later steps), e.g. (4, 3, 3, 3, 3, 3) -> '4+3x5'."""
    return f"{sizes[0]}+{sizes[1]}x{len(sizes) - 1}" if len(sizes) > 1 else f"{sizes[0]}x1"


def parse_class_order(order, class_names: list[str], source: str) -> tuple[int, ...]:
    """A YAML list of class names or of class indices -> the tuple of class indices (a permutation)."""
    n = len(class_names)
    if not isinstance(order, list) or not order:
        raise DatasetError(f"{source}: `class_order` must be a non-empty list of class names or indices")
    if all(isinstance(x, int) and not isinstance(x, bool) for x in order):
        bad = [x for x in order if not 0 <= x < n]
        if bad:
            raise DatasetError(f"{source}: class_order index(es) {bad[:5]} outside [0, {n})")
        idx = list(order)
    elif all(isinstance(x, str) for x in order):
        index = {c: i for i, c in enumerate(class_names)}
        bad = [x for x in order if x not in index]
        if bad:
            raise DatasetError(f"{source}: class_order names {bad[:5]} are not class folders; the classes are {class_names[:8]}{'...' if n > 8 else ''}")
        idx = [index[x] for x in order]
    else:
        raise DatasetError(f"{source}: class_order mixes names and indices; use one kind")
    dup = sorted({class_names[i] for i in idx if idx.count(i) > 1})
    if dup:
        raise DatasetError(f"{source}: class_order lists {dup[:5]} more than once")
    if len(idx) != n:
        missing = [class_names[i] for i in range(n) if i not in set(idx)]
        raise DatasetError(f"{source}: class_order has {len(idx)} classes, the dataset {n}; missing {missing[:5]}{'...' if len(missing) > 5 else ''}")
    return tuple(idx)


def parse_protocol(spec: dict, class_names: list[str], source: str, base_dir: Path | None = None) -> tuple[ProtocolSpec, str]:
    """A protocol mapping (protocol.yaml or --paired-protocol) -> (ProtocolSpec, prompt template)."""
    import yaml

    if not isinstance(spec, dict):
        raise DatasetError(f"{source}: expected a mapping with `initial` and `per_step`, got {type(spec).__name__}")
    unknown = sorted(set(spec) - _PROTOCOL_KEYS)
    if unknown:
        raise DatasetError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(_PROTOCOL_KEYS)}")
    missing = [k for k in ("initial", "per_step") if k not in spec]
    if missing:
        raise DatasetError(f"{source}: missing {missing}; e.g. `initial: 4` and `per_step: 3` (classes in step 0 / in each later step)")
    sizes = step_sizes(spec["initial"], spec["per_step"], len(class_names), source)
    if "class_order" in spec and "class_order_file" in spec:
        raise DatasetError(f"{source}: give `class_order` or `class_order_file`, not both")
    order = tuple(range(len(class_names)))
    if "class_order" in spec:
        order = parse_class_order(spec["class_order"], class_names, source)
    elif "class_order_file" in spec:
        path = Path(spec["class_order_file"])
        path = path if path.is_absolute() or base_dir is None else Path(base_dir) / path
        if not path.is_file():
            raise DatasetError(f"{source}: class_order_file {path} does not exist; create it (a YAML list of class names or indices)")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise DatasetError(f"{path}: not valid YAML ({e}); it must be a list of class names or indices") from e
        order = parse_class_order(loaded, class_names, str(path))
    memory = spec.get("memory", MEMORY_PER_CLASS * len(class_names))
    if isinstance(memory, bool) or not isinstance(memory, int) or memory < 0:
        raise DatasetError(f"{source}: `memory` must be an integer >= 0 (total exemplars), got {memory!r}")
    template = spec.get("prompt_template", DEFAULT_TEMPLATE)
    if not isinstance(template, str) or template.count("{}") != 1:
        raise DatasetError(f"{source}: `prompt_template` must be a string with exactly one {{}}, got {template!r}")
    name = spec.get("name") or protocol_name(sizes)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        raise DatasetError(f"{source}: `name` must be a short word (letters, digits, _ . + -), got {name!r}")
    return ProtocolSpec(name, sizes, memory, order), template


# ----------------------------------------------------------------------------- scanning


class Item(NamedTuple):
    id: str  # store row id (unique)
    rel: str  # the file, relative to the dataset root (posix)
    path: Path
    label: int
    split: str


@dataclass
class Scan:
    """What a tree holds: the class list, the image and clip files, and how they pair."""

    root: Path
    class_names: list[str]
    images: list[Item]
    clips: list[Item]
    pairing: str  # "fixed" | "class"
    image_clip: list[int] | None = None  # fixed: index into `clips` per image
    skipped: list[dict] = field(default_factory=list)  # found while scanning (e.g. a missing partner)
    val_split: str = "folder"
    audio_layout: str = "split"
    notes: dict = field(default_factory=dict)


def _files(folder: Path, exts: tuple[str, ...]) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts)


def _subdirs(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _listing(items, limit: int = 20) -> str:
    items = list(items)
    return "\n".join(f"    {x}" for x in items[:limit]) + (f"\n    ... and {len(items) - limit} more" if len(items) > limit else "")


def carve_val(files: list[Path]) -> tuple[list[Path], list[Path]]:
    """(train, val) from one class's sorted train files: every 10th (positions 9, 19, ...), at least the last one."""
    val_idx = set(range(9, len(files), 10)) or {len(files) - 1}
    return [f for i, f in enumerate(files) if i not in val_idx], [f for i, f in enumerate(files) if i in val_idx]


# ----------------------------------------------------------------------------- adapter


@dataclass
class _Plan:
    scan: Scan
    images: list[Item]
    clips: list[Item]
    image_clip: np.ndarray | None
    skipped: list[dict]
    bank_name: str
    image_name: str
    bank_meta: dict
    image_meta: dict
    bank_required: tuple[str, ...]
    fallback_classes: list[str]


class PairedFolderAdapter(DatasetAdapter):
    """A paired image+audio folder tree (see the module docstring); the base of ImageNet-ESC and miniARIC.

    Subclasses set `folder` (the tree is `<data_root>/<folder>`), `CLASSES` (the exact class
    folders), `PROMPT_NAMES`, `prompt_template` and `protocols()`, and may override
    `scan_audio` (miniARIC pairs files by name). The generic adapter is built with an absolute
    `root` and takes its protocol from `protocol` or `<root>/protocol.yaml`.
    """

    name = "paired_folder"
    title = "Paired folder"
    suites = ("audio-visual",)
    modalities = ("audio", "visual", "audio-visual")
    views = ("clip_image", "waveform")  # `waveform` lives in the clip bank: read it through AudioPairing
    folder: str = ""
    CLASSES: tuple[str, ...] | None = None  # None: any class folders
    PROMPT_NAMES: tuple[str, ...] | None = None
    user_protocol = True  # the protocol comes from `protocol` / protocol.yaml; subclasses with fixed protocols set False

    def __init__(self, root: Path | None = None, name: str | None = None, *, protocol: dict | None = None,
                 image_size: int = 224, sample_rate: int = 44100, clip_seconds: float = 5.0, skip_bad: bool | None = None,
                 batch_size: int = 64, workers: int | None = None, title: str | None = None):
        self._root = Path(root) if root is not None else None
        if name is not None:
            self.name = name
        if title is not None:
            self.title = title
        elif self._root is not None and name is not None and type(self) is PairedFolderAdapter:
            self.title = name
        self._protocol = protocol
        self.image_size, self.sample_rate, self.clip_seconds = int(image_size), int(sample_rate), float(clip_seconds)
        self.clip_samples = int(round(self.sample_rate * self.clip_seconds))
        self._skip_bad = skip_bad
        self.batch_size = batch_size
        self.workers = workers if workers is not None else min(2, os.cpu_count() or 1)
        self.report: dict = {}  # what the last open skipped / resampled

    # -- options -----------------------------------------------------------------------

    @property
    def skip_bad(self) -> bool:
        if self._skip_bad is not None:
            return self._skip_bad
        if _SKIP_BAD_DEFAULT is not None:
            return _SKIP_BAD_DEFAULT
        return os.environ.get(SKIP_ENV, "").strip().lower() in ("1", "true", "yes")

    def root(self, data_root: Path) -> Path:
        return self._root if self._root is not None else Path(data_root) / self.folder

    def store_dir(self, data_root: Path) -> Path:
        return Path(data_root) / "cache" / "store"

    def image_params(self) -> dict:
        return {"image_size": self.image_size, "resize": "shorter side to image_size, PIL bicubic (long side truncated, torchvision Resize)",
                "crop": "centre (torchvision CenterCrop rounding)", "convert": "RGB", "image_mean": CLIP_MEAN, "image_std": CLIP_STD}

    def audio_params(self) -> dict:
        return {"sample_rate": self.sample_rate, "clip_seconds": self.clip_seconds, "clip_samples": self.clip_samples,
                "mono": "channel mean", "resample": "polyphase (scipy resample_poly) when the file's rate differs",
                "fit": "centre crop when longer, centred zero padding when shorter", "range": "clipped to [-1, 1]"}

    # -- classes, prompts, protocol ----------------------------------------------------

    def class_names_hint(self, data_root: Path | None = None) -> list[str]:
        """The class list without a full scan: CLASSES, or the image/train class folders."""
        if self.CLASSES is not None:
            return sorted(self.CLASSES)
        if self._root is None and data_root is None:
            return []
        return _subdirs(self.root(data_root) / "image" / "train")

    def prompt_names(self, class_names: list[str]) -> list[str]:
        """The name put in prompts per class: PROMPT_NAMES, else the folder name with `_` as spaces."""
        if self.PROMPT_NAMES is not None:
            return list(self.PROMPT_NAMES)
        return [c.replace("_", " ") for c in class_names]

    @property
    def class_prompt_names(self) -> list[str]:
        return self.prompt_names(self.class_names_hint())

    def protocol_source(self) -> tuple[dict | None, str, Path | None]:
        """(the generic adapter's protocol mapping or None, where it came from, its folder)."""
        if self._protocol is not None:
            return dict(self._protocol), f"protocol of paired folder {self.name!r} (command line)", self._root
        if self._root is None:
            return None, "", None
        path = self._root / "protocol.yaml"
        if not path.is_file():
            return None, str(path), self._root
        import yaml

        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise DatasetError(f"{path}: not valid YAML ({e}); see `initial`, `per_step`, ... in datasets/adapters/paired_folder.py") from e
        return data, str(path), self._root

    def _parsed_protocol(self) -> tuple[ProtocolSpec, str]:
        spec, source, base = self.protocol_source()
        if spec is None:
            raise DatasetError(f"a protocol: put {source or 'protocol.yaml'} next to the data (`initial: N`, `per_step: K`, ...) "
                               "or pass --paired-protocol INITIAL,PER_STEP")
        return parse_protocol(spec, self.class_names_hint(), source, base)

    @property
    def prompt_template(self) -> str:
        """The eval prompt with one `{}` (subclasses set a plain class attribute instead)."""
        try:
            return self._parsed_protocol()[1]
        except DatasetError:  # no or a bad protocol: availability reports it
            return DEFAULT_TEMPLATE

    def protocols(self) -> list[ProtocolSpec]:
        """The folder's protocol; none while it is missing or invalid (availability says why; --list must not fail)."""
        try:
            return [self._parsed_protocol()[0]]
        except DatasetError:
            return []

    # -- availability ------------------------------------------------------------------

    def layout_help(self, root: Path) -> str:
        return (f"  {root}/image/{{train,test}}/<class>/*.jpg|png (optional image/val/<class>/...; else 10 % of train becomes val)\n"
                f"  {root}/audio/{{train,test}}/<class>/*.wav|flac   or   {root}/audio/<class>.wav|flac (one clip per class)\n"
                f"  {root}/protocol.yaml with `initial: N` and `per_step: K` (optional: name, class_order, class_order_file, memory, "
                "prompt_template), or pass --paired-protocol N,K")

    def missing_parts(self, data_root: Path) -> list[str]:
        root = self.root(data_root)
        if not root.is_dir():
            return [f"{root}/ (the dataset folder)"]
        missing = []
        for split in ("train", "test"):
            d = root / "image" / split
            if not d.is_dir():
                missing.append(f"{d}/ (image class folders)")
            elif not _subdirs(d):
                missing.append(f"{d}/<class>/ (no class folder in it)")
        audio = root / "audio"
        if not audio.is_dir():
            missing.append(f"{audio}/ (audio clips)")
        elif not _subdirs(audio) and not _files(audio, AUDIO_EXTS):
            missing.append(f"{audio}/train/<class>/*.wav or {audio}/<class>.wav (the audio folder is empty)")
        return missing

    def availability(self, data_root: Path) -> Availability:
        root = self.root(data_root)
        missing = self.missing_parts(data_root)
        if not missing and self.user_protocol:
            try:
                self._parsed_protocol()
            except DatasetError as e:
                missing.append(str(e))
        if missing:
            who = self.title if self.title == self.name else f"{self.title} ({self.name})"
            return Availability(False, f"{who}: missing " + "; ".join(missing) + f"\n  Expected layout:\n{self.layout_help(root)}")
        return Availability(True, f"{self.title} at {root} (stores built on first use under {self.store_dir(data_root)})")

    # -- scanning ----------------------------------------------------------------------

    def scan(self, data_root: Path) -> Scan:
        """List every file, check the structure, pair images with clips (no decoding)."""
        root = self.root(data_root)
        class_names, images, val_split = self.scan_images(root)
        scan = self.scan_audio(root, class_names, images)
        scan.val_split = val_split
        return scan

    def scan_images(self, root: Path) -> tuple[list[str], list[Item], str]:
        image_dir = root / "image"
        splits = [s for s in SPLITS if (image_dir / s).is_dir()]
        for s in ("train", "test"):
            if s not in splits:
                raise DatasetError(f"{image_dir / s}/: missing; put the {s} images there as {image_dir / s}/<class>/*.jpg")
        found = sorted(set().union(*(_subdirs(image_dir / s) for s in splits)))
        if self.CLASSES is not None:
            want = sorted(self.CLASSES)
            lacking, extra = sorted(set(want) - set(found)), sorted(set(found) - set(want))
            if lacking or extra:
                raise DatasetError(
                    f"{image_dir}: the class folders must be exactly the {len(want)} classes of {self.title}; "
                    + (f"missing {lacking}; " if lacking else "") + (f"unexpected {extra}; " if extra else "")
                    + f"expected in every split: {want}")
        if not found:
            raise DatasetError(f"{image_dir / 'train'}/: no class folders; put images as {image_dir / 'train'}/<class>/*.jpg")
        class_names = sorted(self.CLASSES) if self.CLASSES is not None else found
        per: dict[tuple[str, int], list[Path]] = {}
        problems = []
        for s in splits:
            for c, cls in enumerate(class_names):
                files = _files(image_dir / s / cls, IMAGE_EXTS)
                if not files:
                    problems.append(f"{image_dir / s / cls}/: class {cls!r} has no {s} images (JPEG or PNG)")
                per[(s, c)] = files
        if problems:
            raise DatasetError(f"{image_dir}: {len(problems)} class/split folder(s) without images, first: {problems[0]}\n{_listing(problems)}\n"
                               "  Every class needs images in every split: add them, or remove the class folder from every split.")
        val_split = "folder"
        if "val" not in splits:
            val_split = "carved from train: every 10th sorted train image per class (positions 9, 19, ...), at least the last one"
            for c, cls in enumerate(class_names):
                files = per[("train", c)]
                if len(files) < 2:
                    raise DatasetError(f"{image_dir / 'train' / cls}/: class {cls!r} has {len(files)} train image; at least 2 are needed "
                                       f"to carve a val image out of train (or add {image_dir / 'val' / cls}/)")
                per[("train", c)], per[("val", c)] = carve_val(files)
        images = []
        for s in SPLITS:
            for c in range(len(class_names)):
                for p in per[(s, c)]:
                    rel = p.relative_to(root).as_posix()
                    images.append(Item(rel, rel, p, c, s))
        return class_names, images, val_split

    def scan_audio(self, root: Path, class_names: list[str], images: list[Item]) -> Scan:
        """"class" pairing: audio/{train,val,test}/<class>/* (split layout) or audio/<class>.* (per-class layout)."""
        audio = root / "audio"
        index = {c: i for i, c in enumerate(class_names)}
        split_dirs = [s for s in SPLITS if (audio / s).is_dir()]
        loose = _files(audio, AUDIO_EXTS)
        clips: list[Item] = []
        if split_dirs:
            layout = "split"
            if loose:
                log.warning("%s: %d audio file(s) directly in audio/ are ignored: the split layout audio/{train,test}/<class>/ is used",
                            audio, len(loose))
            problems = []
            for s in split_dirs:
                for cls in _subdirs(audio / s):
                    if cls not in index:
                        problems.append(f"{audio / s / cls}/: audio class {cls!r} has no matching image class folder")
                        continue
                    for p in _files(audio / s / cls, AUDIO_EXTS):
                        rel = p.relative_to(root).as_posix()
                        clips.append(Item(rel, rel, p, index[cls], s))
            if problems:
                raise DatasetError(f"{audio}: {problems[0]}\n{_listing(problems)}\n  Rename the folder to its image class "
                                   f"(one of {class_names[:6]}{'...' if len(class_names) > 6 else ''}) or remove it.")
            if self.CLASSES is not None:  # a fixed class set (ImageNet-ESC): every audio split folder holds every class
                for s in split_dirs:
                    lacking = [c for c in class_names if not _files(audio / s / c, AUDIO_EXTS)]
                    if lacking:
                        raise DatasetError(f"{audio / s}: no clips for class(es) {lacking}; {self.title} needs "
                                           f"{audio / s}/<class>/*.wav for each of its {len(class_names)} classes")
        elif loose:
            layout = "per-class"
            stray = [p for p in loose if p.stem not in index]
            if stray:
                raise DatasetError(f"{stray[0]}: audio file {stray[0].name!r} has no matching image class folder (per-class layout "
                                   f"audio/<class>.wav)\n{_listing(stray)}\n  Rename it to <class>.wav for one of the image classes, or remove it.")
            seen: dict[int, Path] = {}
            for p in loose:
                c = index[p.stem]
                if c in seen:
                    raise DatasetError(f"{p}: class {p.stem!r} has two clips ({seen[c].name}, {p.name}) in the per-class layout; keep one")
                seen[c] = p
                rel = p.relative_to(root).as_posix()
                clips.append(Item(rel, rel, p, c, "train"))
        else:
            raise DatasetError(f"{audio}: no audio found; expected {audio}/{{train,test}}/<class>/*.wav|flac "
                               f"or one {audio}/<class>.wav|flac per class")
        has = np.bincount([c.label for c in clips], minlength=len(class_names)) if clips else np.zeros(len(class_names), int)
        lacking = [class_names[c] for c in np.flatnonzero(has == 0)]
        if lacking:
            where = f"{audio}/{{train,test}}/<class>/" if layout == "split" else f"{audio}/<class>.wav"
            raise DatasetError(f"{audio}: class(es) {lacking[:8]}{'...' if len(lacking) > 8 else ''} have no audio clip; put at least one "
                               f"clip per class in {where} (e.g. {audio / (split_dirs[0] if split_dirs else '') / lacking[0]})")
        return Scan(root, class_names, images, clips, "class", audio_layout=layout)

    # -- bad files -------------------------------------------------------------------------

    def _files_key(self, scan: Scan) -> str:
        entries = []
        for item in (*scan.images, *scan.clips):
            st = item.path.stat()
            entries.append((item.rel, st.st_size, st.st_mtime_ns))
        return config_hash(sorted(set(entries)))

    def _check_path(self, data_root: Path) -> Path:
        return self.store_dir(data_root) / f"{self.name}-check.json"

    def check_files(self, data_root: Path, scan: Scan, files_key: str, progress: bool) -> dict[str, str]:
        """{relative file: reason} of bad files: remembered for this exact file list, else a header check of every file."""
        path = self._check_path(data_root)
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
                if saved.get("files") == files_key:
                    return dict(saved.get("bad", {}))
            except (json.JSONDecodeError, AttributeError):
                pass
        from tqdm import tqdm

        files = {item.rel: ("image", str(item.path)) for item in scan.images}
        files.update({item.rel: ("audio", str(item.path)) for item in scan.clips})
        rels = sorted(files)
        bad: dict[str, str] = {}
        bar = tqdm(total=len(rels), desc=f"{self.title}: checking files", unit="file", disable=not progress)
        with _Workers(self.workers, len(rels)) as pool:
            for lo in range(0, len(rels), 1024):
                chunk = rels[lo : lo + 1024]
                for rel, reason in zip(chunk, pool.map(_check_job, [files[r] for r in chunk])):
                    if reason is not None:
                        bad[rel] = reason
                bar.update(len(chunk))
        bar.close()
        self._save_check(data_root, files_key, bad)
        return bad

    def _save_check(self, data_root: Path, files_key: str, bad: dict[str, str]) -> None:
        atomic_write_text(self._check_path(data_root), json.dumps({"files": files_key, "bad": dict(sorted(bad.items()))}, indent=1))

    # -- planning ----------------------------------------------------------------------

    def plan(self, scan: Scan, bad: dict[str, str]) -> _Plan:
        """Apply the skips (or raise), validate what is left, name the stores and their meta."""
        root = scan.root
        if bad and not self.skip_bad:
            first = sorted(bad)[0]
            raise DatasetError(f"{root / first}: {bad[first]}; {SKIP_FIX}\n  {len(bad)} bad file(s):\n"
                               + _listing(f"{root / r}: {why}" for r, why in sorted(bad.items())))
        skipped = {d["file"]: d["reason"] for d in scan.skipped}
        skipped.update(bad)
        images, clips, image_clip = scan.images, scan.clips, None
        if scan.pairing == "fixed":
            keep_img = []
            for i, item in enumerate(images):
                clip = clips[scan.image_clip[i]]
                if item.rel in bad:
                    continue
                if clip.rel in bad:
                    skipped[item.rel] = f"its audio partner {clip.rel} is bad ({bad[clip.rel]})"
                    continue
                keep_img.append(i)
            used = sorted({scan.image_clip[i] for i in keep_img})
            new_index = {old: new for new, old in enumerate(used)}
            images = [images[i] for i in keep_img]
            clips = [clips[j] for j in used]
            image_clip = np.array([new_index[scan.image_clip[i]] for i in keep_img], dtype=np.int32)
        else:
            images = [it for it in images if it.rel not in bad]
            clips = [it for it in clips if it.rel not in bad]
        skipped_list = [{"file": f, "reason": r} for f, r in sorted(skipped.items())]
        if skipped_list:
            log.warning("%s: skipping %d file(s):\n%s", self.title, len(skipped_list), _listing(f"{d['file']}: {d['reason']}" for d in skipped_list))
        names = scan.class_names
        after = f" after skipping {len(skipped_list)} bad file(s)" if skipped_list else ""
        table = SampleTable([it.id for it in images], np.array([it.label for it in images], dtype=np.int64),
                            np.array([it.split for it in images]), list(names))
        try:
            table.validate(f"{root / 'image'}{after}")
        except DatasetError as e:
            raise DatasetError(f"{e}; the skipped files are listed above" if skipped_list else str(e)) from None
        n_classes = len(names)
        has = np.zeros((n_classes, len(SPLITS)), dtype=bool)
        for it in clips:
            has[it.label, SPLITS.index(it.split)] = True
        lacking = [names[c] for c in np.flatnonzero(~has.any(axis=1))]
        if lacking:
            raise DatasetError(f"{root / 'audio'}: class(es) {lacking[:8]} have no usable audio clip{after}; add clips for them")
        bank_required = tuple(s for k, s in enumerate(SPLITS) if has[:, k].all())
        # Classes whose images of some split draw from all of the class's clips (no clip in the matching group).
        fallback = []
        if scan.pairing == "class":
            img_has = np.zeros((n_classes, len(SPLITS)), dtype=bool)
            for it in images:
                img_has[it.label, SPLITS.index(it.split)] = True
            for c in range(n_classes):
                if (img_has[c, 0] and not has[c, 0]) or (img_has[c, 1] and not (has[c, 1] or has[c, 0])) or (img_has[c, 2] and not has[c, 2]):
                    fallback.append(names[c])
            if fallback and scan.audio_layout == "split":
                log.warning("%s: class(es) %s lack clips in a split group (audio/train or audio/test); their images of that split "
                            "pair with any clip of the class", self.title, fallback[:8])
        prompt_names = self.prompt_names(names)
        template = self.prompt_template
        skip_rels = [d["file"] for d in skipped_list]
        stats = {it.rel: it.path.stat() for it in (*images, *clips)}
        bank_key = {"version": PREPROCESS_VERSION, "dataset": self.name, "class_names": names, "audio": self.audio_params(),
                    "clips": [(it.id, it.rel, stats[it.rel].st_size, stats[it.rel].st_mtime_ns, it.label, it.split) for it in clips],
                    "skipped": skip_rels}
        bank_name = f"{self.name}-bank-{config_hash(bank_key)}"
        image_key = {"version": PREPROCESS_VERSION, "dataset": self.name, "class_names": names, "image": self.image_params(),
                     "images": [(it.id, stats[it.rel].st_size, stats[it.rel].st_mtime_ns, it.label, it.split) for it in images],
                     "bank": bank_name, "pairing": scan.pairing, "audio_clip": None if image_clip is None else config_hash(image_clip.tolist()),
                     "skipped": skip_rels, "prompt_template": template, "class_prompt_names": prompt_names, "val_split": scan.val_split}
        image_name = f"{self.name}-{config_hash(image_key)}"
        common = {"sample_rate": self.sample_rate, "clip_samples": self.clip_samples, "clip_seconds": self.clip_seconds}
        audio_files = {it.rel for it in scan.clips}
        bank_meta = {"dataset": f"{self.name}:audio_bank", "role": "audio clip bank", "source": str(root), "audio_layout": scan.audio_layout,
                     "preprocess": self.audio_params(), **common, "pretrained": None,
                     "skipped": [d for d in skipped_list if d["file"] in audio_files]}
        image_meta = {"dataset": self.name, "source": str(root), "audio_bank": bank_name, "pairing": scan.pairing, **common,
                      "image_size": self.image_size, "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
                      "prompt_template": template, "class_prompt_names": prompt_names, "skipped": skipped_list,
                      "val_split": scan.val_split, "audio_layout": scan.audio_layout, "pairing_fallback": fallback,
                      "preprocess": self.image_params(), "pretrained": None, **scan.notes,
                      "note": "raw media views (CLIP-normalised image; waveforms in the audio bank); no encoder"}
        return _Plan(scan, images, clips, image_clip, skipped_list, bank_name, image_name, bank_meta, image_meta, bank_required, fallback)

    # -- open --------------------------------------------------------------------------

    def open(self, data_root: Path, progress: bool = True) -> FeatureStore:
        """The frozen-encoder features store over the image store when one was extracted for it
        (`python -m datasets.extraction.paired`: adds `audio`/`visual`, links the raw views), else the image store."""
        from datasets.extraction.paired import features_store_path

        raw = self.open_raw(data_root, progress)
        features = features_store_path(self, data_root, raw)
        return FeatureStore(features) if features is not None else raw

    def available_views(self, data_root: Path) -> tuple[str, ...]:
        """The raw views, plus `audio`/`visual` once the features store exists (no scan, no build)."""
        from datasets.extraction.paired import FEATURE_VIEWS, features_store_path

        return tuple(self.views) + (FEATURE_VIEWS if features_store_path(self, data_root) is not None else ())

    def missing_views_hint(self, data_root: Path, lacking: set[str]) -> str:
        """The frozen-encoder views (`audio`, `visual`) come from one extraction command."""
        from datasets.extraction.paired import extraction_command

        return f"extract them with `{extraction_command(self, data_root)}`" if lacking <= {"audio", "visual"} else ""

    def open_raw(self, data_root: Path, progress: bool = True) -> FeatureStore:
        """The image store (its clip bank next to it), built first if needed. Needs the data, not the protocol."""
        missing = self.missing_parts(data_root)
        if missing:
            raise DatasetError(f"{self.title}: missing " + "; ".join(missing) + f"\n  Expected layout:\n{self.layout_help(self.root(data_root))}")
        data_root = Path(data_root)
        scan = self.scan(data_root)
        files_key = self._files_key(scan)
        bad = self.check_files(data_root, scan, files_key, progress)
        store_dir = self.store_dir(data_root)
        for _ in range(len(scan.images) + len(scan.clips) + 1):  # each round skips at least one more file
            plan = self.plan(scan, bad)
            bank_path, image_path = store_dir / plan.bank_name, store_dir / plan.image_name
            self.report = {"skipped": plan.skipped, "pairing_fallback": plan.fallback_classes}
            if (image_path / "manifest.json").is_file() and (bank_path / "manifest.json").is_file():
                return FeatureStore(image_path)
            try:
                if not (bank_path / "manifest.json").is_file():
                    self._build_bank(plan, bank_path, progress)
                return self._build_images(plan, image_path, progress)
            except _BadFiles as e:
                # Header fine, data not (e.g. a truncated JPEG): remember it for this file list, then stop or skip it.
                # The half-built stores are keyed on the old file state and skip list, so they can never be resumed.
                for built in (bank_path, image_path):
                    shutil.rmtree(built.with_name(built.name + ".partial"), ignore_errors=True)
                bad = {**bad, **e.bad}
                self._save_check(data_root, files_key, bad)
        raise RuntimeError("unreachable: every file was skipped")

    def _fill(self, writer: StoreWriter, view: str, jobs: list, fn, desc: str, progress: bool) -> list:
        """Run `fn` over `jobs` in batches (worker pool) and write view rows in order; resumes at the filled row."""
        from tqdm import tqdm

        start = writer.filled[view]
        extras = []
        bar = tqdm(total=len(jobs), initial=start, desc=desc, unit="file", disable=not progress)
        try:
            with _Workers(self.workers, len(jobs) - start) as pool:
                for lo in range(start, len(jobs), self.batch_size):
                    outs = pool.map(fn, jobs[lo : lo + self.batch_size])
                    errors = {o[1]: o[2] for o in outs if o[0] == "error"}
                    if errors:
                        raise _BadFiles(errors)
                    writer.write(view, lo, np.stack([o[1] for o in outs]))
                    extras.extend(o[2:] for o in outs)
                    bar.update(len(outs))
        finally:
            bar.close()
        return extras

    def _build_bank(self, plan: _Plan, path: Path, progress: bool) -> FeatureStore:
        clips = plan.clips
        table = SampleTable([it.id for it in clips], np.array([it.label for it in clips], dtype=np.int64),
                            np.array([it.split for it in clips]), list(plan.scan.class_names))
        writer = StoreWriter(path, table, [ViewSpec("waveform", (self.clip_samples,))], plan.bank_meta,
                             str(plan.scan.root / "audio"), required_splits=plan.bank_required)
        t0 = time.time()
        jobs = [(str(it.path), it.rel, self.sample_rate, self.clip_samples) for it in clips]
        resumed_at = writer.filled["waveform"]
        extras = self._fill(writer, "waveform", jobs, _clip_job, f"{self.title}: audio clips", progress)
        resampled = sum(bool(e[0]) for e in extras)
        if resampled:
            log.info("%s: %d audio file(s) were resampled to %d Hz", self.title, resampled, self.sample_rate)
        # A resumed build counts only the clips it processed itself (resampled_from_row says from where).
        writer.add_meta(extract_seconds=round(time.time() - t0, 1), resampled_clips=resampled, resampled_from_row=resumed_at)
        return writer.finalize()

    def _build_images(self, plan: _Plan, path: Path, progress: bool) -> FeatureStore:
        images = plan.images
        table = SampleTable([it.id for it in images], np.array([it.label for it in images], dtype=np.int64),
                            np.array([it.split for it in images]), list(plan.scan.class_names))
        views = [ViewSpec("clip_image", (3, self.image_size, self.image_size))]
        if plan.image_clip is not None:
            views.append(ViewSpec("audio_clip", (), "int32"))
        writer = StoreWriter(path, table, views, plan.image_meta, str(plan.scan.root / "image"))
        if plan.image_clip is not None and writer.filled["audio_clip"] == 0:
            writer.write("audio_clip", 0, plan.image_clip)
        t0 = time.time()
        jobs = [(str(it.path), it.rel, self.image_size, CLIP_MEAN, CLIP_STD) for it in images]
        self._fill(writer, "clip_image", jobs, _image_job, f"{self.title}: images", progress)
        writer.add_meta(extract_seconds=round(time.time() - t0, 1))
        return writer.finalize()


# ----------------------------------------------------------------------------- registration


def register_paired_folder(root: Path, name: str | None = None, protocol: dict | None = None, **options) -> PairedFolderAdapter:
    """Register a user's paired image+audio folder as a dataset, so `run_all.py` can run on it.

    `name` defaults to the folder name (characters other than letters, digits, `_ . -` become
    `_`); `protocol` (a protocol.yaml-like mapping) takes precedence over `<root>/protocol.yaml`.
    `options` go to PairedFolderAdapter (image_size, sample_rate, clip_seconds, skip_bad, ...).
    """
    from datasets import register

    root = Path(root).expanduser()
    if name is None:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", root.resolve().name).strip("_") or "paired_folder"
    elif not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"paired folder name {name!r}: use letters, digits, _ . - only (it names stores and records)")
    adapter = PairedFolderAdapter(root, name, protocol=protocol, **options)
    register(adapter)
    return adapter


def parse_paired_protocol(value: str) -> dict:
    """`--paired-protocol "INITIAL,PER_STEP"` -> {"initial": INITIAL, "per_step": PER_STEP}."""
    parts = [p.strip() for p in str(value).split(",")]
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(f"--paired-protocol {value!r}: expected INITIAL,PER_STEP (two positive integers, e.g. 4,3)")
    return {"initial": int(parts[0]), "per_step": int(parts[1])}


ADAPTERS: list = []  # the generic adapter exists only per registered folder
