"""Extract the AV-CIL features from raw videos into the same store the released-feature import writes.

For users who have the videos (AVE, Kinetics-Sounds, VGGSound100) rather than the features the
AV-CIL authors released:

    python -m datasets.extraction.videos --dataset ave --audio-ckpt pretrained.pth --visual-ckpt videomae-base/
        --trust-pickle [--videos DIR] [--dicts DIR] [--data-root data] [--batch N] [--device auto] [--skip-bad]
        [--audio-rate 11430] [--fbank-norm none|audioset] [--random-encoders] [--mcil-views] [--force]

Inputs (reference layout):

    <data_root>/raw_data/<folder>/videos/<vid>.mp4       (or .mkv .webm .avi .mov .m4v .flv .mpg .mpeg .3gp)
    <dicts>/<folder>/category_encode_dict.npy, all_classId_vid_dict.npy, all_id_category_dict.npy

with <folder> = AVE, kinetics-sounds or VGGSound_100. The vids, labels, class order and splits
come from the AV-CIL dict files, read (and validated) by the same code as the released-feature
import; they are pickles, so `--trust-pickle` is required exactly as for the import.

Per clip (one PyAV pass, `datasets.media.decode_video`):
  audio   mixed to mono, resampled to `--audio-rate` (11,430 Hz, as the reference's moviepy export)
          -> AudioMAE ViT-B/16 (`datasets.encoders.audiomae`): kaldi fbank 1024 x 128, `--fbank-norm`
          (none, as the reference) -> (768,)
  frames  decoded at 10 fps (AVE) or 8 fps (others), as the reference's `ffmpeg -r`; of those N
          frames, 16 are kept: the first, int((i + 1) * N / 15 + 0.5) for i = 0..13, and the last
          (the reference's file numbers 1 + ... minus one) -> VideoMAE-base (`datasets.encoders.videomae`)
          -> last_hidden_state (1568, 768) -> t-major grid (8, 196, 768)

`--mcil-views` (opt-in) also stores the raw views the image + audio + text methods read
(MCIL-AudioCLIP), so they run on these datasets when the videos are present; from the same pass:
  clip_image  (3, 224, 224) float16: the middle frame, i.e. index N // 2 of the N frames decoded at
              the dataset's fps above (the frame on screen at about half the clip's length), as
              RGB uint8 at the video's own resolution -> shorter side to 224 with PIL bicubic (the
              long side truncated, as torchvision's Resize(224)), centre crop 224 (torchvision's
              CenterCrop offset rounding) -> / 255 -> CLIP mean/std: CLIP's own eval transform
              (`datasets.media.clip_image`), the same as the paired image stores of `datasets.adapters.paired_folder`;
  waveform    (220500,) float16: the audio track decoded once at its own rate, channels averaged,
              polyphase-resampled to 44.1 kHz, the centre 5 s (zero-padded on both sides, centred,
              when shorter). The AudioMAE input is resampled from the same native-rate decode, so
              `audio` is identical with and without the flag;
and the meta `audio_bank: "self"`, `pairing: "self"` (each row is its own audio clip),
`sample_rate: 44100`, `clip_samples: 220500`, `image_size: 224`, `image_mean`, `image_std`,
`prompt_template: "a video of {}."` and `class_prompt_names` (class names, `_` as spaces).
Disk cost: 3 * 224 * 224 * 2 + 220500 * 2 bytes = about 0.74 MB per clip (about 3.1 GB for AVE's
4,143 clips), on top of the 2.4 MB per clip of the `visual` view.

Output: `<data_root>/imported/<name>/` (`datasets.adapters.avcil_features.store_path`), views `audio` (768,)
and `visual` (8, 196, 768) in float16, rows and table identical to what the import writes for the
same dict files; only the meta differs (`"source": "extracted"`, encoder configs, checkpoint sha256,
audio rate, fbank normalisation, precision, `"pretrained": false` for random encoders).

How a run proceeds (every step resumable by re-running the same command):
  1. rows are extracted in batches into a staging store `<name>.extract` (a StoreWriter: each batch
     is flushed and recorded, a killed run continues after the last recorded batch, nothing
     half-written is ever published); with `--skip-bad` an unreadable clip gets a zero row and is
     listed (with the reason) in the staging directory before its batch is written;
  2. no excluded clip: the staging store is renamed to `<name>`; otherwise the good rows are copied
     into `<name>` (again a StoreWriter) and the staging store is deleted;
  3. `<name>.extract-report.json` next to the store lists every excluded vid with its reason.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from datasets import media
from datasets.adapters.avcil_features import (
    AVCIL_REPO,
    DICT_FILES,
    INFOS,
    AVCILInfo,
    build_table,
    dataset_info,
    default_src,
    fingerprint_file,
    store_path,
)
from datasets.base import SampleTable
from datasets.cli import run_command
from datasets.encoders.audiomae import (
    WINDOW_SECONDS,
    AudioMAEConfig,
    AudioMAEEncoder,
    fbank,
    load_audiomae_checkpoint,
)
from datasets.encoders.videomae import (
    VideoMAEEncoder,
    VideoMAESpec,
    load_videomae_weights,
    pixel_values,
    resize_crop,
    weight_files,
)
from datasets.errors import ConfigError, DatasetError, WeightsError
from datasets.extraction.common import (
    AUDIO_PIPELINE,
    TINY_AUDIO,
    add_common_options,
    check_audio_options,
    check_values,
    extraction_parser,
    resolve_precision,
    versions,
)
from datasets.io import atomic_write_text, config_hash, pick_device
from datasets.media import CLIP_MEAN, CLIP_STD
from datasets.store import FeatureStore, StoreWriter, ViewSpec
from datasets.weights import checkpoint_record

log = logging.getLogger(__name__)

EXTRACT_VERSION = 1  # bump whenever the extraction changes the features
FPS = {"ave": 10, "ksounds": 8, "vggsound100": 8}  # the reference's ffmpeg -r per dataset
NUM_FRAMES = 16
VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".3gp")
STAGING_SUFFIX = ".extract"
REPORT_SUFFIX = ".extract-report.json"
BAD_FILE = "excluded_clips.json"  # inside the staging store: {vid: reason}
# --mcil-views: the raw views of the image + audio + text methods (see the module docstring)
MCIL_IMAGE_VIEW = "clip_image"
MCIL_IMAGE_SIZE = 224
MCIL_RATE = 44100
MCIL_SECONDS = 5
MCIL_SAMPLES = MCIL_RATE * MCIL_SECONDS  # 220500
MCIL_PROMPT = "a video of {}."
# Reduced VideoMAE for tests and debugging (`--tiny-encoders`, random weights only; TINY_AUDIO: extraction.common).
TINY_VIDEO = VideoMAESpec(size=64, dim=32, depth=2, heads=2, mlp=64)


def frame_indices(n: int, k: int = NUM_FRAMES) -> list[int]:
    """0-based indices of the k frames the reference keeps out of n decoded frames.

    The reference numbers its JPEGs from 1 and keeps file 1, files 1 + int((i + 1) * n / (k - 1) + 0.5)
    for i = 0..k-3, and file n. Here: the same files minus one, clamped to the last frame (the
    reference fails on clips of fewer than 8 frames).
    """
    if n <= 0:
        raise ValueError("no frames")
    step = n / (k - 1)
    return [0] + [min(n - 1, int((i + 1) * step + 0.5)) for i in range(k - 2)] + [n - 1]


# ----------------------------------------------------------------------------- inputs


def resolve_dicts(dicts: Path | None, data_root: Path, info: AVCILInfo) -> Path:
    """The folder holding the three dict files: DIR/<folder>, DIR, or the defaults."""
    if dicts is not None:
        cands = [Path(dicts) / info.folder, Path(dicts)]
    else:
        cands = [default_src(data_root) / info.folder, Path(data_root) / "raw_data" / info.folder]
    for c in cands:
        if (c / DICT_FILES[0]).is_file():
            return c
    raise DatasetError(
        f"no AV-CIL dict files for {info.title}: looked for {DICT_FILES[0]} in {', '.join(str(c) for c in cands)}; "
        f"copy {', '.join(DICT_FILES)} from {AVCIL_REPO} data/{info.folder}/ into one of them (or pass --dicts DIR)"
    )


def resolve_videos(videos: Path | None, data_root: Path, info: AVCILInfo) -> Path:
    """The folder holding <vid>.<ext>: DIR/<folder>/videos, DIR/videos, DIR, or the default."""
    if videos is None:
        d = Path(data_root) / "raw_data" / info.folder / "videos"
    else:
        v = Path(videos)
        d = next((c for c in (v / info.folder / "videos", v / "videos") if c.is_dir()), v)
    if not d.is_dir():
        raise DatasetError(
            f"{d}: no such directory; put the {info.title} videos as "
            f"{Path(data_root) / 'raw_data' / info.folder / 'videos'}"
            f"/<vid>.mp4 (any of {' '.join(VIDEO_EXTS)}), or pass --videos DIR"
        )
    return d


def find_videos(videos_dir: Path, ids: list[str]) -> dict[str, Path | None]:
    """vid -> its file (the first extension in VIDEO_EXTS order when several exist), None if absent."""
    rank = {e: i for i, e in enumerate(VIDEO_EXTS)}
    best: dict[str, tuple[int, str]] = {}
    with os.scandir(videos_dir) as it:
        for entry in it:
            stem, ext = os.path.splitext(entry.name)
            r = rank.get(ext.lower())
            if r is not None and entry.is_file() and (stem not in best or r < best[stem][0]):
                best[stem] = (r, entry.name)
    return {v: (videos_dir / best[v][1] if v in best else None) for v in ids}


@dataclass(frozen=True)
class _Prep:
    """Per-clip preprocessing parameters (sent to the decoding processes)."""

    fps: float
    audio_rate: int
    fbank_norm: str
    size: int  # VideoMAE input size
    frames: int  # fbank frames after pad/crop
    mels: int
    fix: str  # what to tell the user about an unreadable file
    videos_dir: str = ""
    mcil: bool = False  # also the --mcil-views inputs (middle frame, 5 s at 44.1 kHz)


def mcil_image(frame: np.ndarray, size: int = MCIL_IMAGE_SIZE) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> float32 (3, size, size): CLIP's eval transform (datasets.media.clip_image)."""
    from PIL import Image

    return media.clip_image(Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)), size)


def mcil_waveform(wave: np.ndarray, rate: int) -> np.ndarray:
    """Mono float32 at `rate` -> (MCIL_SAMPLES,) at 44.1 kHz: the centre 5 s, or centred zero padding."""
    wave = media.fit_center(media.mix_resample(wave, int(rate), MCIL_RATE), MCIL_SAMPLES)
    return np.ascontiguousarray(wave, dtype=np.float32)


def _decode(path: Path, prep: _Prep) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(frames, waveform at prep.audio_rate, 5 s waveform at 44.1 kHz or None without prep.mcil)."""
    if not prep.mcil:
        frames, wave = media.decode_video(
            path, fps=prep.fps, sample_rate=prep.audio_rate, audio="require", fix=prep.fix
        )
        return frames, wave, None
    native = media.probe(path, fix=prep.fix).sample_rate
    if native <= 0:  # the header gives no audio rate: decode a second time (one frame) at 44.1 kHz for the waveform
        frames, wave = media.decode_video(
            path, fps=prep.fps, sample_rate=prep.audio_rate, audio="require", fix=prep.fix
        )
        _, wave44 = media.decode_video(path, num_frames=1, sample_rate=MCIL_RATE, audio="require", fix=prep.fix)
        return frames, wave, mcil_waveform(wave44, MCIL_RATE)
    # One decode at the native rate, resampled twice: the same samples as decoding at audio_rate directly
    # (decode_video averages the channels, then resamples), so `audio` does not depend on the flag.
    frames, mono = media.decode_video(path, fps=prep.fps, sample_rate=native, audio="require", fix=prep.fix)
    return frames, media.mix_resample(mono, native, prep.audio_rate), mcil_waveform(mono, native)


def _prepare_clip(job: tuple) -> tuple:
    """(vid, path | None, _Prep) -> (fbank float32 (frames, mels), frames uint8 (16, size, size, 3), None),
    or (None, None, reason) for a missing or unreadable clip. With `prep.mcil` a good clip gives two
    more items: clip_image float32 (3, 224, 224) and waveform float32 (MCIL_SAMPLES,).

    Runs in the decoding processes: PyAV decode, the 16-frame selection, resize + centre crop and
    the fbank, all on the CPU, so the features do not depend on the encoding device.
    """
    vid, path, prep = job
    if path is None:
        return (
            None,
            None,
            f"{Path(prep.videos_dir) / (vid + '.mp4')}: missing (no {vid}.<ext> in the videos folder); {prep.fix}",
        )
    try:
        frames, wave, wave44 = _decode(Path(path), prep)
    except DatasetError as e:
        return None, None, str(e)
    if len(wave) < int(WINDOW_SECONDS * prep.audio_rate):
        return None, None, f"{path}: the audio track is shorter than one 25 ms fbank window; {prep.fix}"
    with torch.inference_mode():
        fb = fbank(wave, prep.audio_rate, prep.fbank_norm, prep.frames, prep.mels).numpy()
        picked = resize_crop(
            torch.from_numpy(np.ascontiguousarray(frames[frame_indices(len(frames))])), prep.size
        ).numpy()
    if prep.mcil:
        return fb, np.ascontiguousarray(picked), None, mcil_image(frames[len(frames) // 2]), wave44
    return fb, np.ascontiguousarray(picked), None


def _worker_init() -> None:
    torch.set_num_threads(1)  # one intra-op thread per decoding process (as DataLoader workers do)


def _prepared(jobs: list, workers: int, window: int):
    """Yield _prepare_clip(job) in order, over `workers` processes (fork) when there is enough work.

    At most `window` clips are in flight: a new job is submitted as each result is taken, so the
    decoders keep working while the encoders run, and prepared clips never pile up.
    """
    if workers <= 1 or len(jobs) < 2:
        for job in jobs:
            yield _prepare_clip(job)
        return
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init)
    try:
        pending = deque(pool.submit(_prepare_clip, job) for job in jobs[:window])
        for job in jobs[window:] + [None] * len(pending):
            done = pending.popleft()
            if job is not None:
                pending.append(pool.submit(_prepare_clip, job))
            yield done.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------- encoders


class Encoders:
    """AudioMAE + VideoMAE on one device; one call encodes a batch of decoded clips."""

    def __init__(
        self,
        audio_cfg: AudioMAEConfig,
        video_spec: VideoMAESpec,
        device: torch.device,
        precision: str,
        audio_rate: int,
        fbank_norm: str,
        audio_ckpt: Path | None = None,
        visual_ckpt: Path | None = None,
        seed: int = 0,
    ):
        self.audio_cfg, self.video_spec, self.device, self.precision = audio_cfg, video_spec, device, precision
        self.audio_rate, self.fbank_norm = audio_rate, fbank_norm
        self.audio = AudioMAEEncoder(audio_cfg, seed=seed)
        self.visual = VideoMAEEncoder(video_spec, seed=seed + 1)
        if audio_ckpt is not None:
            load_audiomae_checkpoint(self.audio, audio_ckpt)
        if visual_ckpt is not None:
            load_videomae_weights(self.visual, visual_ckpt)
        self.audio.to(device).eval()
        self.visual.to(device).eval()
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    @torch.inference_mode()
    def __call__(self, fbanks: list[np.ndarray], frames: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """fbanks (frames, mels) float32, frames uint8 (16, size, size, 3) -> (audio (B, D), visual (B, T, P, D))
        float32."""
        fb = torch.from_numpy(np.stack(fbanks)).to(self.device)
        px = pixel_values(torch.from_numpy(np.stack(frames)).to(self.device))
        with torch.autocast(
            device_type=self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None
        ):
            a, v = self.audio(fb), self.visual(px)
        return a.float().cpu().numpy(), v.float().cpu().numpy()


# ----------------------------------------------------------------------------- extraction


@dataclass
class _Run:
    """What one extraction needs besides the options (kept together for the two phases)."""

    info: AVCILInfo
    table: SampleTable
    source: str  # the split dict file, named in table errors
    views: list[ViewSpec]
    meta: dict
    key: str
    final: Path
    staging: Path
    report: Path


def _extract_rows(
    run: _Run,
    paths: dict,
    videos_dir: Path,
    encoders: Encoders,
    fps: float,
    batch: int,
    workers: int,
    skip_bad: bool,
    progress: bool,
    run_meta: dict,
) -> FeatureStore:
    """Phase 1: every listed vid into the staging store (zero rows for excluded clips); resumable."""
    table, n = run.table, len(run.table.ids)
    writer = StoreWriter(run.staging, table, run.views, run.meta, run.source)
    bad_path = writer.partial / BAD_FILE
    start = min(writer.filled.values())
    start -= start % batch  # batches stay aligned, so a resumed run computes the same batches
    index = {v: i for i, v in enumerate(table.ids)}
    old_bad = json.loads(bad_path.read_text()) if bad_path.is_file() else {}
    bad = {v: r for v, r in old_bad.items() if index.get(v, n) < start}  # rows from `start` on are redone
    if bad != old_bad:
        atomic_write_text(bad_path, json.dumps(bad, indent=1, sort_keys=True))
    fix = (
        "excluded (--skip-bad); replace the file and extract again with --force to include it"
        if skip_bad
        else "replace it with a complete copy (download it again), or "
        "pass --skip-bad to exclude it and list it in the report"
    )
    prep = _Prep(
        fps,
        encoders.audio_rate,
        encoders.fbank_norm,
        encoders.video_spec.size,
        encoders.audio_cfg.frames,
        encoders.audio_cfg.mels,
        fix,
        str(videos_dir),
        mcil=any(v.name == MCIL_IMAGE_VIEW for v in run.views),
    )
    jobs = [(v, None if paths[v] is None else str(paths[v]), prep) for v in table.ids[start:]]
    shapes = {v.name: v.shape for v in run.views}
    t0 = time.time()
    bar = tqdm(total=n, initial=start, desc=f"{run.info.title}: extracting", unit="clip", disable=not progress)
    stream = _prepared(jobs, workers, window=max(2 * batch, 4 * workers))
    try:
        for row in range(start, n, batch):
            size = min(batch, n - row)
            results = [next(stream) for _ in range(size)]
            good = [j for j, r in enumerate(results) if r[2] is None]
            new_bad = {table.ids[row + j]: r[2] for j, r in enumerate(results) if r[2] is not None}
            if new_bad and not skip_bad:
                raise DatasetError(next(iter(new_bad.values())))
            if new_bad:  # recorded before the batch's rows, so a crash in between re-detects the same clips
                bad.update(new_bad)
                atomic_write_text(bad_path, json.dumps(bad, indent=1, sort_keys=True))
                for vid, reason in new_bad.items():
                    tqdm.write(f"  excluded {vid}: {reason}")
            out = {k: np.zeros((size, *s), dtype=np.float32) for k, s in shapes.items()}
            if good:
                a, v = encoders([results[j][0] for j in good], [results[j][1] for j in good])
                for name, values in (("audio", a), ("visual", v)):
                    check_values(name, values, [f"vid {table.ids[row + j]!r}" for j in good], encoders.precision)
                    out[name][good] = values
                if prep.mcil:
                    out[MCIL_IMAGE_VIEW][good] = np.stack([results[j][3] for j in good])
                    out["waveform"][good] = np.stack([results[j][4] for j in good])
            for name, values in out.items():
                skip = writer.filled[name] - row  # rows of this batch already written before an interruption
                if skip < size:
                    writer.write(name, row + skip, values[skip:])
            bar.update(size)
    finally:
        stream.close()
        bar.close()
    writer.add_meta(
        extract_key=run.key, **run_meta, excluded_clips=sorted(bad), extract_seconds_last_run=round(time.time() - t0, 1)
    )
    return writer.finalize()


def _publish(run: _Run, staging: FeatureStore, bad: dict, videos_dir: Path, batch_rows: int = 256) -> FeatureStore:
    """Phase 2: staging -> final store, without the excluded rows; writes the report."""
    table = run.table
    excluded = {
        v: {"split": str(s), "class": table.class_names[c], "reason": bad[v]}
        for v, c, s in zip(table.ids, table.labels.tolist(), table.splits.tolist())
        if v in bad
    }
    report = {
        "dataset": run.info.name,
        "store": str(run.final),
        "videos_dir": str(videos_dir),
        "listed": len(table.ids),
        "extracted": len(table.ids) - len(bad),
        "excluded_count": len(bad),
        "excluded": excluded,
    }
    atomic_write_text(run.report, json.dumps(report, indent=1))
    if not bad:
        if run.final.exists():
            shutil.rmtree(run.final)
        os.replace(run.staging, run.final)
        (run.final / BAD_FILE).unlink(missing_ok=True)
        return FeatureStore(run.final)
    keep = np.array([i for i, v in enumerate(table.ids) if v not in bad], dtype=np.int64)
    kept = SampleTable([table.ids[i] for i in keep], table.labels[keep], table.splits[keep], list(table.class_names))
    try:
        kept.validate(f"{run.report} (after excluding {len(bad)} unreadable clip(s))")
    except DatasetError as e:
        raise DatasetError(
            f"{e}. Replace the excluded videos listed there, delete {run.staging} (it holds the rows "
            "extracted so far, with those clips excluded) and run again"
        ) from e
    meta = {**run.meta, "excluded_clips": sorted(bad)}
    writer = StoreWriter(run.final, kept, run.views, meta, str(run.report))
    for view in writer.views:
        src = staging.array(view)
        for lo in range(writer.filled[view], len(keep), batch_rows):
            writer.write(view, lo, np.asarray(src[keep[lo : lo + batch_rows]]))
    writer.add_meta(**{k: v for k, v in staging.meta.items() if k not in meta})
    store = writer.finalize()
    shutil.rmtree(run.staging)
    return store


def extract_features(
    dataset: str,
    data_root: Path = Path("data"),
    videos: Path | None = None,
    dicts: Path | None = None,
    audio_ckpt: Path | None = None,
    visual_ckpt: Path | None = None,
    *,
    trust_pickle: bool = False,
    random_encoders: bool = False,
    batch: int = 16,
    device: str = "auto",
    precision: str = "auto",
    skip_bad: bool = False,
    audio_rate: int = 11430,
    fbank_norm: str = "none",
    force: bool = False,
    workers: int | None = None,
    seed: int = 0,
    progress: bool = True,
    mcil_views: bool = False,
    audio_config: AudioMAEConfig | None = None,
    video_config: VideoMAESpec | None = None,
) -> FeatureStore:
    """Extract `dataset` from raw videos into `store_path(data_root, dataset)`. See the module docstring.

    `audio_config` / `video_config` (tests and debugging only) shrink the encoders; they need
    `random_encoders` since no checkpoint fits them.
    """
    info = dataset_info(dataset)
    data_root = Path(data_root)
    check_audio_options(batch, audio_rate, fbank_norm)
    if not trust_pickle:
        raise ConfigError(
            "refusing to extract: the AV-CIL dict files (category_encode_dict.npy, all_classId_vid_dict.npy, "
            "all_id_category_dict.npy) are Python pickles, and loading a pickle can execute arbitrary code. Only use "
            f"the files from a trusted source (the AV-CIL authors' repository {AVCIL_REPO}); then pass --trust-pickle. "
            "The store written is pickle-free."
        )
    if random_encoders and (audio_ckpt is not None or visual_ckpt is not None):
        raise ConfigError(
            "--random-encoders and --audio-ckpt/--visual-ckpt exclude each other: give the checkpoints, or neither"
        )
    if not random_encoders and (audio_ckpt is None or visual_ckpt is None):
        raise ConfigError(
            "refusing to extract without pretrained encoders: pass --audio-ckpt (AudioMAE ViT-B AS-2M pretrained.pth, "
            "from the AudioMAE repository) and --visual-ckpt (a local snapshot directory of MCG-NJU/videomae-base, or "
            "its state-dict file). Nothing is downloaded. --random-encoders extracts with random weights instead (for "
            "debugging only: the store is marked pretrained=false and the leaderboard flags every result)"
        )
    if (audio_config is not None or video_config is not None) and not random_encoders:
        raise ConfigError("reduced encoder configs (--tiny-encoders) are for tests and need --random-encoders")
    if audio_ckpt is not None and not Path(audio_ckpt).is_file():
        raise WeightsError(
            f"{audio_ckpt}: AudioMAE checkpoint not found; pass the path of the downloaded pretrained.pth"
        )
    if visual_ckpt is not None and not Path(visual_ckpt).exists():
        raise WeightsError(
            f"{visual_ckpt}: VideoMAE weights not found; pass a local snapshot directory of "
            "MCG-NJU/videomae-base or a state-dict file"
        )
    acfg, vspec = audio_config or AudioMAEConfig(), video_config or VideoMAESpec()
    workers = min(8, os.cpu_count() or 1) if workers is None else max(0, int(workers))
    dev = pick_device(device)
    prec = resolve_precision(dev, precision)

    final = store_path(data_root, info.name)
    folder = resolve_dicts(dicts, data_root, info)
    table, cid_p = build_table(folder, info)
    videos_dir = resolve_videos(videos, data_root, info)
    paths = find_videos(videos_dir, table.ids)
    missing = [v for v in table.ids if paths[v] is None]

    fps = FPS[info.name]
    t, p = vspec.grid
    views = [ViewSpec("audio", (acfg.dim,)), ViewSpec("visual", (t, p, vspec.dim))]
    meta = {
        "dataset": info.name,
        "title": info.title,
        "source": "extracted",
        "pretrained": not random_encoders,
        "encoders": {
            "audio": "AudioMAE ViT-B/16 AS-2M pretrained.pth (extracted here)"
            if not random_encoders
            else f"AudioMAE ViT architecture, RANDOM weights (seed {seed})",
            "visual": "VideoMAE-base K400 MCG-NJU/videomae-base (extracted here)"
            if not random_encoders
            else f"VideoMAE architecture, RANDOM weights (seed {seed + 1})",
        },
        "encoder_configs": {"audio": acfg.to_json(), "visual": vspec.to_json()},
        "checkpoints": {
            "audio": None if audio_ckpt is None else checkpoint_record(audio_ckpt),
            "visual": None if visual_ckpt is None else checkpoint_record(visual_ckpt, weight_files(visual_ckpt)),
        },
        "audio_rate": int(audio_rate),
        "fbank_norm": fbank_norm,
        "audio_pipeline": AUDIO_PIPELINE,
        "visual_pipeline": {
            "decode": f"PyAV at {fps} fps (frame on screen at (k + 0.5) / fps)",
            "frames": f"{NUM_FRAMES}: first, int((i + 1) * N / 15 + 0.5) for i = 0..13, last "
            "(0-based, of the N decoded frames)",
            "preprocess": f"shorter side to {vspec.size} (bilinear, antialias, rounded to uint8), "
            f"centre crop {vspec.size}, ImageNet mean/std",
            "output": "last_hidden_state (final LayerNorm, use_mean_pooling=False)",
        },
        "visual_grid": {"T": t, "P": p, "token_order": "t-major (token = t * P + p)"},
        "precision": prec,
        "source_files": {f: fingerprint_file(folder / f, whole=True) for f in DICT_FILES},
        "extract_version": EXTRACT_VERSION,
    }
    if mcil_views:
        views += [
            ViewSpec(MCIL_IMAGE_VIEW, (3, MCIL_IMAGE_SIZE, MCIL_IMAGE_SIZE)),
            ViewSpec("waveform", (MCIL_SAMPLES,)),
        ]
        meta.update(
            {
                "audio_bank": "self",
                "pairing": "self",
                "sample_rate": MCIL_RATE,
                "clip_samples": MCIL_SAMPLES,
                "image_size": MCIL_IMAGE_SIZE,
                "image_mean": list(CLIP_MEAN),
                "image_std": list(CLIP_STD),
                "prompt_template": MCIL_PROMPT,
                "class_prompt_names": [c.replace("_", " ") for c in table.class_names],
                "mcil_pipeline": {
                    MCIL_IMAGE_VIEW: f"middle frame (index N // 2 of the N frames decoded at {fps} fps), "
                    f"shorter side to {MCIL_IMAGE_SIZE} (PIL bicubic, long side truncated), "
                    f"centre crop {MCIL_IMAGE_SIZE} (torchvision rounding), / 255, CLIP mean/std",
                    "waveform": f"audio decoded at its native rate, channels averaged, resample_poly to {MCIL_RATE} "
                    f"Hz, centre {MCIL_SECONDS} s (centred zero padding when shorter)",
                },
            }
        )
    if random_encoders:
        meta["random_seed"] = seed
    key = config_hash({"table": table.digest(), "views": [v.to_json() for v in views], "meta": meta})
    run = _Run(
        info,
        table,
        str(cid_p),
        views,
        meta,
        key,
        final,
        final.with_name(final.name + STAGING_SUFFIX),
        final.with_name(final.name + REPORT_SUFFIX),
    )

    if (final / "manifest.json").is_file():
        existing = FeatureStore(final)
        if existing.meta.get("extract_key") == key and not force:
            if run.staging.exists():  # a finished extraction crashed before removing its staging store
                shutil.rmtree(run.staging)
            log.info(
                "%s: already extracted with these settings at %s; nothing to do (--force extracts again)",
                info.title,
                final,
            )
            return existing
        if not force:
            raise DatasetError(
                f"{final}: a feature store already exists (source: {existing.meta.get('source', '?')}); "
                "pass --force to replace it with this extraction"
            )
    if missing and not skip_bad:
        raise DatasetError(
            f"{videos_dir / (missing[0] + '.mp4')}: missing (no {missing[0]}.<ext> for any of {' '.join(VIDEO_EXTS)})"
            + (f", and {len(missing) - 1} more of the {len(table.ids)} listed vids" if len(missing) > 1 else "")
            + "; add the videos, or pass --skip-bad to exclude missing/unreadable clips and list them in the report"
        )
    run_meta = {
        "videos_dir": str(videos_dir.resolve()),
        "dicts_dir": str(folder.resolve()),
        "device": str(dev),
        "checkpoint_paths": {
            "audio": None if audio_ckpt is None else str(Path(audio_ckpt).resolve()),
            "visual": None if visual_ckpt is None else str(Path(visual_ckpt).resolve()),
        },
        "versions": versions(),
    }

    staged = None
    if (run.staging / "manifest.json").is_file():
        staged = FeatureStore(run.staging)
        if staged.meta.get("extract_key") != key:  # left by an extraction with other settings
            shutil.rmtree(run.staging)
            staged = None
    if staged is None:
        log.info(
            "%s: %d clips from %s (%d missing), %s fps, audio %d Hz, fbank norm %s, %s %s, batch %d, "
            "%d decode worker(s)",
            info.title,
            len(table.ids),
            videos_dir,
            len(missing),
            fps,
            audio_rate,
            fbank_norm,
            dev,
            prec,
            batch,
            workers,
        )
        encoders = Encoders(acfg, vspec, dev, prec, audio_rate, fbank_norm, audio_ckpt, visual_ckpt, seed)
        staged = _extract_rows(run, paths, videos_dir, encoders, fps, batch, workers, skip_bad, progress, run_meta)
    bad_file = run.staging / BAD_FILE
    bad = json.loads(bad_file.read_text()) if bad_file.is_file() else {}
    if bad and not skip_bad:
        raise DatasetError(
            f"{run.staging}: {len(bad)} clip(s) were excluded by an earlier --skip-bad run of this extraction "
            f"(e.g. {next(iter(bad.values()))}); re-run with --skip-bad to publish without them, or delete "
            f"{run.staging} to extract everything again"
        )
    store = _publish(run, staged, bad, videos_dir)
    log.info(
        "%s: extracted %d clips (%d excluded, see %s), %d classes -> %s",
        info.title,
        len(store),
        len(bad),
        run.report,
        len(table.class_names),
        final,
    )
    return store


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = extraction_parser("python -m datasets.extraction.videos", __doc__)
    p.add_argument("--dataset", required=True, choices=sorted(INFOS), help="which AV-CIL dataset to extract")
    p.add_argument(
        "--videos",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder with <vid>.mp4 (or DIR/<folder>/videos); default <data-root>/raw_data/<folder>/videos",
    )
    p.add_argument(
        "--dicts",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder with the three AV-CIL dict files (or DIR/<folder>); default <data-root>/avcil_features/<folder> "
        "or <data-root>/raw_data/<folder>",
    )
    p.add_argument(
        "--visual-ckpt",
        type=Path,
        default=None,
        metavar="PATH",
        help="local snapshot directory of MCG-NJU/videomae-base "
        "(model.safetensors or pytorch_model.bin), or a state-dict file",
    )
    add_common_options(
        p,
        store_help="the store goes to <data-root>/imported/<dataset> (default: data)",
        trust_help="required: confirm the dict .npy files come from a trusted "
        "source (they are pickles, which can run code when loaded)",
        tiny_help="test/debug only, with --random-encoders: 2-layer 32-wide encoders, 64 px frames",
        audio_rate=(
            11430,
            "audio sample rate before the fbank (default 11430, as the AV-CIL extraction; AudioMAE was pretrained at "
            "16000)",
        ),
        batch=(16, "clips per encoder batch (default 16)"),
        force_help="replace an existing store at <data-root>/imported/<dataset>",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="video decoding processes (default min(8, CPUs); 0 = in-process)",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="exclude missing/corrupt/truncated videos and list them with the reason in <store>.extract-report.json",
    )
    p.add_argument(
        "--mcil-views",
        action="store_true",
        help="also store clip_image (middle frame, CLIP eval transform) and waveform (centre 5 s at 44.1 kHz) for "
        "MCIL-AudioCLIP; about 0.74 MB more per clip",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        extract_features(
            args.dataset,
            args.data_root,
            args.videos,
            args.dicts,
            args.audio_ckpt,
            args.visual_ckpt,
            trust_pickle=args.trust_pickle,
            random_encoders=args.random_encoders,
            batch=args.batch,
            device=args.device,
            precision=args.precision,
            skip_bad=args.skip_bad,
            audio_rate=args.audio_rate,
            fbank_norm=args.fbank_norm,
            force=args.force,
            workers=args.workers,
            seed=args.seed,
            progress=not args.no_progress,
            audio_config=TINY_AUDIO if args.tiny_encoders else None,
            video_config=TINY_VIDEO if args.tiny_encoders else None,
            mcil_views=args.mcil_views,
        )

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
