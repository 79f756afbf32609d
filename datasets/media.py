"""Raw-media I/O shared by the datasets: write a clip to MP4, decode it back; images and audio clips
as CLIP-style methods read them (CLIP's eval transform, fixed-length mono clips).

Video containers go through PyAV (libavformat/libavcodec in-process) and audio files
through soundfile. We never shell out to an ffmpeg binary, use moviepy, or call
torchaudio.load (it needs torchcodec): one decoding path keeps features reproducible
across machines.

Decoding returns what the encoders consume, in a fixed convention:
  frames   uint8 (N, H, W, 3) RGB, sampled uniformly in time (N given, or fps given);
  waveform float32 (S,) mono (channels averaged) at the requested rate, padded with
           zeros / cropped to the requested duration.

Still images and clips (the paired image + audio stores, the `--mcil-views` of the video extraction,
SynthAV's raw views):
  image    float32 (3, S, S): RGB, shorter side to S (PIL bicubic, the long side truncated as
           torchvision's Resize), centre crop S (torchvision's CenterCrop rounding), / 255,
           CLIP_MEAN / CLIP_STD: exactly CLIP's eval transform (`clip_image`, `load_image`);
  clip     float32 (L,) mono in [-1, 1]: channels averaged, polyphase-resampled, centre-cropped
           or centred zero padding to L samples (`fit_center`, `load_clip`).

Every unreadable input (missing, truncated, corrupt, no stream) raises
`datasets.base.DatasetError` naming the file and the fix; callers can pass their own
`fix` text (e.g. "delete it, it is regenerated on the next run").
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from datasets.errors import DatasetError

#: CLIP's image normalisation (OpenAI CLIP, open_clip), used by every CLIP-normalised view
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_FIX = "replace it with a complete copy (re-download or re-extract it)"
# What libav* raises (through PyAV) on damaged input; all become a DatasetError.
_AV_ERRORS = (av.FFmpegError, OSError, EOFError, ValueError, IndexError)


def _fail(path: Path, what: str, fix: str | None) -> DatasetError:
    return DatasetError(f"{path}: {what}; {fix or DEFAULT_FIX}")


# ----------------------------------------------------------------------------- writing


def write_clip(
    path: Path,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    *,
    video_codec: str = "libx264",
    crf: int = 18,
    lossless: bool = False,
    audio_bitrate: int = 96_000,
) -> Path:
    """Write uint8 RGB `frames` (N, H, W, 3) at `fps` and float `audio` in [-1, 1] to an MP4.

    Video is H.264 (libx264; `video_codec="mpeg4"` for MPEG-4 Part 2), audio is AAC.
    `lossless=True` (H.264 only) codes the video with qp 0: decoding then returns exactly
    the YUV that went in, whatever choices the encoder made. Use it where the decoded
    frames must be reproducible bit for bit: lossy libx264 output was seen to differ
    between runs on identical input here (a few clips in a hundred).
    `audio` is (S,) mono or (S, C) with C <= 2; None writes a video-only file. The file
    appears atomically: it is written under a temporary name in the same folder and
    renamed, so an existing `path` is always a complete file (safe to resume on).
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")
    n, h, w, _ = frames.shape
    if n == 0:
        raise ValueError("frames: need at least one frame")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        container = av.open(str(tmp), mode="w", format="mp4")
        try:
            rate = Fraction(fps).limit_denominator(100_000)
            if video_codec == "libx264":
                quality = {"qp": "0"} if lossless else {"crf": str(crf)}
                vs = container.add_stream(
                    "libx264", rate=rate, options={**quality, "preset": "veryfast", "threads": "1"}
                )
                vs.pix_fmt = "yuv420p" if h % 2 == 0 and w % 2 == 0 else "yuv444p"  # 4:2:0 needs even sizes
            elif video_codec == "mpeg4" and not lossless:
                vs = container.add_stream("mpeg4", rate=rate)
                vs.pix_fmt = "yuv420p"
                vs.bit_rate = max(200_000, int(h * w * float(rate) * 0.6))
            else:
                raise ValueError(
                    f"video_codec must be 'libx264' or 'mpeg4' (lossless: 'libx264' only), got {video_codec!r}"
                )
            vs.width, vs.height = w, h
            a_stream = None
            if audio is not None:
                wave = np.asarray(audio, dtype=np.float32)
                wave = wave[:, None] if wave.ndim == 1 else wave
                if wave.ndim != 2 or wave.shape[1] not in (1, 2):
                    raise ValueError(f"audio must be (S,) or (S, C) with C in (1, 2), got {wave.shape}")
                layout = "mono" if wave.shape[1] == 1 else "stereo"
                a_stream = container.add_stream("aac", rate=int(sample_rate), layout=layout)
                a_stream.bit_rate = audio_bitrate
            for i, img in enumerate(frames):
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24").reformat(format=vs.pix_fmt)
                vf.pts = i
                container.mux(vs.encode(vf))
            container.mux(vs.encode(None))
            if a_stream is not None:
                af = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(np.clip(wave, -1, 1).T), format="fltp", layout=layout
                )
                af.sample_rate = int(sample_rate)
                af.pts = 0
                container.mux(a_stream.encode(af))
                container.mux(a_stream.encode(None))
        finally:
            container.close()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class MediaInfo:
    """What a container holds, from its headers (no decoding)."""

    video_codec: str | None
    width: int
    height: int
    fps: float
    video_frames: int
    duration: float  # seconds; 0.0 when the container does not say
    audio_codec: str | None
    sample_rate: int
    channels: int


def _open(path: Path, fix: str | None):
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "file not found", fix)
    try:
        return av.open(str(path), mode="r")
    except _AV_ERRORS as e:
        raise _fail(path, f"not a readable media file, corrupt or truncated ({type(e).__name__}: {e})", fix) from e


def _duration(container, stream) -> float:
    if stream is not None and stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1e6
    return 0.0


def probe(path: Path, fix: str | None = None) -> MediaInfo:
    """Stream codecs, sizes and rates of a media file (header only)."""
    container = _open(path, fix)
    try:
        v = container.streams.video[0] if container.streams.video else None
        a = container.streams.audio[0] if container.streams.audio else None
        return MediaInfo(
            video_codec=v.codec_context.name if v else None,
            width=v.codec_context.width if v else 0,
            height=v.codec_context.height if v else 0,
            fps=float(v.average_rate) if v and v.average_rate else 0.0,
            video_frames=int(v.frames) if v else 0,
            duration=_duration(container, v or a),
            audio_codec=a.codec_context.name if a else None,
            sample_rate=int(a.codec_context.sample_rate) if a else 0,
            channels=int(a.codec_context.channels) if a else 0,
        )
    finally:
        container.close()


def sample_times(duration: float, num_frames: int | None = None, fps: float | None = None) -> np.ndarray:
    """Uniform sampling instants: the centres of `num_frames` equal bins, or every 1/fps s.

    Exactly one of `num_frames`, `fps`. A frame is taken as the one on screen at the
    instant (the last frame starting at or before it), so a clip written at 8 fps and
    read back with num_frames=8 returns exactly its own frames.
    """
    if (num_frames is None) == (fps is None):
        raise ValueError("give exactly one of num_frames, fps")
    if num_frames is not None:
        if num_frames <= 0:
            raise ValueError("num_frames must be positive")
        return (np.arange(num_frames) + 0.5) * (duration / num_frames)
    if fps <= 0:
        raise ValueError("fps must be positive")
    count = max(1, int(math.floor(duration * fps + 1e-6)))
    return (np.arange(count) + 0.5) / fps


def mix_resample(wave: np.ndarray, rate: int, target_rate: int, duration: float | None = None) -> np.ndarray:
    """(S,) or (S, C) float audio at `rate` -> float32 mono at `target_rate`, padded/cropped.

    Channels are averaged (not summed) so levels stay comparable between mono and stereo
    sources; resampling is polyphase (scipy), zero-phase, so onsets stay in place.
    """
    wave = np.asarray(wave, dtype=np.float32)
    mono = wave.mean(axis=1) if wave.ndim == 2 else wave
    if rate != target_rate and len(mono):
        from scipy.signal import resample_poly

        g = math.gcd(int(rate), int(target_rate))
        mono = resample_poly(mono, int(target_rate) // g, int(rate) // g).astype(np.float32)
    if duration is not None:
        n = int(round(duration * target_rate))
        mono = mono[:n] if len(mono) >= n else np.pad(mono, (0, n - len(mono)))
    return np.ascontiguousarray(mono, dtype=np.float32)


def decode_video(
    path: Path,
    *,
    num_frames: int | None = None,
    fps: float | None = None,
    size: tuple[int, int] | None = None,
    sample_rate: int = 16000,
    duration: float | None = None,
    audio: str = "require",
    fix: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode a video file into (frames uint8 (N, H, W, 3), mono float32 waveform).

    Frames are sampled uniformly (`num_frames` or `fps`, see `sample_times`) over the
    video stream's duration, optionally resized to `size` = (H, W). The audio track is
    mixed to mono, resampled to `sample_rate` and padded/cropped to `duration` seconds
    (None: its own length). `audio`: "require" (no audio stream is an error), "silence"
    (no audio stream gives zeros), "skip" (do not decode audio; returns None).
    One demuxing pass serves both streams; only the selected frames are converted to RGB.
    """
    if audio not in ("require", "silence", "skip"):
        raise ValueError("audio must be 'require', 'silence' or 'skip'")
    sample_times(1.0, num_frames, fps)  # argument errors are the caller's, not the file's
    path = Path(path)
    container = _open(path, fix)
    try:
        if not container.streams.video:
            raise _fail(path, "has no video stream", fix)
        vstream = container.streams.video[0]
        astream = container.streams.audio[0] if container.streams.audio and audio != "skip" else None
        if astream is None and audio == "require":
            raise _fail(path, "has no audio stream", fix)
        declared = _duration(container, vstream)
        wanted = {"video": 0} if astream is None else {"video": 0, "audio": 0}
        rgb = (
            (lambda f: f.to_ndarray(format="rgb24"))
            if size is None
            else (lambda f: f.to_ndarray(format="rgb24", width=size[1], height=size[0]))
        )

        targets = sample_times(declared, num_frames, fps) if declared > 0 else None
        picked: list[np.ndarray] = []
        kept: list[tuple[float, np.ndarray]] = []  # only when the duration is unknown
        prev, prev_arr, t0, last_t = None, None, None, 0.0
        chunks, a_rate, to_float = [], None, None
        for frame in container.decode(**wanted):
            if isinstance(frame, av.AudioFrame):
                # Any sample format/layout -> float planar (C, S) at the native rate.
                a_rate = frame.sample_rate
                to_float = to_float or av.AudioResampler(format="fltp")
                chunks.extend(f.to_ndarray().T for f in to_float.resample(frame))
                continue
            t = float(frame.time) if frame.time is not None else len(picked) + len(kept)
            t0 = t if t0 is None else t0
            t, last_t = t - t0, t - t0
            if targets is None:
                kept.append((t, rgb(frame)))
                continue
            # Assign every target instant that lies before this frame to the previous frame.
            while len(picked) < len(targets) and t > targets[len(picked)] + 1e-6:
                if prev_arr is None:
                    prev_arr = rgb(prev if prev is not None else frame)
                picked.append(prev_arr)
            if len(picked) < len(targets):
                prev, prev_arr = frame, None
        if t0 is None:
            raise _fail(path, "no video frame could be decoded (truncated or corrupt)", fix)
        if targets is None:
            span = kept[-1][0] + (kept[1][0] - kept[0][0] if len(kept) > 1 else 0.0)
            times = np.array([k[0] for k in kept])
            targets = sample_times(span if span > 0 else 1.0, num_frames, fps)
            picked = [kept[max(0, int(np.searchsorted(times, x + 1e-6, side="right")) - 1)][1] for x in targets]
        else:
            frame_gap = 1.0 / float(vstream.average_rate) if vstream.average_rate else 0.0
            if last_t + frame_gap < 0.5 * declared:
                raise _fail(
                    path, f"truncated: the header says {declared:.2f} s of video but frames stop at {last_t:.2f} s", fix
                )
            while len(picked) < len(targets):
                if prev_arr is None:
                    prev_arr = rgb(prev)
                picked.append(prev_arr)
        frames = np.stack(picked)
        wave = None
        if astream is not None:
            if to_float is not None:
                chunks.extend(f.to_ndarray().T for f in to_float.resample(None))
            if not chunks:
                raise _fail(path, "the audio stream decodes to no samples (truncated or corrupt)", fix)
            samples = np.concatenate(chunks, axis=0)
            # AAC decodes whole 1024-sample frames; the stream header holds the true length.
            a_len = _duration(container, astream)
            if a_len > 0:
                samples = samples[: int(round(a_len * a_rate))]
            wave = mix_resample(samples, a_rate, sample_rate, duration)
        elif audio == "silence":
            n = int(round((duration if duration is not None else max(declared, last_t)) * sample_rate))
            wave = np.zeros(n, dtype=np.float32)
        return frames, wave
    except _AV_ERRORS as e:
        raise _fail(path, f"decoding failed, the file is corrupt or truncated ({type(e).__name__}: {e})", fix) from e
    finally:
        container.close()


def wav_truncation(path: Path) -> str | None:
    """Why a RIFF/WAVE file is incomplete, or None. libsndfile clamps a data chunk cut short to the bytes present and
    returns a shorter clip without a word, so the declared chunk size is checked against the file's size."""
    import struct

    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None  # not a WAV: its reader checks it
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
            if chunk_id == b"data":
                streaming = chunk_size in (0, 0xFFFFFFFF)  # written without knowing the length: nothing to check
                if not streaming and pos + 8 + chunk_size > size:
                    return (
                        f"truncated: its data chunk declares {chunk_size} bytes but only {size - pos - 8} are present"
                    )
                return None
            pos += 8 + chunk_size + (chunk_size & 1)
    return None


def read_samples(path: Path, fix: str | None = None, where: str = "") -> tuple[np.ndarray, int]:
    """(float32 samples (n, channels), sample rate) of an audio file (wav/flac/ogg, via soundfile): the one reader of
    audio files, so every caller fails the same way on a missing, unreadable, empty or truncated file."""
    import soundfile as sf

    path = Path(path)
    named = Path(f"{path} (listed at {where})") if where else path
    if not path.is_file():
        raise _fail(named, "audio file not found", fix)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
        raise _fail(named, f"not a readable audio file, corrupt or truncated ({e})", fix) from e
    if len(data) == 0 or data.shape[1] == 0:
        raise _fail(named, "contains no audio samples", fix)
    if reason := wav_truncation(path):
        raise _fail(named, reason, fix)
    return data, int(rate)


def read_audio(
    path: Path, sample_rate: int = 16000, duration: float | None = None, fix: str | None = None
) -> np.ndarray:
    """Read an audio file as mono float32 at `sample_rate`."""
    data, rate = read_samples(path, fix)
    return mix_resample(data, rate, sample_rate, duration)


# ----------------------------------------------------------------------------- still images and fixed-length clips


def clip_image(im, size: int, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """RGB PIL image -> float32 (3, size, size): CLIP's eval transform (see the module docstring)."""
    from PIL import Image

    w, h = im.size
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.BICUBIC)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    x = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def load_image(path: Path, size: int, mean=CLIP_MEAN, std=CLIP_STD, fix: str | None = None) -> np.ndarray:
    """An image file (any mode, converted to RGB) -> float32 (3, size, size) through `clip_image`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return clip_image(im.convert("RGB"), size, mean, std)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise _fail(path, f"not a readable image, corrupt or truncated ({type(e).__name__}: {e})", fix) from e


def fit_center(wave: np.ndarray, n: int) -> np.ndarray:
    """Centre-crop to `n` samples, or zero-pad on both sides (the signal centred) to `n`."""
    if len(wave) >= n:
        start = (len(wave) - n) // 2
        return wave[start : start + n]
    pad = n - len(wave)
    return np.pad(wave, (pad // 2, pad - pad // 2))


def load_clip(path: Path, sample_rate: int, clip_samples: int, fix: str | None = None) -> tuple[np.ndarray, bool]:
    """(float32 (clip_samples,) mono in [-1, 1] at `sample_rate`, was it resampled?)."""
    data, rate = read_samples(path, fix)
    wave = mix_resample(data, int(rate), int(sample_rate))
    return np.clip(fit_center(wave, clip_samples), -1.0, 1.0).astype(np.float32), int(rate) != int(sample_rate)
