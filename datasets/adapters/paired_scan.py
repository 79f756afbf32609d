"""Scanning a paired image + audio folder tree: which files, which classes, which split, which pairing.

Nothing is decoded here (that is `datasets.media`, through `datasets.adapters.paired_build`); a scan
only lists files and checks the structure, and every problem is a DatasetError naming the folder or
file and the fix. The layout is described in `datasets.adapters.paired_folder`.

val split: when there is no `image/val`, a deterministic val split is carved out of train: of
each class's train images in sorted file-name order, every 10th one (positions 9, 19, 29, ...,
i.e. 10 %), and at least one (the last) for classes with fewer than 10; a class needs at least
2 train images for this. The carve-out is done on the scanned file list, before bad files are
skipped, so the val set of a class never depends on the health of other files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from datasets.base import SPLITS
from datasets.errors import DatasetError

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
AUDIO_EXTS = (".wav", ".flac")
CARVED_VAL = "carved from train: every 10th sorted train image per class (positions 9, 19, ...), at least the last one"


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


def files(folder: Path, exts: tuple[str, ...]) -> list[Path]:
    """The visible files of `folder` with one of `exts` (any case), sorted; [] when it is no folder."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts
    )


def subdirs(folder: Path) -> list[str]:
    """The names of the visible sub-folders of `folder`, sorted; [] when it is no folder."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def listing(items, limit: int = 20) -> str:
    """Indented lines for an error message or log: the first `limit` items, then how many more."""
    items = list(items)
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return "\n".join(f"    {x}" for x in items[:limit]) + more


def carve_val(train: list[Path]) -> tuple[list[Path], list[Path]]:
    """(train, val) from one class's sorted train files: every 10th (positions 9, 19, ...), at least the last one."""
    val_idx = set(range(9, len(train), 10)) or {len(train) - 1}
    return [f for i, f in enumerate(train) if i not in val_idx], [f for i, f in enumerate(train) if i in val_idx]


def scan_images(root: Path, classes: tuple[str, ...] | None, title: str) -> tuple[list[str], list[Item], str]:
    """(class names, image items in (split, class, file) order, how val was made) of `root/image`.

    `classes`: the exact class folders a dataset must have (None: any). Every class needs images in
    every image split; without `image/val` the val split is carved out of train (module docstring).
    """
    image_dir = root / "image"
    splits = [s for s in SPLITS if (image_dir / s).is_dir()]
    for s in ("train", "test"):
        if s not in splits:
            raise DatasetError(f"{image_dir / s}/: missing; put the {s} images there as {image_dir / s}/<class>/*.jpg")
    found = sorted(set().union(*(subdirs(image_dir / s) for s in splits)))
    if classes is not None:
        want = sorted(classes)
        lacking, extra = sorted(set(want) - set(found)), sorted(set(found) - set(want))
        if lacking or extra:
            raise DatasetError(
                f"{image_dir}: the class folders must be exactly the {len(want)} classes of {title}; "
                + (f"missing {lacking}; " if lacking else "")
                + (f"unexpected {extra}; " if extra else "")
                + f"expected in every split: {want}"
            )
    if not found:
        raise DatasetError(
            f"{image_dir / 'train'}/: no class folders; put images as {image_dir / 'train'}/<class>/*.jpg"
        )
    class_names = sorted(classes) if classes is not None else found
    per: dict[tuple[str, int], list[Path]] = {}
    problems = []
    for s in splits:
        for c, cls in enumerate(class_names):
            found_files = files(image_dir / s / cls, IMAGE_EXTS)
            if not found_files:
                problems.append(f"{image_dir / s / cls}/: class {cls!r} has no {s} images (JPEG or PNG)")
            per[(s, c)] = found_files
    if problems:
        raise DatasetError(
            f"{image_dir}: {len(problems)} class/split folder(s) without images, first: {problems[0]}\n"
            f"{listing(problems)}\n  Every class needs images in every split: add them, or remove the "
            "class folder from every split."
        )
    val_split = "folder"
    if "val" not in splits:
        val_split = CARVED_VAL
        for c, cls in enumerate(class_names):
            train = per[("train", c)]
            if len(train) < 2:
                raise DatasetError(
                    f"{image_dir / 'train' / cls}/: class {cls!r} has {len(train)} train image; "
                    "at least 2 are needed to carve a val image out of train (or add "
                    f"{image_dir / 'val' / cls}/)"
                )
            per[("train", c)], per[("val", c)] = carve_val(train)
    images = []
    for s in SPLITS:
        for c in range(len(class_names)):
            for p in per[(s, c)]:
                rel = p.relative_to(root).as_posix()
                images.append(Item(rel, rel, p, c, s))
    return class_names, images, val_split


def scan_class_audio(root: Path, class_names: list[str], images: list[Item], fixed_classes: bool, title: str) -> Scan:
    """ "class" pairing: audio/{train,val,test}/<class>/* (split layout) or audio/<class>.* (per-class layout).

    `fixed_classes` (a dataset with a fixed class set, e.g. ImageNet-ESC): every audio split folder must
    hold every class.
    """
    audio = root / "audio"
    index = {c: i for i, c in enumerate(class_names)}
    split_dirs = [s for s in SPLITS if (audio / s).is_dir()]
    loose = files(audio, AUDIO_EXTS)
    clips: list[Item] = []
    if split_dirs:
        layout = "split"
        if loose:
            log.warning(
                "%s: %d audio file(s) directly in audio/ are ignored: the split layout "
                "audio/{train,test}/<class>/ is used",
                audio,
                len(loose),
            )
        problems = []
        for s in split_dirs:
            for cls in subdirs(audio / s):
                if cls not in index:
                    problems.append(f"{audio / s / cls}/: audio class {cls!r} has no matching image class folder")
                    continue
                for p in files(audio / s / cls, AUDIO_EXTS):
                    rel = p.relative_to(root).as_posix()
                    clips.append(Item(rel, rel, p, index[cls], s))
        if problems:
            raise DatasetError(
                f"{audio}: {problems[0]}\n{listing(problems)}\n  Rename the folder to its image class "
                f"(one of {class_names[:6]}{'...' if len(class_names) > 6 else ''}) or remove it."
            )
        if fixed_classes:  # every audio split folder holds every class
            for s in split_dirs:
                lacking = [c for c in class_names if not files(audio / s / c, AUDIO_EXTS)]
                if lacking:
                    raise DatasetError(
                        f"{audio / s}: no clips for class(es) {lacking}; {title} needs "
                        f"{audio / s}/<class>/*.wav for each of its {len(class_names)} classes"
                    )
    elif loose:
        layout = "per-class"
        stray = [p for p in loose if p.stem not in index]
        if stray:
            raise DatasetError(
                f"{stray[0]}: audio file {stray[0].name!r} has no matching image class folder "
                f"(per-class layout audio/<class>.wav)\n{listing(stray)}\n  Rename it to <class>.wav "
                "for one of the image classes, or remove it."
            )
        seen: dict[int, Path] = {}
        for p in loose:
            c = index[p.stem]
            if c in seen:
                raise DatasetError(
                    f"{p}: class {p.stem!r} has two clips ({seen[c].name}, {p.name}) in the per-class layout; keep one"
                )
            seen[c] = p
            rel = p.relative_to(root).as_posix()
            clips.append(Item(rel, rel, p, c, "train"))
    else:
        raise DatasetError(
            f"{audio}: no audio found; expected {audio}/{{train,test}}/<class>/*.wav|flac "
            f"or one {audio}/<class>.wav|flac per class"
        )
    has = (
        np.bincount([c.label for c in clips], minlength=len(class_names)) if clips else np.zeros(len(class_names), int)
    )
    lacking = [class_names[c] for c in np.flatnonzero(has == 0)]
    if lacking:
        where = f"{audio}/{{train,test}}/<class>/" if layout == "split" else f"{audio}/<class>.wav"
        example = audio / (split_dirs[0] if split_dirs else "") / lacking[0]
        raise DatasetError(
            f"{audio}: class(es) {lacking[:8]}{'...' if len(lacking) > 8 else ''} have no audio clip; "
            f"put at least one clip per class in {where} (e.g. {example})"
        )
    return Scan(root, class_names, images, clips, "class", audio_layout=layout)
