"""VGG-Instruments in CIGN's class-incremental split (Mo, Pian, Tian, ICCV 2023).

36 instrument classes of VGGSound (djembe dropped) in 4 groups of 9, one group per step.
The class order (label index) and group membership are those of the CIGN reference
(`datasets.py` class list and the metadata file names `avctl_vgginstruments_group_{g}_*`;
../shared/reference/cign.md section 3).

Layout (root = `<data_root>/vgg_instruments`):

    root/metadata/avctl_vgginstruments_group_{0..3}_{train,val,test}.txt   lines `id,class_name`
    root/audio/<id>.wav                                                     one audio file per clip
    root/frames/<id>.jpg                                                    one frame per clip

Lines whose id is the malformed `-` (36 in the reference files) are dropped, with a count in
the log and in the store's metadata. A missing media file is a DatasetError naming it; with
`skip_bad` (constructor, or environment variable VGG_INSTRUMENTS_SKIP_BAD=1) clips with a
missing or empty media file are left out instead, listed in the log and in the store's
metadata.

Preprocessing (as the reference's `datasets.py`), stored once as float16 views:
  spectrogram (257, T): the 3 s window centred on the middle of the clip at the file's native
      rate (mono, clipped to [-1, 1]; tiled when shorter than 3 s),
      scipy.signal.spectrogram(nperseg=512, noverlap=274) (Tukey window, constant detrend,
      density scaling), then log(S + 1e-7). T = 200 at 16 kHz, 276 at 22.05 kHz, 554 at 44.1 kHz.
      (The reference's Normalize(0, 12) is applied by the model: CIGN's `spec_std`.)
      All clips share one rate: the native rate of the first clip; a file at another rate is
      resampled to it (polyphase) and counted, since the store needs one shape.
  image (3, 224, 224): the frame resized (bicubic) so its shorter side is 224, centre-cropped
      to 224, ImageNet-normalised. The reference's train-time random crop cannot be applied to
      a stored crop (CIGN applies the random flip at train time).
Store: `<data_root>/cache/store/vgg_instruments-<hash>` (the hash covers the metadata files,
the preprocessing and the skip list); written in batches, resumable, published atomically.

The store has no `audio`/`visual` feature views, so only methods that read `spectrogram` and
`image` (CIGN with `input: raw`) run on it; the grid skips the others with a note.

Protocol "4x9": classes per step (9, 9, 9, 9) in the reference order; memory 0 (CIGN's
protocol is exemplar-free, and the reference code keeps no exemplars).
"""

from __future__ import annotations

import hashlib
import logging
import math
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from datasets.base import SPLITS, Availability, DatasetAdapter, ProtocolSpec, SampleTable
from datasets.errors import DatasetError
from datasets.io import config_hash
from datasets.store import FeatureStore, StoreWriter, ViewSpec

log = logging.getLogger(__name__)

GROUPS: tuple[tuple[str, ...], ...] = (
    ("flute", "cello", "bass_guitar", "accordion", "tabla", "erhu", "cornet", "electronic_organ", "timbales"),
    ("acoustic_guitar", "violin", "piano", "banjo", "glockenspiel", "steel_guitar", "vibraphone", "trumpet", "zither"),
    ("cymbal", "xylophone", "harp", "hammond_organ", "harpsichord", "bongo", "bass_drum", "mandolin", "guiro"),
    ("saxophone", "electric_guitar", "drum_kit", "clarinet", "snare_drum", "ukulele", "sitar", "double_bass", "congas"),
)
CLASSES: tuple[str, ...] = tuple(c for g in GROUPS for c in g)
DROPPED_CLASS = "djembe"  # in VGG-Instruments, not in CIGN's split
MALFORMED_ID = "-"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIGN_REPO = "https://github.com/stoneMo/CIGN"


def metadata_name(group: int, split: str) -> str:
    return f"avctl_vgginstruments_group_{group}_{split}.txt"


def normalize_class(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


# ----------------------------------------------------------------------------- preprocessing
# (module level: runs in workers)


def spectrogram_frames(sample_rate: int, seconds: float = 3.0, nperseg: int = 512, noverlap: int = 274) -> int:
    """Number of spectrogram frames of a `seconds` window at `sample_rate` (scipy's segmenting)."""
    n = int(round(seconds * sample_rate))
    return (n - noverlap) // (nperseg - noverlap)


def log_spectrogram(
    path: Path, sample_rate: int, seconds: float = 3.0, nperseg: int = 512, noverlap: int = 274, eps: float = 1e-7
) -> tuple[np.ndarray, bool]:
    """(log spectrogram float32 (nperseg//2 + 1, T), resampled?) of the centred `seconds` window."""
    from scipy.signal import spectrogram

    from datasets.media import mix_resample, read_samples

    data, rate = read_samples(path, "replace it, or delete it and run with VGG_INSTRUMENTS_SKIP_BAD=1")
    wave = np.clip(data, -1.0, 1.0).mean(axis=1)
    resampled = rate != sample_rate
    if resampled:
        wave = mix_resample(wave, rate, sample_rate)
    n = int(round(seconds * sample_rate))
    if len(wave) < n:  # tile short clips (reference)
        wave = np.tile(wave, math.ceil(n / len(wave)))[:n]
    else:  # the window centred on the middle of the clip (reference: start = duration / 2 - seconds / 2)
        start = max(0, int(round(len(wave) / 2 - n / 2)))
        wave = wave[start : start + n]
    _, _, spec = spectrogram(wave.astype(np.float64), sample_rate, nperseg=nperseg, noverlap=noverlap)
    return np.log(spec + eps).astype(np.float32), resampled


def load_image(path: Path, size: int = 224) -> np.ndarray:
    """float32 (3, size, size): shorter side resized to `size` (bicubic), centre crop, ImageNet-normalised."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, int(round(w * scale))), max(size, int(round(h * scale)))
            im = im.resize((nw, nh), Image.BICUBIC)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
            x = np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DatasetError(
            f"{path}: not a readable image, corrupt or truncated ({e}); "
            "replace it, or delete it and run with VGG_INSTRUMENTS_SKIP_BAD=1"
        ) from e
    x = (x - np.array(IMAGENET_MEAN, dtype=np.float32)) / np.array(IMAGENET_STD, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def _clip_job(job: tuple) -> tuple[np.ndarray, np.ndarray, bool]:
    audio_path, image_path, sample_rate, params = job
    spec, resampled = log_spectrogram(
        Path(audio_path), sample_rate, params["audio_seconds"], params["nperseg"], params["noverlap"], params["log_eps"]
    )
    return spec, load_image(Path(image_path), params["image_size"]), resampled


# ----------------------------------------------------------------------------- adapter


class VGGInstruments(DatasetAdapter):
    name = "vgg_instruments"
    title = "VGG-Instruments"
    suites = ("audio-visual",)
    modalities = ("audio", "visual", "audio-visual")
    views = ("spectrogram", "image")
    PREPROCESS_VERSION = 1  # bump whenever preprocessing changes the stored views

    def __init__(
        self,
        *,
        skip_bad: bool | None = None,
        sample_rate: int | None = None,
        image_size: int = 224,
        batch_size: int = 64,
        workers: int | None = None,
    ):
        self._skip_bad = skip_bad
        self.sample_rate = sample_rate  # None: the native rate of the first clip
        self.image_size, self.batch_size = image_size, batch_size
        self.workers = workers if workers is not None else min(2, os.cpu_count() or 1)
        self.report: dict = {}  # what the last read dropped / skipped / resampled

    @property
    def skip_bad(self) -> bool:
        if self._skip_bad is not None:
            return self._skip_bad
        return os.environ.get("VGG_INSTRUMENTS_SKIP_BAD", "").strip().lower() in ("1", "true", "yes")

    def params(self) -> dict:
        return {
            "audio_seconds": 3.0,
            "nperseg": 512,
            "noverlap": 274,
            "log_eps": 1e-7,
            "window": "tukey(0.25) (scipy default)",
            "image_size": self.image_size,
            "image_resize": "shorter side, bicubic; centre crop",
            "image_mean": IMAGENET_MEAN,
            "image_std": IMAGENET_STD,
        }

    # -- paths -------------------------------------------------------------------------

    @staticmethod
    def root(data_root: Path) -> Path:
        return Path(data_root) / "vgg_instruments"

    def metadata_files(self, data_root: Path) -> list[tuple[int, str, Path]]:
        meta = self.root(data_root) / "metadata"
        return [(g, s, meta / metadata_name(g, s)) for g in range(len(GROUPS)) for s in SPLITS]

    def instructions(self, data_root: Path) -> str:
        root = self.root(data_root)
        return (
            f"VGG-Instruments (CIGN split, 36 classes in 4 groups of 9): not found at {root}. To add it:\n"
            f"  1. Copy the 12 split files metadata/avctl_vgginstruments_group_{{0,1,2,3}}_{{train,val,test}}.txt "
            f"of the CIGN repository ({CIGN_REPO}) into {root / 'metadata'}/ (lines `id,class_name`).\n"
            "  2. For every id in them, put the clip's audio track "
            f"as {root / 'audio'}/<id>.wav and one video frame as "
            f"{root / 'frames'}/<id>.jpg (the VGGSound clips of the "
            "36 instrument classes; nothing is downloaded here).\n"
            f"  3. Run: python run_all.py --datasets vgg_instruments --methods cign\n"
            "  The first run builds a float16 store (log spectrograms "
            "+ 224x224 frames, ~0.6 MB per clip at 44.1 kHz) under "
            f"{Path(data_root) / 'cache' / 'store'}/. Missing media files stop the build with their name; set "
            f"VGG_INSTRUMENTS_SKIP_BAD=1 to leave such clips out (listed). Only CIGN (input: raw) runs on this dataset."
        )

    # -- contract ----------------------------------------------------------------------

    def availability(self, data_root: Path) -> Availability:
        root = self.root(data_root)
        if not root.is_dir():
            return Availability(False, self.instructions(data_root))
        missing = [str(p) for _, _, p in self.metadata_files(data_root) if not p.is_file()]
        missing += [str(root / d) + "/" for d in ("audio", "frames") if not (root / d).is_dir()]
        if missing:
            return Availability(
                False,
                f"VGG-Instruments: {root} is incomplete, missing: {', '.join(missing[:6])}"
                f"{' ...' if len(missing) > 6 else ''}\n" + self.instructions(data_root),
            )
        return Availability(
            True, f"VGG-Instruments at {root} (store built on first use under {Path(data_root) / 'cache' / 'store'})"
        )

    def protocols(self) -> list[ProtocolSpec]:
        return [ProtocolSpec("4x9", tuple(len(g) for g in GROUPS), 0)]

    def open(self, data_root: Path, progress: bool = True) -> FeatureStore:
        avail = self.availability(data_root)
        if not avail.present:
            raise DatasetError(avail.message)
        table, meta = self.read_metadata(data_root)
        table, skipped = self.check_media(data_root, table)
        rate = self.sample_rate or self.probe_rate(data_root, table)
        key = {
            "metadata": meta["metadata_sha256"],
            "preprocess": self.params(),
            "sample_rate": rate,
            "skipped": skipped,
            "version": self.PREPROCESS_VERSION,
        }
        path = Path(data_root) / "cache" / "store" / f"{self.name}-{config_hash(key)}"
        if (path / "manifest.json").is_file():
            return FeatureStore(path)
        meta.update(
            dataset=self.name,
            sample_rate=rate,
            preprocess=self.params(),
            skipped=skipped,
            pretrained=None,
            note="raw media views (log spectrogram, normalised frame); no encoder",
        )
        return self._extract(data_root, table, path, rate, meta, progress)

    # -- metadata ----------------------------------------------------------------------

    def read_metadata(self, data_root: Path) -> tuple[SampleTable, dict]:
        """The sample table in (group, split, file) order, and the drop counts / file hashes."""
        index = {c: i for i, c in enumerate(CLASSES)}
        ids, labels, splits = [], [], []
        dropped, dropped_class, duplicates, hashes = {}, {}, {}, {}
        for g, split, path in self.metadata_files(data_root):
            raw = path.read_bytes()
            hashes[path.name] = hashlib.sha256(raw).hexdigest()
            seen: set[str] = set()
            for lineno, line in enumerate(raw.decode("utf-8-sig").splitlines(), 1):
                if not line.strip():
                    continue
                fields = [f.strip() for f in line.split(",")]
                if len(fields) != 2:
                    raise DatasetError(
                        f"{path}:{lineno}: expected `id,class_name`, got {line!r}; fix or remove the line"
                    )
                vid, cls = fields[0], normalize_class(fields[1])
                if lineno == 1 and vid.lower() in ("id", "file", "vid") and cls in ("class", "class_name", "label"):
                    continue  # a header
                if vid == MALFORMED_ID:
                    dropped[path.name] = dropped.get(path.name, 0) + 1
                    continue
                if cls == DROPPED_CLASS:
                    dropped_class[path.name] = dropped_class.get(path.name, 0) + 1
                    continue
                if cls not in index:
                    raise DatasetError(
                        f"{path}:{lineno}: unknown class {fields[1]!r}; the CIGN split has {', '.join(CLASSES)}"
                    )
                if index[cls] // 9 != g:
                    raise DatasetError(
                        f"{path}:{lineno}: class {cls!r} belongs to group {index[cls] // 9}, not group {g}; "
                        "the metadata files are not CIGN's split (re-copy them from the CIGN repository)"
                    )
                if vid in seen:
                    duplicates[path.name] = duplicates.get(path.name, 0) + 1
                    continue
                seen.add(vid)
                ids.append(vid)
                labels.append(index[cls])
                splits.append(split)
        if dropped:
            log.warning(
                "VGG-Instruments: dropped %d line(s) with the malformed id %r (%s)",
                sum(dropped.values()),
                MALFORMED_ID,
                ", ".join(f"{k}: {v}" for k, v in dropped.items()),
            )
        if dropped_class:
            log.warning(
                "VGG-Instruments: dropped %d %s line(s) (not in CIGN's split)",
                sum(dropped_class.values()),
                DROPPED_CLASS,
            )
        if duplicates:
            log.warning(
                "VGG-Instruments: dropped %d repeated line(s) within a file (%s)",
                sum(duplicates.values()),
                ", ".join(f"{k}: {v}" for k, v in duplicates.items()),
            )
        table = SampleTable(ids, np.array(labels, dtype=np.int64), np.array(splits), list(CLASSES))
        table.validate(str(self.root(data_root) / "metadata"))
        self.report = {
            "dropped_malformed": dropped,
            "dropped_malformed_total": sum(dropped.values()),
            "dropped_djembe": dropped_class,
            "dropped_repeated": duplicates,
        }
        return table, {"metadata_sha256": hashes, **self.report}

    def media_paths(self, data_root: Path, vid: str) -> tuple[Path, Path]:
        root = self.root(data_root)
        return root / "audio" / f"{vid}.wav", root / "frames" / f"{vid}.jpg"

    def check_media(self, data_root: Path, table: SampleTable) -> tuple[SampleTable, list[str]]:
        """Every clip needs a non-empty wav and jpg: raise naming the first missing one, or (skip_bad) leave them
        out."""
        bad: list[tuple[str, Path]] = []
        for vid in table.ids:
            for p in self.media_paths(data_root, vid):
                if not p.is_file() or p.stat().st_size == 0:
                    bad.append((vid, p))
                    break
        if not bad:
            return table, []
        listing = "\n".join(f"    {p}" for _, p in bad[:20]) + (
            f"\n    ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        )
        if not self.skip_bad:
            raise DatasetError(
                f"VGG-Instruments: {len(bad)} clip(s) lack a media "
                f"file (or it is empty), first: {bad[0][1]}\n{listing}\n"
                "  Put the files there, or set VGG_INSTRUMENTS_SKIP_BAD=1 to leave these clips out (they are listed)."
            )
        skip = {vid for vid, _ in bad}
        log.warning(
            "VGG-Instruments: skipping %d clip(s) with a missing or empty media file (VGG_INSTRUMENTS_SKIP_BAD):\n%s",
            len(skip),
            listing,
        )
        keep = [i for i, vid in enumerate(table.ids) if vid not in skip]
        out = SampleTable([table.ids[i] for i in keep], table.labels[keep], table.splits[keep], list(table.class_names))
        out.validate(f"{self.root(data_root)} (after skipping clips with missing media)")
        self.report["skipped"] = sorted(skip)
        return out, sorted(skip)

    def probe_rate(self, data_root: Path, table: SampleTable) -> int:
        import soundfile as sf

        path = self.media_paths(data_root, table.ids[0])[0]
        try:
            return int(sf.info(str(path)).samplerate)
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
            raise DatasetError(
                f"{path}: not a readable audio file ({e}); replace it, "
                "or delete it and run with VGG_INSTRUMENTS_SKIP_BAD=1"
            ) from e

    # -- extraction --------------------------------------------------------------------

    def _extract(
        self, data_root: Path, table: SampleTable, path: Path, rate: int, meta: dict, progress: bool
    ) -> FeatureStore:
        from tqdm import tqdm

        p = self.params()
        freq, frames = p["nperseg"] // 2 + 1, spectrogram_frames(rate, p["audio_seconds"], p["nperseg"], p["noverlap"])
        views = [ViewSpec("spectrogram", (freq, frames)), ViewSpec("image", (3, self.image_size, self.image_size))]
        writer = StoreWriter(path, table, views, meta, str(self.root(data_root) / "metadata"))
        start = min(writer.filled.values())
        start -= start % self.batch_size
        jobs = [(*map(str, self.media_paths(data_root, vid)), rate, p) for vid in table.ids[start:]]
        t0, resampled = time.time(), 0
        bar = tqdm(
            total=len(table.ids),
            initial=start,
            desc="VGG-Instruments: preprocessing",
            unit="clip",
            disable=not progress,
        )
        pool = None
        if self.workers > 1 and len(jobs) >= 8:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
            pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx)
        try:
            for lo in range(0, len(jobs), self.batch_size):
                chunk = jobs[lo : lo + self.batch_size]
                outs = list(pool.map(_clip_job, chunk, chunksize=4)) if pool else [_clip_job(j) for j in chunk]
                row = start + lo
                for name, values in (
                    ("spectrogram", np.stack([o[0] for o in outs])),
                    ("image", np.stack([o[1] for o in outs])),
                ):
                    skip = writer.filled[name] - row  # rows written before an interruption
                    if skip < len(values):
                        writer.write(name, row + skip, values[skip:])
                resampled += sum(o[2] for o in outs)
                bar.update(len(chunk))
        finally:
            bar.close()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        if resampled:
            log.warning("VGG-Instruments: %d audio file(s) were not at %d Hz and were resampled to it", resampled, rate)
        writer.add_meta(extract_seconds=round(time.time() - t0, 1), resampled_files=resampled)
        return writer.finalize()


ADAPTERS = [VGGInstruments()]
