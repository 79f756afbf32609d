"""Building a paired folder's two stores: checking and decoding every file in a process pool, written
with StoreWriter (batched, resumable after an interruption, published atomically).

Bad files are found before the long build by a cheap header check of every file (PIL open +
verify, soundfile info), remembered in `<name>-check.json` for that exact file list; a file
whose header is fine but whose data is not (a truncated JPEG) is caught while building (`BadFiles`)
and remembered the same way. What to do with bad files (stop, or skip them) is the adapter's
decision (`datasets.adapters.paired_folder`); the decoding itself is `datasets.media`'s.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.adapters.paired_scan import Item, Scan
from datasets.base import SPLITS, SampleTable
from datasets.errors import DatasetError
from datasets.io import atomic_write_text, config_hash
from datasets.media import load_clip, load_image, wav_truncation
from datasets.store import FeatureStore, StoreWriter, ViewSpec

log = logging.getLogger(__name__)

SKIP_ENV = "PAIRED_SKIP_BAD"
SKIP_FIX = (
    f"replace it, or delete it, or run with --skip-bad ({SKIP_ENV}=1) to leave it out (listed in the store's meta)"
)


@dataclass
class Plan:
    """What to build: the files left after the skips, the store names and their meta."""

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


class BadFiles(Exception):
    """Files that failed while building (header fine, data not); {rel: reason}."""

    def __init__(self, bad: dict[str, str]):
        super().__init__(f"{len(bad)} bad file(s)")
        self.bad = bad


# ----------------------------------------------------------------------------- jobs (module level: run in workers)


def image_job(job: tuple) -> tuple:
    path, rel, size, mean, std = job
    try:
        return ("ok", load_image(Path(path), size, mean, std, fix=SKIP_FIX))
    except DatasetError as e:
        return ("error", rel, str(e))


def clip_job(job: tuple) -> tuple:
    path, rel, sample_rate, clip_samples = job
    try:
        wave, resampled = load_clip(Path(path), sample_rate, clip_samples, fix=SKIP_FIX)
        return ("ok", wave, resampled)
    except DatasetError as e:
        return ("error", rel, str(e))


def check_job(job: tuple) -> str | None:
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
    return wav_truncation(path)


class Workers:
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


# ----------------------------------------------------------------------------- bad files


def files_key(scan: Scan) -> str:
    """A hash of every scanned file with its size and mtime: the file list a check result belongs to."""
    entries = []
    for item in (*scan.images, *scan.clips):
        st = item.path.stat()
        entries.append((item.rel, st.st_size, st.st_mtime_ns))
    return config_hash(sorted(set(entries)))


def check_files(check_path: Path, scan: Scan, key: str, workers: int, title: str, progress: bool) -> dict[str, str]:
    """{relative file: reason} of bad files: remembered in `check_path` for this exact file list (`key`),
    else a header check of every file."""
    if check_path.is_file():
        try:
            saved = json.loads(check_path.read_text())
            if saved.get("files") == key:
                return dict(saved.get("bad", {}))
        except (json.JSONDecodeError, AttributeError):
            pass
    from tqdm import tqdm

    jobs = {item.rel: ("image", str(item.path)) for item in scan.images}
    jobs.update({item.rel: ("audio", str(item.path)) for item in scan.clips})
    rels = sorted(jobs)
    bad: dict[str, str] = {}
    bar = tqdm(total=len(rels), desc=f"{title}: checking files", unit="file", disable=not progress)
    with Workers(workers, len(rels)) as pool:
        for lo in range(0, len(rels), 1024):
            chunk = rels[lo : lo + 1024]
            for rel, reason in zip(chunk, pool.map(check_job, [jobs[r] for r in chunk])):
                if reason is not None:
                    bad[rel] = reason
            bar.update(len(chunk))
    bar.close()
    save_check(check_path, key, bad)
    return bad


def save_check(check_path: Path, key: str, bad: dict[str, str]) -> None:
    atomic_write_text(check_path, json.dumps({"files": key, "bad": dict(sorted(bad.items()))}, indent=1))


# ----------------------------------------------------------------------------- planning


def apply_skips(scan: Scan, bad: dict[str, str]) -> tuple[list[Item], list[Item], np.ndarray | None, list[dict]]:
    """(images, clips, image_clip, skipped [{file, reason}]) left after leaving out the `bad` files and what the
    scan skipped; with "fixed" pairing an image whose audio partner is bad goes too, and the bank keeps only
    the clips still used (image_clip: each image's new bank row)."""
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
    return images, clips, image_clip, [{"file": f, "reason": r} for f, r in sorted(skipped.items())]


def check_coverage(
    scan: Scan, images: list[Item], clips: list[Item], n_skipped: int, title: str
) -> tuple[tuple[str, ...], list[str]]:
    """(the splits every class has clips in, the classes whose images of some split draw from all of the class's
    clips) after checking that the images are a valid table and that every class has a clip."""
    root, names = scan.root, scan.class_names
    after = f" after skipping {n_skipped} bad file(s)" if n_skipped else ""
    try:
        _table(images, names).validate(f"{root / 'image'}{after}")
    except DatasetError as e:
        raise DatasetError(f"{e}; the skipped files are listed above" if n_skipped else str(e)) from None
    n_classes = len(names)
    has = np.zeros((n_classes, len(SPLITS)), dtype=bool)
    for it in clips:
        has[it.label, SPLITS.index(it.split)] = True
    lacking = [names[c] for c in np.flatnonzero(~has.any(axis=1))]
    if lacking:
        raise DatasetError(
            f"{root / 'audio'}: class(es) {lacking[:8]} have no usable audio clip{after}; add clips for them"
        )
    bank_required = tuple(s for k, s in enumerate(SPLITS) if has[:, k].all())
    fallback = []
    if scan.pairing == "class":
        img_has = np.zeros((n_classes, len(SPLITS)), dtype=bool)
        for it in images:
            img_has[it.label, SPLITS.index(it.split)] = True
        for c in range(n_classes):
            if (
                (img_has[c, 0] and not has[c, 0])
                or (img_has[c, 1] and not (has[c, 1] or has[c, 0]))
                or (img_has[c, 2] and not has[c, 2])
            ):
                fallback.append(names[c])
        if fallback and scan.audio_layout == "split":
            log.warning(
                "%s: class(es) %s lack clips in a split group (audio/train or audio/test); their images of "
                "that split pair with any clip of the class",
                title,
                fallback[:8],
            )
    return bank_required, fallback


# ----------------------------------------------------------------------------- building


def fill(
    writer: StoreWriter, view: str, jobs: list, fn, desc: str, progress: bool, workers: int, batch_size: int
) -> list:
    """Run `fn` over `jobs` in batches (worker pool) and write view rows in order; resumes at the filled row.

    Returns the extra outputs of every job; a job that failed is a BadFiles of the batch's failures."""
    from tqdm import tqdm

    start = writer.filled[view]
    extras = []
    bar = tqdm(total=len(jobs), initial=start, desc=desc, unit="file", disable=not progress)
    try:
        with Workers(workers, len(jobs) - start) as pool:
            for lo in range(start, len(jobs), batch_size):
                outs = pool.map(fn, jobs[lo : lo + batch_size])
                errors = {o[1]: o[2] for o in outs if o[0] == "error"}
                if errors:
                    raise BadFiles(errors)
                writer.write(view, lo, np.stack([o[1] for o in outs]))
                extras.extend(o[2:] for o in outs)
                bar.update(len(outs))
    finally:
        bar.close()
    return extras


def _table(items: list[Item], class_names: list[str]) -> SampleTable:
    return SampleTable(
        [it.id for it in items],
        np.array([it.label for it in items], dtype=np.int64),
        np.array([it.split for it in items]),
        list(class_names),
    )


def build_bank(
    plan: Plan,
    path: Path,
    sample_rate: int,
    clip_samples: int,
    title: str,
    workers: int,
    batch_size: int,
    progress: bool,
) -> FeatureStore:
    """The clip bank: view `waveform` (clip_samples,) per clip (datasets.media.load_clip)."""
    clips = plan.clips
    writer = StoreWriter(
        path,
        _table(clips, plan.scan.class_names),
        [ViewSpec("waveform", (clip_samples,))],
        plan.bank_meta,
        str(plan.scan.root / "audio"),
        required_splits=plan.bank_required,
    )
    t0 = time.time()
    jobs = [(str(it.path), it.rel, sample_rate, clip_samples) for it in clips]
    resumed_at = writer.filled["waveform"]
    extras = fill(writer, "waveform", jobs, clip_job, f"{title}: audio clips", progress, workers, batch_size)
    resampled = sum(bool(e[0]) for e in extras)
    if resampled:
        log.info("%s: %d audio file(s) were resampled to %d Hz", title, resampled, sample_rate)
    # A resumed build counts only the clips it processed itself (resampled_from_row says from where).
    writer.add_meta(
        extract_seconds=round(time.time() - t0, 1), resampled_clips=resampled, resampled_from_row=resumed_at
    )
    return writer.finalize()


def build_images(
    plan: Plan, path: Path, image_size: int, mean, std, title: str, workers: int, batch_size: int, progress: bool
) -> FeatureStore:
    """The image store: view `clip_image` (3, S, S) per image (datasets.media.load_image), plus the int32
    `audio_clip` (each image's bank row) for "fixed" pairing."""
    images = plan.images
    views = [ViewSpec("clip_image", (3, image_size, image_size))]
    if plan.image_clip is not None:
        views.append(ViewSpec("audio_clip", (), "int32"))
    writer = StoreWriter(
        path, _table(images, plan.scan.class_names), views, plan.image_meta, str(plan.scan.root / "image")
    )
    if plan.image_clip is not None and writer.filled["audio_clip"] == 0:
        writer.write("audio_clip", 0, plan.image_clip)
    t0 = time.time()
    jobs = [(str(it.path), it.rel, image_size, mean, std) for it in images]
    fill(writer, "clip_image", jobs, image_job, f"{title}: images", progress, workers, batch_size)
    writer.add_meta(extract_seconds=round(time.time() - t0, 1))
    return writer.finalize()
