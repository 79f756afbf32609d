"""Textual patches to a temporary copy of a reference checkout: the one mechanism every differential uses.

A patch names the files it targets (a glob relative to the copied tree), the exact text it replaces, the new text
and why. Applying a patch whose text is missing (or found a number of times other than the one stated) is an error:
the reference changed, and its patch list must be reviewed. Every applied patch is returned as a line to print.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Patch:
    files: str  # glob, relative to the copied tree
    old: str
    new: str
    why: str
    count: int | None = None  # occurrences each file must hold (None: at least one)
    optional: bool = False  # a file without the text needs nothing (e.g. an import to drop)


def apply_patches(root: Path, patches, folders: set[str] | None = None) -> list[str]:
    """Apply `patches` to the tree at `root` (only in files whose folder is in `folders`, when given)."""
    applied = []
    for patch in patches:
        for path in sorted(Path(root).glob(patch.files)):
            if folders is not None and path.parent.name not in folders:
                continue
            rel, text = path.relative_to(root), path.read_text()
            found = text.count(patch.old)
            if found == 0 and patch.optional:
                continue
            if found == 0 or (patch.count is not None and found != patch.count):
                expected = "at least 1" if patch.count is None else f"expected {patch.count}"
                state = "not found" if found == 0 else f"found {found} times"
                raise RuntimeError(f"{rel}: patch text {patch.old!r} {state} ({expected}): review the patch list")
            path.write_text(text.replace(patch.old, patch.new))
            applied.append(f"{rel} x{found}: {patch.why}")
    return applied


def describe(patches) -> list[str]:
    return [f"{p.files}: {p.old.strip()!r} -> {p.new.strip()!r}  ({p.why})" for p in patches]
