"""AV-CIL released features (AVE, Kinetics-Sounds, VGGSound100) as harness feature stores.

The AV-CIL authors ship precomputed features: one AudioMAE vector per clip and a grid of
VideoMAE tokens per clip, plus three dict files that fix the splits and the class order.
Those `.npy` files are *pickles*: loading one can execute arbitrary code. So the harness
never unpickles them implicitly. A one-time, explicit command converts them into the
harness's pickle-free `FeatureStore`:

    python -m datasets.adapters.avcil_features import --dataset ave --src SRC --trust-pickle [--data-root data]

It reads `SRC/<folder>/` (layout in `SOURCE_LAYOUT`) and writes the store at
`<data_root>/imported/<name>/` (see `store_path`). The adapters below only
ever open that store (`np.load(..., allow_pickle=False)`); they never unpickle.

Store contents: views `audio` (D,) and `visual` (T, P, D) in float16 (float32 for a view
whose values exceed the float16 range); labels are class indices from
`category_encode_dict.npy` (which fixes the class order); rows are sorted by
(split, class index, vid), a deterministic order that makes a killed import resumable.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from datasets.base import SPLITS, Availability, DatasetAdapter, ProtocolSpec, SampleTable
from datasets.cli import positive_int, run_command
from datasets.errors import ConfigError, DatasetError
from datasets.io import atomic_write_text, file_sha256
from datasets.store import FeatureStore, StoreWriter, ViewSpec

log = logging.getLogger(__name__)

HF_DATASET = "wiberg/AV-CIL_features"
AVCIL_REPO = "https://github.com/weiguoPian/AV-CIL_ICCV2023"
AUDIO_ENCODER = "AudioMAE ViT-B/16 AS-2M (released features)"
VISUAL_ENCODER = "VideoMAE-base K400 (released features)"
DEFAULT_T = 8  # VideoMAE-base: 16 frames / tubelet size 2 = 8 temporal tubelets, tokens t-major
HASH_EDGE = 16 << 20  # big feature files: hash the first and last 16 MiB (plus size, mtime)
BATCH_BYTES = 128 << 20  # default batch: about this many float32 bytes of one view
F16_MAX = float(np.finfo(np.float16).max)
F16_TINY = float(np.finfo(np.float16).tiny)  # smallest normal float16; below it precision drops

DICT_FILES = ("category_encode_dict.npy", "all_classId_vid_dict.npy", "all_id_category_dict.npy")
AUDIO_FILE = "audio_pretrained_feature/audio_pretrained_feature_dict.npy"
VISUAL_H5 = "visual_pretrained_feature/visual_features.h5"
VISUAL_DICT = "visual_pretrained_feature/visual_pretrained_feature_dict.npy"
SOURCE_LAYOUT = f"""SRC/<folder>/{DICT_FILES[0]}
SRC/<folder>/{DICT_FILES[1]}
SRC/<folder>/{DICT_FILES[2]}
SRC/<folder>/{AUDIO_FILE}
SRC/<folder>/{VISUAL_H5}   (or {VISUAL_DICT})"""


@dataclass(frozen=True)
class AVCILInfo:
    name: str  # harness dataset name
    folder: str  # folder name in the AV-CIL repo / feature zips
    title: str
    num_classes: int
    protocol: str
    classes_per_step: tuple[int, ...]
    memory: int
    zips: str  # HF file names to download


INFOS = {
    i.name: i
    for i in (
        AVCILInfo("ave", "AVE", "AVE", 28, "4x7", (7,) * 4, 340, "AVE_features.zip"),
        AVCILInfo(
            "ksounds",
            "kinetics-sounds",
            "Kinetics-Sounds",
            30,
            "5x6",
            (6,) * 5,
            500,
            "KS_features.zip.aa..ac (3 parts)",
        ),
        AVCILInfo(
            "vggsound100",
            "VGGSound_100",
            "VGGSound100",
            100,
            "10x10",
            (10,) * 10,
            1500,
            "VS100_features.zip.aa..af (6 parts)",
        ),
    )
}


def store_path(data_root: Path, name: str) -> Path:
    """Where the import writes, and where the adapter looks: `<data_root>/imported/<name>`."""
    return Path(data_root) / "imported" / name


def default_src(data_root: Path) -> Path:
    """Conventional source location: `<data_root>/avcil_features/<folder>/...`."""
    return Path(data_root) / "avcil_features"


def import_command(name: str, src: Path | str = "SRC", data_root: Path | str = "data") -> str:
    return (
        "python -m datasets.adapters.avcil_features import --dataset "
        f"{name} --src {src} --data-root {data_root} --trust-pickle"
    )


def dataset_info(name: str) -> AVCILInfo:
    if name not in INFOS:
        raise ConfigError(f"unknown AV-CIL dataset {name!r}; use one of {', '.join(INFOS)}")
    return INFOS[name]


# ----------------------------------------------------------------------------------------
# Adapters


class AVCILFeatures(DatasetAdapter):
    """One AV-CIL dataset, read from the store the import command wrote (never from the pickles)."""

    suites = ("audio-visual",)

    def __init__(self, info: AVCILInfo):
        self.info = info
        self.name = info.name
        self.title = info.title

    def availability(self, data_root: Path) -> Availability:
        data_root = Path(data_root)
        store = store_path(data_root, self.name)
        if (store / "manifest.json").is_file():
            return Availability(True, f"{self.title}: imported AV-CIL features at {store}")
        src = default_src(data_root)
        partial = store.with_name(store.name + ".partial")
        if partial.exists():
            return Availability(
                False,
                f"{self.title}: an import was interrupted ({partial}); re-run "
                f"it to resume:\n  {import_command(self.name, src, data_root)}",
            )
        if (src / self.info.folder / DICT_FILES[0]).is_file():
            return Availability(
                False,
                f"{self.title}: AV-CIL source files found at {src / self.info.folder} but "
                f"not imported yet; run:\n  {import_command(self.name, src, data_root)}",
            )
        return Availability(False, _download_instructions(self.info, data_root))

    def open(self, data_root: Path, progress: bool = True) -> FeatureStore:
        avail = self.availability(data_root)
        if not avail.present:
            raise DatasetError(avail.message)
        return FeatureStore(store_path(data_root, self.name))

    def protocols(self) -> list[ProtocolSpec]:
        return [ProtocolSpec(self.info.protocol, self.info.classes_per_step, self.info.memory)]

    def available_views(self, data_root: Path) -> tuple[str, ...]:
        """The store's views: the features, plus the raw `clip_image`/`waveform` views when the store was
        extracted from raw videos with `--mcil-views` (imported released features have none)."""
        manifest = store_path(Path(data_root), self.name) / "manifest.json"
        if manifest.is_file():
            return tuple(json.loads(manifest.read_text()).get("views", {}))
        return tuple(self.views)

    def missing_views_hint(self, data_root: Path, lacking: set[str]) -> str:
        if lacking & {"clip_image", "waveform"}:
            return (
                "N/A: only pre-extracted features are present, and "
                "this method reads raw frames and audio; with the raw "
                "videos, extract a store that has them: `python -m "
                f"datasets.extraction.videos --dataset {self.name} --audio-ckpt "
                "AUDIOMAE.pth --visual-ckpt VIDEOMAE_DIR --trust-pickle --mcil-views`"
            )
        return ""


def _download_instructions(info: AVCILInfo, data_root: Path) -> str:
    src = default_src(data_root)
    return (
        f"{info.title}: no imported AV-CIL features at {store_path(data_root, info.name)}. To get them:\n"
        f"  1. Download {info.zips} from the Hugging Face dataset {HF_DATASET} "
        "(concatenate split parts first, e.g. `cat KS_features.zip.* "
        f"> KS_features.zip`) and unzip into {src / info.folder}/.\n"
        f"  2. Copy {', '.join(DICT_FILES)} from {AVCIL_REPO} data/{info.folder}/ into {src / info.folder}/.\n"
        f"  The layout must be (SRC = {src}, <folder> = {info.folder}):\n    "
        + SOURCE_LAYOUT.replace("\n", "\n    ")
        + "\n"
        f"  3. Import once (the .npy files are pickles; only do this for files from a trusted source):\n"
        f"     {import_command(info.name, src, data_root)}\n"
        f"  Or, with the raw videos in {Path(data_root) / 'raw_data' / info.folder / 'videos'}/ "
        "and the three dict files, extract the features\n"
        f"  yourself with AudioMAE and VideoMAE checkpoints (see README, 'From raw videos'):\n"
        f"     python -m datasets.extraction.videos --dataset {info.name} --audio-ckpt "
        f"AUDIOMAE.pth --visual-ckpt VIDEOMAE_DIR --trust-pickle --data-root {data_root}"
    )


ADAPTERS = [AVCILFeatures(info) for info in INFOS.values()]


# ----------------------------------------------------------------------------------------
# Reading the source files (import only)


def _load_pickled_dict(path: Path) -> dict:
    """Unpickle a 0-d object array holding a dict. Only the import command calls this."""
    try:
        arr = np.load(path, allow_pickle=True)
    except Exception as e:  # corrupt, truncated, not .npy: every failure means the same fix
        raise DatasetError(
            f"{path}: cannot load ({type(e).__name__}: {e}); the file is corrupt or truncated, download it again"
        ) from e
    obj = arr.item() if isinstance(arr, np.ndarray) and arr.dtype == object and arr.shape == () else None
    if not isinstance(obj, dict):
        raise DatasetError(
            f"{path}: expected a pickled dict saved with np.save (0-d object "
            f"array), got {type(arr).__name__} {getattr(arr, 'shape', '')}"
        )
    return obj


class _DictFeatures:
    """Features from an unpickled {vid: array} dict, held whole in RAM."""

    def __init__(self, path: Path, mapping: dict):
        self.path, self.mapping = path, {str(k): v for k, v in mapping.items()}

    def __contains__(self, vid: str) -> bool:
        return vid in self.mapping

    def meta(self, vid: str) -> tuple[tuple[int, ...], np.dtype]:
        a = np.asarray(self.mapping[vid])
        return a.shape, a.dtype

    def read(self, vid: str) -> np.ndarray:
        return np.asarray(self.mapping[vid])

    def close(self) -> None:
        self.mapping = {}


class _H5Features:
    """Features from an HDF5 file with one dataset per vid; read one vid at a time, no pickle."""

    def __init__(self, path: Path):
        self.path = path
        self.f = self._guard(lambda: h5py.File(path, "r"))

    def _guard(self, fn, vid: str | None = None):
        try:
            return fn()
        except (OSError, RuntimeError) as e:  # h5py reports truncation/corruption as OSError
            where = f" (reading vid {vid!r})" if vid else ""
            raise DatasetError(
                f"{self.path}: HDF5 file is truncated or corrupt{where}: {e}; download "
                "it again (for split zips, concatenate every part before unzipping)"
            ) from e

    def __contains__(self, vid: str) -> bool:
        return self._guard(lambda: isinstance(self.f.get(vid), h5py.Dataset), vid)

    def meta(self, vid: str) -> tuple[tuple[int, ...], np.dtype]:
        return self._guard(lambda: (self.f[vid].shape, self.f[vid].dtype), vid)

    def read(self, vid: str) -> np.ndarray:
        return self._guard(lambda: self.f[vid][()], vid)

    def close(self) -> None:
        self.f.close()


def _resolve_folder(src: Path, info: AVCILInfo) -> Path:
    """`SRC/<folder>`; also accept SRC pointing at the folder itself."""
    if (src / info.folder).is_dir():
        return src / info.folder
    if (src / DICT_FILES[0]).is_file():
        return src
    raise DatasetError(
        f"missing source folder {src / info.folder}; put the AV-CIL {info.title} "
        f"files there in this layout (SRC = {src}, <folder> = {info.folder}):\n"
        + SOURCE_LAYOUT
        + f"\n(features from HF dataset {HF_DATASET}: {info.zips}; dict files from {AVCIL_REPO} data/{info.folder}/)"
    )


def _require(path: Path, fix: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"missing source file {path}; {fix}")
    return path


def build_table(folder: Path, info: AVCILInfo) -> tuple[SampleTable, Path]:
    """Rows sorted by (split, class index, vid); cross-checked against all_id_category_dict."""
    fix = f"copy it from {AVCIL_REPO} data/{info.folder}/"
    enc_p, cid_p, idc_p = (_require(folder / f, fix) for f in DICT_FILES)
    enc, cid, idc = (_load_pickled_dict(p) for p in (enc_p, cid_p, idc_p))
    index = {str(k): v for k, v in enc.items()}
    if sorted(index.values()) != list(range(len(index))):
        raise DatasetError(
            f"{enc_p}: class indices must be exactly 0..{len(index) - 1}, got {sorted(index.values())[:10]}..."
        )
    class_names = sorted(index, key=index.get)
    if len(class_names) != info.num_classes:
        log.warning(
            "%s has %d classes; the AV-CIL %s release has %d, so the default protocol %s will not fit",
            enc_p,
            len(class_names),
            info.title,
            info.num_classes,
            info.protocol,
        )
    ids, labels, splits = [], [], []
    for split in SPLITS:
        if split not in cid or split not in idc:
            missing = cid_p if split not in cid else idc_p
            raise DatasetError(
                f"{missing}: no {split!r} split; the file must hold "
                f"train, val and test (download it again from {AVCIL_REPO})"
            )
        per_class = {int(c): [str(v) for v in vids] for c, vids in cid[split].items()}
        vid_cat = {str(k): str(v) for k, v in idc[split].items()}
        bad = sorted(set(per_class) - set(range(len(class_names))))
        if bad:
            raise DatasetError(f"{cid_p}: {split} lists class index(es) {bad[:5]} that {enc_p.name} does not define")
        listed = set()
        for c in sorted(per_class):
            for vid in sorted(per_class[c]):
                if vid not in vid_cat:
                    raise DatasetError(
                        f"{idc_p}: vid {vid!r} ({split}, class {c} {class_names[c]!r} in {cid_p.name}) "
                        "is missing; the dict files do not belong together, download both again"
                    )
                if vid_cat[vid] != class_names[c]:
                    raise DatasetError(
                        f"{idc_p}: vid {vid!r} ({split}) has category {vid_cat[vid]!r} "
                        f"but {cid_p.name} lists it under class {c} {class_names[c]!r}; "
                        "the dict files do not belong together: copy both again from the AV-CIL "
                        "repository's data/<dataset>/ folder"
                    )
                ids.append(vid)
                labels.append(c)
                splits.append(split)
                listed.add(vid)
        extra = sorted(set(vid_cat) - listed)
        if extra:
            raise DatasetError(
                f"{idc_p}: vid {extra[0]!r} ({split}{f', and {len(extra) - 1} more' if len(extra) > 1 else ''}) "
                f"is not listed in {cid_p.name}; "
                "the dict files do not belong together: copy both again from the AV-CIL repository's "
                "data/<dataset>/ folder"
            )
    table = SampleTable(ids, np.array(labels), np.array(splits), class_names)
    table.validate(str(cid_p))
    return table, cid_p


def _check_features(src, table: SampleTable, ndim: int) -> tuple[int, ...]:
    """Every vid present, floating, and of one shape (the first row's). Returns that shape."""
    missing = [v for v in table.ids if v not in src]
    if missing:
        i = table.ids.index(missing[0])
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DatasetError(
            f"{src.path}: vid {missing[0]!r}{more} ({table.splits[i]}, class "
            f"{table.class_names[table.labels[i]]!r}) is listed in all_classId_vid_dict.npy but missing here; "
            "download the features again (all zip parts, concatenated) or remove the vid from the split dicts"
        )
    ref_vid = table.ids[0]
    expected, _ = src.meta(ref_vid)
    if len(expected) != ndim:
        raise DatasetError(
            f"{src.path}: vid {ref_vid!r} has shape {tuple(expected)}; expected a {ndim}-d array per "
            "vid: the file in this slot holds other features (audio and visual swapped?); put the "
            "released file there, or download it again"
        )
    for vid in table.ids:
        shape, dtype = src.meta(vid)
        if tuple(shape) != tuple(expected):
            raise DatasetError(
                f"{src.path}: vid {vid!r} has shape {tuple(shape)}, expected {tuple(expected)} (the shape of "
                f"the first vid {ref_vid!r}); the file is corrupt or mixes feature versions, download it again"
            )
        if not np.issubdtype(dtype, np.floating):
            raise DatasetError(f"{src.path}: vid {vid!r} has dtype {dtype}, expected floating-point features")
    return tuple(expected)


def _grid(n_tokens: int, grid: tuple[int, int] | None, path: Path) -> tuple[int, int]:
    """(T, P) with T * P = n_tokens; default T = 8 VideoMAE tubelets."""
    if grid is not None:
        t, p = grid
        if t * p != n_tokens:
            raise DatasetError(
                f"--grid {t},{p} gives {t * p} tokens but {path} has {n_tokens} "
                f"tokens per vid; pass --grid T,P with T*P = {n_tokens}"
            )
        return t, p
    if n_tokens % DEFAULT_T:
        raise DatasetError(
            f"{path} has {n_tokens} visual tokens per vid, not divisible by the default "
            f"T={DEFAULT_T} temporal tubelets; pass --grid T,P with T*P = {n_tokens}"
        )
    return DEFAULT_T, n_tokens // DEFAULT_T


def fingerprint_file(path: Path, whole: bool) -> dict:
    """Full sha256 for small files; for huge feature files size, mtime and sha256 of the first and last 16 MiB
    (hashing 100-300 GB would take longer than the import and the edges catch truncation and re-downloads)."""
    if whole:
        return {"sha256": file_sha256(path)}
    st = path.stat()
    with open(path, "rb") as f:
        head = hashlib.sha256(f.read(HASH_EDGE)).hexdigest()
        f.seek(max(0, st.st_size - HASH_EDGE))
        tail = hashlib.sha256(f.read(HASH_EDGE)).hexdigest()
    return {
        "size": st.st_size,
        "mtime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime)),
        "sha256_first_16MiB": head,
        "sha256_last_16MiB": tail,
    }


# ----------------------------------------------------------------------------------------
# Writing the store


class _Fp16Overflow(Exception):
    def __init__(self, view: str, max_abs: float):
        super().__init__(view, max_abs)
        self.view, self.max_abs = view, max_abs


def _update_stats(stats: dict, x: np.ndarray, fp16: bool) -> None:
    """Running max |x| and, for float16 views, max abs / relative error of the cast.
    The relative error is taken over |x| >= the smallest normal float16 (below it float16 is
    subnormal and relative error is meaningless); how many values lie below is counted."""
    a = np.abs(x)
    stats["max_abs_value"] = max(stats["max_abs_value"], float(a.max(initial=0.0)))
    if not fp16 or stats["max_abs_value"] > F16_MAX:
        return
    err = np.abs(x.astype(np.float16).astype(x.dtype) - x)
    normal = a >= F16_TINY
    stats["max_abs_error"] = max(stats["max_abs_error"], float(err.max(initial=0.0)))
    if normal.any():
        stats["max_rel_error"] = max(stats["max_rel_error"], float((err[normal] / a[normal]).max()))
    stats["n_nonzero_below_fp16_normal"] += int(np.count_nonzero((a > 0) & ~normal))


def _fill_view(writer: StoreWriter, view: str, src, ids: list[str], reshape, batch_rows: int, progress: bool) -> dict:
    """Write one view in row order, in batches, resuming where a previous run stopped.

    Conversion stats live next to the partial view (`import_stats_<view>.json`) and cover a
    prefix of rows; after a crash the rows written but not yet measured are re-read (at most
    one batch) so the recorded error is over every row.
    """
    n, fp16 = len(ids), writer.views[view].dtype == "float16"
    stats_path = writer.partial / f"import_stats_{view}.json"
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    if stats.get("fingerprint") != writer.fingerprint or stats.get("rows", 0) > writer.filled[view]:
        stats = {
            "fingerprint": writer.fingerprint,
            "rows": 0,
            "max_abs_value": 0.0,
            "max_abs_error": 0.0,
            "max_rel_error": 0.0,
            "n_nonzero_below_fp16_normal": 0,
        }
    start = stats["rows"]
    with tqdm(total=n, initial=start, desc=f"{view:6s}", unit="vid", disable=not progress) as bar:
        while start < n:
            end = min(start + batch_rows, n)
            x = np.stack([reshape(src.read(v)) for v in ids[start:end]])
            finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
            if not finite.all():
                raise DatasetError(
                    f"{src.path}: vid {ids[start + int(np.argmin(finite))]!r} "
                    "has NaN/inf values; the file is corrupt, download it again"
                )
            _update_stats(stats, x, fp16)
            if fp16 and stats["max_abs_value"] > F16_MAX:
                raise _Fp16Overflow(view, stats["max_abs_value"])
            done = writer.filled[view]
            if end > done:
                writer.write(view, done, x[done - start :])
            stats["rows"] = end
            atomic_write_text(stats_path, json.dumps(stats))
            bar.update(end - start)
            start = end
    stats_path.unlink(missing_ok=True)
    out = {k: v for k, v in stats.items() if k not in ("fingerprint", "rows")}
    if fp16:
        return {"dtype": "float16", **out, "rel_error_over": f"|x| >= {F16_TINY:.3g} (smallest normal float16)"}
    return {
        "dtype": "float32",
        "max_abs_value": out["max_abs_value"],
        "max_abs_error": 0.0,
        "max_rel_error": 0.0,
        "note": "values exceed the float16 range, kept float32",
    }


def _previous_dtypes(final: Path, meta: dict) -> dict:
    """Dtypes an interrupted import of the same sources settled on (a float32 fallback survives a resume)."""
    spec_path = final.with_name(final.name + ".partial") / "spec.json"
    try:
        spec = json.loads(spec_path.read_text())
    except (OSError, ValueError):
        return {}
    if spec.get("meta") != json.loads(json.dumps(meta, default=str)):
        return {}
    return {k: v["dtype"] for k, v in spec.get("views", {}).items()}


def _auto_batch(shape: tuple[int, ...]) -> int:
    return max(1, BATCH_BYTES // (4 * int(np.prod(shape))))


def import_features(
    dataset: str,
    src: Path,
    data_root: Path,
    trust_pickle: bool = False,
    grid: tuple[int, int] | None = None,
    batch_rows: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> FeatureStore:
    """Convert `src/<folder>/` into the store at `store_path(data_root, dataset)`. See the module docstring."""
    info = dataset_info(dataset)
    if batch_rows is not None and batch_rows <= 0:
        raise ConfigError(f"batch_rows must be positive, got {batch_rows}")
    if not trust_pickle:
        raise ConfigError(
            "refusing to import: the AV-CIL .npy files (the three dict files and the feature dicts) are Python "
            "pickles, and loading a pickle can execute arbitrary code. Only import files from a trusted source (the "
            f"AV-CIL authors' repository {AVCIL_REPO} and HF dataset {HF_DATASET}); then pass --trust-pickle. "
            "The import is the only step that unpickles; the resulting store is pickle-free."
        )
    final = store_path(data_root, info.name)
    if (final / "manifest.json").is_file() and not force:
        log.info("%s: already imported at %s; pass --force to import again", info.title, final)
        return FeatureStore(final)
    folder = _resolve_folder(Path(src), info)
    table, cid_p = build_table(folder, info)

    feat_fix = f"unzip {info.zips} from HF dataset {HF_DATASET} into {folder}/ (concatenate split parts first)"
    audio_p = _require(folder / AUDIO_FILE, feat_fix)
    visual_p = folder / VISUAL_H5 if (folder / VISUAL_H5).is_file() else folder / VISUAL_DICT
    _require(visual_p, f"{feat_fix}; expected {folder / VISUAL_H5} or {folder / VISUAL_DICT}")

    audio = _DictFeatures(audio_p, _load_pickled_dict(audio_p))
    a_shape = _check_features(audio, table, ndim=1)
    if visual_p.suffix == ".h5":
        visual = _H5Features(visual_p)
    else:
        size_gb = visual_p.stat().st_size / 1e9
        log.info(
            "note: %s is a pickle and loads whole into RAM: about %.1f GB here (AVE's is about 20 GB); this is "
            "unavoidable for the pickled variant",
            visual_p,
            size_gb,
        )
        visual = _DictFeatures(visual_p, _load_pickled_dict(visual_p))
    try:
        n_tokens, d_visual = _check_features(visual, table, ndim=2)
        t, p = _grid(n_tokens, grid, visual_p)
        sources = {
            str(pth.relative_to(folder)): fingerprint_file(pth, whole=pth.name in DICT_FILES)
            for pth in [folder / f for f in DICT_FILES] + [audio_p, visual_p]
        }
        meta = {
            "dataset": info.name,
            "title": info.title,
            "source": "avcil-released-features",
            "pretrained": True,
            "encoders": {"audio": AUDIO_ENCODER, "visual": VISUAL_ENCODER},
            "visual_grid": {"T": t, "P": p, "token_order": "t-major (token = t * P + p)"},
            "source_files": sources,
            "source_hash_policy": "dict files: sha256 of the whole file; feature files: "
            "size, mtime and sha256 of the first and last 16 MiB",
        }
        shapes = {"audio": a_shape, "visual": (t, p, d_visual)}
        dtypes = {"audio": "float16", "visual": "float16", **_previous_dtypes(final, meta)}
        readers = {"audio": (audio, lambda a: a), "visual": (visual, lambda v: v.reshape(t, p, d_visual))}
        while True:
            writer = StoreWriter(
                final, table, [ViewSpec(k, shapes[k], dtypes[k]) for k in shapes], meta, source=str(cid_p)
            )
            try:
                conversion = {
                    k: _fill_view(
                        writer,
                        k,
                        readers[k][0],
                        table.ids,
                        readers[k][1],
                        batch_rows or _auto_batch(shapes[k]),
                        progress,
                    )
                    for k in shapes
                }
                break
            except _Fp16Overflow as e:
                log.warning(
                    "%s: values up to %.4g exceed the float16 range (max %.0f); keeping float32 for this view "
                    "and restarting the import",
                    e.view,
                    e.max_abs,
                    F16_MAX,
                )
                dtypes[e.view] = "float32"
    finally:
        visual.close()
    writer.add_meta(fp16_conversion=conversion, source_dir=str(folder.resolve()))
    store = writer.finalize()
    for k, c in conversion.items():
        log.info(
            "  %s: %s, shape %s, max abs error %.3g, max rel error %.3g",
            k,
            c["dtype"],
            shapes[k],
            c["max_abs_error"],
            c["max_rel_error"],
        )
    log.info("%s: imported %d clips, %d classes -> %s", info.title, len(table.ids), len(table.class_names), final)
    return store


# ----------------------------------------------------------------------------------------
# Command line


def _parse_grid(text: str) -> tuple[int, int]:
    try:
        t, p = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--grid expects T,P (two integers, e.g. 8,196), got {text!r}") from None
    if t <= 0 or p <= 0:
        raise argparse.ArgumentTypeError(f"--grid values must be positive, got {text!r}")
    return t, p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m datasets.adapters.avcil_features",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser(
        "import",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="convert the released AV-CIL features into a harness feature store (one time)",
        description="Convert SRC/<folder>/ into <data-root>/imported/<dataset>/.\n\nExpected source layout:\n"
        + SOURCE_LAYOUT
        + "\n\nFolders: "
        + ", ".join(f"{i.name} -> {i.folder}" for i in INFOS.values())
        + "\nInterrupted imports resume from <store>.partial/ when re-run with the same arguments.",
    )
    imp.add_argument("--dataset", required=True, choices=sorted(INFOS), help="which AV-CIL dataset to import")
    imp.add_argument(
        "--src",
        type=Path,
        default=None,
        help="directory holding the <folder>/ of this dataset (or "
        "that folder itself); default <data-root>/avcil_features",
    )
    imp.add_argument(
        "--data-root",
        type=Path,
        default=Path("data"),
        help="harness data root; the store goes to <data-root>/imported/<dataset> (default: data)",
    )
    imp.add_argument(
        "--trust-pickle",
        action="store_true",
        help="required: confirm the .npy files come from a trusted "
        "source (they are pickles, which can run code when loaded)",
    )
    imp.add_argument(
        "--grid",
        type=_parse_grid,
        default=None,
        metavar="T,P",
        help="visual token grid: T temporal x P spatial tokens, t-major "
        f"(default T={DEFAULT_T}, P = tokens / T, e.g. 8,196)",
    )
    imp.add_argument(
        "--batch-rows",
        type=positive_int,
        default=None,
        metavar="N",
        help="rows per write batch (default: about 128 MiB of float32 per batch)",
    )
    imp.add_argument("--force", action="store_true", help="import again even if the store already exists")
    imp.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        import_features(
            args.dataset,
            args.src if args.src is not None else default_src(args.data_root),
            args.data_root,
            trust_pickle=args.trust_pickle,
            grid=args.grid,
            batch_rows=args.batch_rows,
            force=args.force,
            progress=not args.no_progress,
        )

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
