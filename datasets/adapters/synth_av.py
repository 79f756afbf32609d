"""SynthAV: the built-in audio-visual dataset, generated from a seed on first use.

Why it exists: the default benchmark run must be meaningful with no download. SynthAV is
built so that the *combination* of modalities matters, which is what an audio-visual
class-incremental benchmark has to exercise:

* Each class c is a pair (audio family a, visual family v) with a = c // 2 and
  v = ((c + 1) % n) // 2. Every audio family and every visual family is shared by
  exactly two classes and no two classes share both, so one modality alone narrows a
  clip down to two classes and only the pair names the class reliably.
* A weak class-specific cue inside each modality (a small pitch offset for the two
  classes of an audio family, a small hue offset for the two classes of a visual family)
  under per-clip jitter lifts each single modality above 50 % of the way, not to 100 %.
* Nuisances: random gain, onset (time shift), background noise and a distractor blip
  in audio; random position/speed, background gradient, clutter blobs and pixel noise
  in video. In 4 % of the clips the sound event is absent and in another 4 % the
  object is (never both), so even the audio-visual upper bound stays a little below 100 %.

It is materialised as real media in the same layout a raw-video dataset uses, so the
same decoding path (datasets.media) and the same extraction code are exercised:

    <data_root>/synth_av/generator.json     generator config (written first)
    <data_root>/synth_av/videos/<id>.mp4    H.264 video + AAC audio, one per clip
    <data_root>/synth_av/metadata.csv       id,class_name,split (written last)

Each clip is written atomically, so a run interrupted during generation is resumed (the
finished clips are kept) and a folder whose generator.json differs is regenerated;
metadata.csv appears only when every clip exists. Features are then extracted by
decoding the files and running the built-in random light encoders (datasets.encoders.synthetic)
into `<data_root>/cache/store/synth_av-<hash>`, resumably, where the hash covers the
generator config, the decoding parameters and the encoder configs.

Besides the `audio`/`visual` feature views, the store holds raw views for image+audio+text
methods (MCIL-AudioCLIP and the CLIP-style baselines): `image` (3, 64, 64), the middle decoded
frame (index frames // 2) CLIP-normalised, and `waveform` (16000,), the decoded 1-s mono
waveform at 16 kHz in [-1, 1]; meta audio_bank "self" makes the store its own clip bank
(datasets.pairing.AudioPairing pairs row i with row i), and prompt_template "a video of {}."
with class_prompt_names ("<audio words> with a <hue> <visual words>") gives them text. The
feature views are computed from the same decoded batch as before, so they are bit-identical to
the EXTRACT_VERSION 1 store's.

Measured separability (harness upper-bound method, joint training on all seen classes,
30 epochs, seeds 0 and 1, `python run_all.py --methods upper_bound`): accuracy on all 20
classes after the last step, audio-visual 93.1 %, audio only 65.8 %, visual only 55.2 %
(average incremental accuracy 93.6 / 69.0 / 60.9 %): each single modality is at least
25 points below audio-visual, and audio-visual is above 90 %.

Default protocol "5x4": 20 classes in 5 steps of 4, memory M = 120 exemplars in total,
i.e. 6 per class (12.5 % of a class's 48 training clips) once all 20 classes are seen
(more per class in early steps, when M is shared by fewer classes).
"""

from __future__ import annotations

import colorsys
import csv
import io
import json
import multiprocessing as mp
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from datasets import media
from datasets.base import Availability, DatasetAdapter, ProtocolSpec, SampleTable
from datasets.encoders.synthetic import AudioEncoder, VisualEncoder
from datasets.errors import DatasetError
from datasets.io import atomic_write_text, config_hash
from datasets.store import FeatureStore, StoreWriter, ViewSpec

AUDIO_FAMILIES = ("hum", "whistle", "tremolo", "siren", "hiss", "rumble", "chirp-up", "chirp-down", "clicks", "reed")
AUDIO_WORDS = (
    "a low buzzing hum",
    "a high clear whistle",
    "a fluttering tremolo tone",
    "a wailing siren",
    "a high hiss of noise",
    "a deep rumble",
    "rising chirps",
    "falling chirps",
    "a crackle of clicks",
    "a hollow reedy tone",
)
VISUAL_FAMILIES = ("ball", "box", "ring", "cross", "bars", "waves", "checker", "triangle", "swarm", "diamond")
VISUAL_WORDS = (
    "ball sliding sideways",
    "square box moving up or down",
    "ring that grows and shrinks",
    "cross drifting diagonally",
    "patch of vertical bars scrolling sideways",
    "patch of horizontal waves scrolling",
    "flickering checkerboard patch",
    "triangle gliding across",
    "swarm of small jittering dots",
    "spinning diamond",
)
HUE_WORDS = ("red", "orange", "yellow", "green", "teal", "cyan", "sky-blue", "blue", "purple", "pink")


@dataclass(frozen=True)
class SynthConfig:
    """Everything that determines the generated media (all of it goes into the hashes)."""

    num_classes: int = 20  # even, 4..20 (10 audio and 10 visual families at most)
    train: int = 48  # clips per class and split
    val: int = 12
    test: int = 12
    seed: int = 0
    sample_rate: int = 16000
    seconds: float = 1.0
    frames: int = 8  # over `seconds`, so fps = frames / seconds
    size: int = 64  # square frames, a multiple of the 16-pixel patch
    pitch_offset: float = 0.5  # semitones, +/- between the two classes of an audio family
    pitch_jitter: float = 0.8  # semitones, per-clip standard deviation
    hue_offset: float = 7.0  # degrees, +/- between the two classes of a visual family
    hue_jitter: float = 4.0  # degrees, per-clip standard deviation
    missing: float = 0.04  # per modality: share of clips whose sound event / object is absent
    version: int = 1  # bump whenever the generator code changes its output

    def __post_init__(self) -> None:
        if self.num_classes % 2 or not 4 <= self.num_classes <= 2 * len(AUDIO_FAMILIES):
            raise DatasetError(
                f"SynthAV: num_classes must be even and in [4, {2 * len(AUDIO_FAMILIES)}], got {self.num_classes}"
            )
        if min(self.train, self.val, self.test) < 1:
            raise DatasetError("SynthAV: every class needs at least one train, val and test clip")
        if self.frames % 2 or self.size % 16:
            raise DatasetError("SynthAV: frames must be even (2-frame tubelets) and size a multiple of 16 (patches)")

    @property
    def fps(self) -> float:
        return self.frames / self.seconds

    @property
    def per_class(self) -> int:
        return self.train + self.val + self.test

    def to_json(self) -> dict:
        return asdict(self)


def audio_family(c: int, num_classes: int) -> int:
    return c // 2


def visual_family(c: int, num_classes: int) -> int:
    return ((c + 1) % num_classes) // 2


def cue_signs(c: int) -> tuple[int, int]:
    """(pitch sign, hue sign): the two classes of each family get opposite offsets."""
    # Classes 2k and 2k+1 share audio family k; classes 2k-1 and 2k share visual family k.
    return (-1, +1) if c % 2 == 0 else (+1, -1)


# ----------------------------------------------------------------------------- audio


def _band_noise(rng, n: int, sr: int, lo: float, hi: float) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / sr)
    spec[(f < lo) | (f > hi)] = 0
    return np.fft.irfft(spec, n)


def _chirps(t: np.ndarray, f0: float, f1: float, length: float, period: float, rng) -> np.ndarray:
    """Exponential sweeps f0 -> f1 of `length` s repeated every `period` s."""
    local = (t + rng.uniform(0, period)) % period
    on = local < length
    k = np.log(f1 / f0) / length
    phase = 2 * np.pi * f0 * (np.exp(k * np.minimum(local, length)) - 1) / k
    return np.sin(phase) * on * np.sin(np.pi * np.clip(local / length, 0, 1)) ** 0.5


def synth_audio(
    family: int, pitch: float, rng: np.random.Generator, cfg: SynthConfig, present: bool = True
) -> np.ndarray:
    """One clip of `family` with all frequencies scaled by 2**(pitch/12); float32 (S,).

    `present=False`: the sound event is absent (an off-screen/silent source): only the
    distractor and the noise remain.
    """
    sr, n = cfg.sample_rate, int(round(cfg.seconds * cfg.sample_rate))
    t = np.arange(n) / sr
    r = 2.0 ** (pitch / 12.0)
    if family == 0:  # hum: sawtooth-like harmonic stack
        x = sum(np.sin(2 * np.pi * 150 * r * k * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 16))
    elif family == 1:  # whistle: near-pure high tone with slight vibrato
        ph = 2 * np.pi * 1900 * r * (t + 0.01 / (2 * np.pi * 6) * np.sin(2 * np.pi * 6 * t))
        x = np.sin(ph) + 0.15 * np.sin(2 * ph)
    elif family == 2:  # tremolo: mid tone, deep amplitude modulation
        base = sum(a * np.sin(2 * np.pi * 650 * r * k * t) for k, a in ((1, 1.0), (2, 0.5), (3, 0.25)))
        x = base * (1 + 0.9 * np.sin(2 * np.pi * 10 * t + rng.uniform(0, 2 * np.pi)))
    elif family == 3:  # siren: slow wide frequency modulation
        inst = 1000 * r * (1 + 0.3 * np.sin(2 * np.pi * 3 * t + rng.uniform(0, 2 * np.pi)))
        x = np.sin(2 * np.pi * np.cumsum(inst) / sr)
    elif family == 4:  # hiss: high noise band
        x = _band_noise(rng, n, sr, 3000 * r, 6000 * r)
    elif family == 5:  # rumble: low noise band
        x = _band_noise(rng, n, sr, 80 * r, 400 * r)
    elif family == 6:  # rising chirps
        x = _chirps(t, 500 * r, 2500 * r, 0.2, 0.25, rng)
    elif family == 7:  # falling chirps
        x = _chirps(t, 3200 * r, 700 * r, 0.3, 0.33, rng)
    elif family == 8:  # clicks: 30 Hz impulse train through a damped resonance
        pulses = np.zeros(n)
        pulses[(np.arange(0, cfg.seconds, 1 / 30) * sr + rng.integers(0, sr // 30)).astype(int) % n] = 1.0
        kt = np.arange(int(0.02 * sr)) / sr
        x = np.convolve(pulses, np.exp(-kt / 0.004) * np.sin(2 * np.pi * 1500 * r * kt))[:n]
    elif family == 9:  # reed: odd harmonics (square-like)
        x = sum(np.sin(2 * np.pi * 330 * r * k * t) / k for k in range(1, 16, 2))
    else:
        raise ValueError(family)
    x = x / (np.sqrt(np.mean(x**2)) + 1e-8)
    # The event covers 55-85 % of the clip from a random onset, with short fades.
    length = int(n * rng.uniform(0.55, 0.85))
    onset = int(rng.integers(0, n - length + 1))
    env = np.zeros(n)
    fade = int(0.02 * sr)
    env[onset : onset + length] = np.minimum(1.0, np.minimum(np.arange(length) + 1, np.arange(length)[::-1] + 1) / fade)
    x = x * env * present
    # Distractor: a short tone blip at a random frequency, in half of the clips.
    if rng.random() < 0.5:
        bl, bo = int(0.12 * sr), int(rng.integers(0, n - int(0.12 * sr)))
        x[bo : bo + bl] += 0.5 * np.sin(2 * np.pi * rng.uniform(200, 5000) * t[:bl]) * np.hanning(bl)
    snr_db = rng.uniform(6, 20)
    noise = rng.standard_normal(n) * 10 ** (-snr_db / 20)
    gain = 0.12 * 10 ** (rng.uniform(-12, 0) / 20)
    return np.clip(gain * (x + noise), -1, 1).astype(np.float32)


# ----------------------------------------------------------------------------- video


def _hsv(h_deg: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((h_deg % 360) / 360.0, s, v), dtype=np.float32) * 255


def synth_video(
    family: int, hue: float, rng: np.random.Generator, cfg: SynthConfig, present: bool = True
) -> np.ndarray:
    """One clip of `family` with its object in `hue` (degrees); uint8 (F, H, W, 3).

    `present=False`: the object is absent (out of view): background and clutter only.
    """
    F, S = cfg.frames, cfg.size
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    colour = _hsv(hue, rng.uniform(0.8, 0.9), rng.uniform(0.9, 1.0))
    dark = colour * 0.35
    # Background: a dim low-saturation gradient plus 3-5 static clutter blobs.
    c0, c1 = (
        _hsv(rng.uniform(0, 360), 0.2, rng.uniform(0.12, 0.2)),
        _hsv(rng.uniform(0, 360), 0.2, rng.uniform(0.12, 0.2)),
    )
    a = rng.uniform(0, 2 * np.pi)
    ramp = ((np.cos(a) * xx + np.sin(a) * yy) / S + 1)[..., None] / 2
    bg = c0 * (1 - ramp) + c1 * ramp
    for _ in range(int(rng.integers(3, 6))):
        cx, cy, rx, ry = rng.uniform(0, S), rng.uniform(0, S), rng.uniform(3, 7), rng.uniform(3, 7)
        m = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
        bg[m] = _hsv(rng.uniform(0, 360), rng.uniform(0.1, 0.4), rng.uniform(0.25, 0.45))
    s = rng.uniform(0.85, 1.15) * cfg.size / 64  # object scale
    cx, cy = rng.uniform(0.3 * S, 0.7 * S), rng.uniform(0.3 * S, 0.7 * S)
    speed = rng.uniform(2, 4) * rng.choice([-1, 1]) * cfg.size / 64  # pixels per frame
    phase = rng.uniform(0, 2 * np.pi)
    dots = rng.uniform(0, S, size=(14, 2))
    out = np.empty((F, S, S, 3), dtype=np.float32)
    for i in range(F):
        img = bg.copy()
        if family == 0:  # ball, horizontal motion
            x = (cx + speed * i) % S
            m = (xx - x) ** 2 + (yy - cy) ** 2 < (14 * s) ** 2
        elif family == 1:  # box, vertical motion
            y = (cy + speed * i) % S
            m = (np.abs(xx - cx) < 12 * s) & (np.abs(yy - y) < 12 * s)
        elif family == 2:  # ring, radius pulsing
            rad = (15 + 6 * np.sin(phase + 1.2 * i)) * s
            d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
            m = np.abs(d - rad) < 3 * s
        elif family == 3:  # cross, diagonal motion
            x, y = (cx + speed * i) % S, (cy + speed * i) % S
            m = ((np.abs(xx - x) < 4 * s) & (np.abs(yy - y) < 17 * s)) | (
                (np.abs(yy - y) < 4 * s) & (np.abs(xx - x) < 17 * s)
            )
        elif family in (4, 5, 6):  # textured patch: bars / waves / checker
            box = (np.abs(xx - cx) < 17 * s) & (np.abs(yy - cy) < 17 * s)
            if family == 4:
                on = ((xx + speed * i) % 8) < 4
            elif family == 5:
                on = np.sin(2 * np.pi * (yy + speed * i) / 10 + phase) > 0
            else:
                on = (((xx // 6) + (yy // 6) + i) % 2) == 0
            if present:
                img[box] = dark
            m = box & on
        elif family == 7:  # triangle, horizontal glide
            x = (cx + speed * i) % S
            h = 32 * s
            rel = yy - (cy - h / 2)
            m = (rel >= 0) & (rel < h) & (np.abs(xx - x) < rel * 0.6)
        elif family == 8:  # swarm of small jittering dots
            dots = (dots + rng.normal(0, 2.5, size=dots.shape)) % S
            m = np.zeros((S, S), dtype=bool)
            for dx, dy in dots:
                m |= (np.abs(xx - dx) < 2.5 * s) & (np.abs(yy - dy) < 2.5 * s)
        elif family == 9:  # spinning diamond
            ang = phase + 0.4 * i * np.sign(speed)
            u = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)
            v = -(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)
            m = np.abs(u) + np.abs(v) < 19 * s
        else:
            raise ValueError(family)
        if present:
            img[m] = colour
        out[i] = img
    out += rng.normal(0, 8, size=out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def synth_clip(c: int, index: int, cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """(frames uint8 (F, S, S, 3), waveform float32 (samples,)) of clip `index` of class `c`.

    Seeded by (seed, class, index) alone, so the result does not depend on the order or
    the process in which clips are generated.
    """
    rng = np.random.default_rng([cfg.seed, c, index])
    ps, hs = cue_signs(c)
    a, v = audio_family(c, cfg.num_classes), visual_family(c, cfg.num_classes)
    pitch = ps * cfg.pitch_offset + rng.normal(0, cfg.pitch_jitter)
    hue = v * 36.0 + hs * cfg.hue_offset + rng.normal(0, cfg.hue_jitter)
    # A few clips lose one modality (never both), as in real audio-visual data; only
    # the other modality can then classify them.
    u = rng.random()
    wave = synth_audio(a, pitch, rng, cfg, present=not u < cfg.missing)
    frames = synth_video(v, hue, rng, cfg, present=not cfg.missing <= u < 2 * cfg.missing)
    return frames, wave


def _write_job(job: tuple[int, int, str, SynthConfig]) -> str:
    c, index, path, cfg = job
    frames, wave = synth_clip(c, index, cfg)
    # Lossless H.264: the decoded frames, hence the features, are the same on every run.
    media.write_clip(Path(path), frames, cfg.fps, wave, cfg.sample_rate, lossless=True)
    return path


def _decode_job(job: tuple[str, SynthConfig, str]) -> tuple[np.ndarray, np.ndarray]:
    path, cfg, fix = job
    return media.decode_video(
        Path(path), num_frames=cfg.frames, sample_rate=cfg.sample_rate, duration=cfg.seconds, fix=fix
    )


def _pool(workers: int):
    """A process pool of `workers` (fork where available: no re-import of torch per worker)."""
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx)


# ----------------------------------------------------------------------------- adapter


class SynthAV(DatasetAdapter):
    """The generated default dataset (see the module docstring)."""

    name = "synth_av"
    title = "SynthAV"
    suites = ("audio-visual",)
    # `image` / `waveform` are the raw views for image+audio+text methods (the middle frame and
    # the decoded waveform); the store is its own audio bank (meta audio_bank "self").
    views = ("audio", "visual", "clip_image", "waveform")
    prompt_template = "a video of {}."
    EXTRACT_VERSION = 3  # bump whenever extraction changes the features (2: raw image/waveform views)

    def __init__(
        self,
        config: SynthConfig | None = None,
        *,
        audio_dim: int = 64,
        visual_dim: int = 64,
        encoder_seed: int = 0,
        batch_size: int = 64,
        workers: int | None = None,
    ):
        self.config = config or SynthConfig()
        self.audio_dim, self.visual_dim, self.encoder_seed, self.batch_size = (
            audio_dim,
            visual_dim,
            encoder_seed,
            batch_size,
        )
        self.workers = workers if workers is not None else min(2, os.cpu_count() or 1)
        cfg = self.config
        self.class_names = [
            f"{AUDIO_FAMILIES[audio_family(c, cfg.num_classes)]}+{VISUAL_FAMILIES[visual_family(c, cfg.num_classes)]}"
            for c in range(cfg.num_classes)
        ]
        self.prompts = [self._prompt(c) for c in range(cfg.num_classes)]
        self.class_prompt_names = [self._prompt_name(c) for c in range(cfg.num_classes)]

    def _prompt_name(self, c: int) -> str:
        """A short natural name for `prompt_template`, e.g. "a deep rumble with a red ball sliding sideways"."""
        a, v = audio_family(c, self.config.num_classes), visual_family(c, self.config.num_classes)
        article = "an" if HUE_WORDS[v][0] in "aeiou" else "a"
        return f"{AUDIO_WORDS[a]} with {article} {HUE_WORDS[v]} {VISUAL_WORDS[v]}"

    def _prompt(self, c: int) -> str:
        a, v = audio_family(c, self.config.num_classes), visual_family(c, self.config.num_classes)
        ps, hs = cue_signs(c)
        pitch = "slightly lower" if ps < 0 else "slightly higher"
        toward = HUE_WORDS[(v + hs) % len(HUE_WORDS)]
        article = "an" if HUE_WORDS[v][0] in "aeiou" else "a"
        return (
            f"{AUDIO_WORDS[a]}, {pitch} in pitch, with {article} {HUE_WORDS[v]} "
            f"{VISUAL_WORDS[v]}, its colour shifted slightly toward {toward}"
        )

    # -- contract --------------------------------------------------------------------

    def availability(self, data_root: Path) -> Availability:
        return Availability(
            True, f"built in: generated under {self.raw_dir(data_root)} on first use, from seed {self.config.seed}"
        )

    def protocols(self) -> list[ProtocolSpec]:
        n = self.config.num_classes
        k = 4 if n % 4 == 0 else 2
        memory = n * max(1, round(0.125 * self.config.train))  # 6 per class for 48 training clips
        return [ProtocolSpec(f"{n // k}x{k}", (k,) * (n // k), memory)]

    def open(self, data_root: Path, progress: bool = True) -> FeatureStore:
        path = self.store_path(data_root)
        if (path / "manifest.json").is_file():
            return FeatureStore(path)
        table = self.generate(data_root, progress=progress)
        return self._extract(data_root, table, path, progress)

    # -- paths and hashes --------------------------------------------------------------

    def raw_dir(self, data_root: Path) -> Path:
        """`<data_root>/synth_av` for the default config, `synth_av-<hash>` for any other."""
        default = self.config == SynthConfig()
        return Path(data_root) / ("synth_av" if default else f"synth_av-{config_hash(self.config.to_json())[:8]}")

    def encoders(self) -> tuple[AudioEncoder, VisualEncoder]:
        return (
            AudioEncoder(self.audio_dim, sample_rate=self.config.sample_rate, seed=self.encoder_seed),
            VisualEncoder(self.visual_dim, seed=self.encoder_seed),
        )

    def _decode_params(self) -> dict:
        c = self.config
        return {"num_frames": c.frames, "sample_rate": c.sample_rate, "duration": c.seconds, "size": None}

    def store_key(self) -> dict:
        a, v = self.encoders()
        return {
            "generator": self.config.to_json(),
            "decode": self._decode_params(),
            "encoders": {"audio": a.config(), "visual": v.config()},
            "extract_version": self.EXTRACT_VERSION,
        }

    def store_path(self, data_root: Path) -> Path:
        return Path(data_root) / "cache" / "store" / f"synth_av-{config_hash(self.store_key())}"

    # -- generation --------------------------------------------------------------------

    def clips(self) -> list[tuple[str, int, int, str]]:
        """(id, class, index within class, split) for every clip, in store row order."""
        cfg, out = self.config, []
        for c in range(cfg.num_classes):
            for i in range(cfg.per_class):
                split = "train" if i < cfg.train else "val" if i < cfg.train + cfg.val else "test"
                out.append((f"c{c:02d}_{i:03d}", c, i, split))
        return out

    def generate(self, data_root: Path, progress: bool = True) -> SampleTable:
        """Make sure every clip and metadata.csv exist for this config; return the sample table."""
        root = self.raw_dir(data_root)
        stamp, meta_path, videos = root / "generator.json", root / "metadata.csv", root / "videos"
        want = json.dumps(self.config.to_json(), sort_keys=True)
        if not (stamp.is_file() and stamp.read_text() == want):
            if root.exists():
                shutil.rmtree(root)  # another generator config (or an unknown folder): never trusted
            videos.mkdir(parents=True)
            atomic_write_text(stamp, want)
        clips = self.clips()
        todo = [
            (c, i, str(videos / f"{cid}.mp4"), self.config)
            for cid, c, i, _ in clips
            if not (videos / f"{cid}.mp4").is_file()
        ]
        if todo or not meta_path.is_file():
            meta_path.unlink(missing_ok=True)
            for tmp in videos.glob(".*.tmp"):  # leftovers of an interrupted write
                tmp.unlink()
            for _ in self._run(_write_job, todo, "SynthAV: generating clips", progress):
                pass
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(["id", "class_name", "split"])
            w.writerows([cid, self.class_names[c], split] for cid, c, _, split in clips)
            atomic_write_text(meta_path, buf.getvalue())
        return self.read_metadata(data_root)

    def read_metadata(self, data_root: Path) -> SampleTable:
        path = self.raw_dir(data_root) / "metadata.csv"
        index = {n: c for c, n in enumerate(self.class_names)}
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        try:
            labels = [index[r["class_name"]] for r in rows]
            table = SampleTable(
                [r["id"] for r in rows], np.array(labels), np.array([r["split"] for r in rows]), list(self.class_names)
            )
        except (KeyError, TypeError) as e:
            raise DatasetError(
                f"{path}: unexpected row or class name ({e}); delete {path.parent} to regenerate it"
            ) from e
        table.validate(str(path))
        return table

    def _run(self, fn, jobs: list, desc: str, progress: bool):
        """Yield fn(job) in order, over `self.workers` processes when it pays off."""
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=desc, disable=not progress or not jobs, unit="clip")
        try:
            if self.workers > 1 and len(jobs) >= 8:
                pool = _pool(self.workers)
                try:
                    # Bounded windows: results never pile up far ahead of the consumer, and an
                    # interrupted consumer leaves little queued work behind.
                    for lo in range(0, len(jobs), 256):
                        for out in pool.map(fn, jobs[lo : lo + 256], chunksize=4):
                            bar.update(1)
                            yield out
                finally:
                    pool.shutdown(wait=True, cancel_futures=True)
            else:
                for job in jobs:
                    out = fn(job)
                    bar.update(1)
                    yield out
        finally:
            bar.close()

    # -- extraction --------------------------------------------------------------------

    def _encode(
        self, enc: tuple[AudioEncoder, VisualEncoder], frames: np.ndarray, waves: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch: frames (B, F, H, W, 3) uint8, waves (B, S) -> (audio (B, Da), visual (B, T, P, Dv))."""
        audio_enc, visual_enc = enc
        with torch.no_grad():
            a = audio_enc(torch.from_numpy(waves))
            v = visual_enc(torch.from_numpy(frames).permute(0, 1, 4, 2, 3))
        return a, v

    @property
    def clip_samples(self) -> int:
        return int(round(self.config.seconds * self.config.sample_rate))

    def _raw_views(self, frames: np.ndarray, waves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One batch -> (image (B, 3, S, S): the middle decoded frame (index F // 2), CLIP-normalised;
        waveform (B, samples): the decoded mono waveform clipped to [-1, 1])."""
        mid = frames[:, frames.shape[1] // 2].astype(np.float32) / 255.0
        image = (mid - np.asarray(media.CLIP_MEAN, dtype=np.float32)) / np.asarray(media.CLIP_STD, dtype=np.float32)
        return np.ascontiguousarray(image.transpose(0, 3, 1, 2)), np.clip(waves, -1.0, 1.0).astype(np.float32)

    def _extract(self, data_root: Path, table: SampleTable, path: Path, progress: bool) -> FeatureStore:
        cfg = self.config
        enc = self.encoders()
        audio_enc, visual_enc = enc
        grid = visual_enc.grid(cfg.frames, cfg.size, cfg.size)
        meta = {
            "dataset": "synth_av",
            "pretrained": False,
            "encoders": {
                "audio": audio_enc.config(),
                "visual": visual_enc.config(),
                "note": "random built-in light encoders: fixed weights from a seed, no training, no download",
            },
            "generator": cfg.to_json(),
            "decode": self._decode_params(),
            "prompts": self.prompts,
            # raw views for image+audio+text methods (datasets.pairing.AudioPairing: "self" = identity pairing)
            "audio_bank": "self",
            "pairing": "self",
            "sample_rate": cfg.sample_rate,
            "clip_samples": self.clip_samples,
            "image_size": cfg.size,
            "image_mean": list(media.CLIP_MEAN),
            "image_std": list(media.CLIP_STD),
            "image_frame": cfg.frames // 2,
            "prompt_template": self.prompt_template,
            "class_prompt_names": self.class_prompt_names,
        }
        source = self.raw_dir(data_root) / "metadata.csv"
        views = [
            ViewSpec("audio", (self.audio_dim,)),
            ViewSpec("visual", grid),
            ViewSpec("clip_image", (3, cfg.size, cfg.size)),
            ViewSpec("waveform", (self.clip_samples,)),
        ]
        writer = StoreWriter(path, table, views, meta, str(source))
        start = min(writer.filled.values())
        start -= start % self.batch_size  # batches stay aligned, so a resumed run computes the same batches
        videos = self.raw_dir(data_root) / "videos"
        fix = f"delete it and run again (missing SynthAV clips are regenerated), or delete {self.raw_dir(data_root)}"
        jobs = [(str(videos / f"{i}.mp4"), cfg, fix) for i in table.ids[start:]]
        t0 = time.time()
        batch_f, batch_w, row = [], [], start
        for frames, wave in self._run(_decode_job, jobs, "SynthAV: extracting features", progress):
            batch_f.append(frames)
            batch_w.append(wave)
            if len(batch_f) == self.batch_size or row + len(batch_f) == len(table.ids):
                stacked_f, stacked_w = np.stack(batch_f), np.stack(batch_w)
                a, v = self._encode(enc, stacked_f, stacked_w)
                image, waveform = self._raw_views(stacked_f, stacked_w)
                for name, values in (("audio", a), ("visual", v), ("clip_image", image), ("waveform", waveform)):
                    skip = writer.filled[name] - row  # rows of this batch already written before an interruption
                    if skip < len(values):
                        writer.write(name, row + skip, values[skip:])
                row += len(batch_f)
                batch_f, batch_w = [], []
        writer.add_meta(extract_seconds=round(time.time() - t0, 1))
        return writer.finalize()


ADAPTERS = [SynthAV()]
