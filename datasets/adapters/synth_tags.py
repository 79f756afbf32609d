"""SynthTags: the built-in multi-label audio dataset of the `audio-multilabel` suite.

Why it exists: the multi-label suite must run with no download, through the same code a real
dataset uses: wav files on disk, the reference's phase text files (wrapped multi-line records
included), the parser, the log-mel front-end and the feature store.

Classes (50, the reference's 30 + 5 x 4 protocol): a class is a sound family of SynthAV
(`datasets.adapters.synth_av.synth_audio`: hum, whistle, tremolo, siren, hiss, rumble, rising chirps,
falling chirps, clicks, reed) in one of five pitch registers (-14, -7, 0, +7, +14 semitones,
with 0.7 semitone per-source jitter). Class c is family c % 10 in register c // 10, so the 30
base classes are every family in the three lower registers, and each incremental phase adds
one higher register of five families: new classes resemble old ones (same family, another
register), as AudioSet's "Speech" resembles "Male speech".

Clips are mixtures of 1-3 sources (probabilities 0.4 / 0.4 / 0.2) of distinct classes, each
source with SynthAV's onset, envelope, gain, noise and random distractor blip; 0.64 s at
32 kHz. Multi-hot labels name the sources, under the reference's protocol:

* train phase 0 (300 clips): sources from the 30 base classes, 30-dim labels;
* train phase t = 1..4 (50 clips each): the first source is a phase-t class; every further
  source is a phase-t class with probability 0.3, else an old class, which is present but
  NOT labelled (5-dim new-class labels), as in the reference's new-phase files;
* test group g (100 clips for g = 0, 25 for g = 1..4): the first source from phase g, the
  others from classes of phases <= g; test_phase_0..t holds groups 0..t labelled on all
  30 + 5t seen classes (cumulative, complete labels).

Layout (materialised once, deterministic from the seed):

    <data_root>/synth_tags/generator.json          generator config (written first)
    <data_root>/synth_tags/wav/<id>.wav            16-bit PCM, one per clip (written atomically)
    <data_root>/synth_tags/phases/*.txt            the reference's 10 phase files (written last),
                                                    records `wav/<id>.wav_[0. 1. ...]`, numpy-printed
                                                    and therefore wrapped over 2-3 lines for >= 30 dims

The record paths are relative (resolved against the dataset folder), so the folder can move.

Front-end: the reference's log-mel (32 kHz, n_fft 1024, hop 320, 64 HTK mels 20 Hz-14 kHz,
natural log) on 0.64 s clips instead of 10 s: 65 x 64 instead of 1001 x 64, so the default suite
(3 methods x 3 normalisations x 2 seeds) trains in minutes on two CPU cores. The methods' configs
use a CNN14 scaled to 1/16 of the widths for this dataset (see methods/ml_indl/README.md).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from datasets.adapters.audio_multilabel import (
    PHASE_SIZES,
    PhaseFileAdapter,
    cumulative_test_file,
    format_record,
    train_phase_file,
)
from datasets.adapters.synth_av import AUDIO_FAMILIES, SynthConfig, synth_audio
from datasets.base import Availability
from datasets.encoders.logmel import LogMelConfig
from datasets.io import atomic_write_bytes, atomic_write_text

REGISTER_NAMES = ("very-low", "low", "mid", "high", "very-high")


@dataclass(frozen=True)
class SynthTagsConfig:
    seed: int = 0
    sample_rate: int = 32000
    seconds: float = 0.32
    train_base: int = 300  # clips in train_phase_0
    train_new: int = 50  # clips in each train_phase_t, t >= 1
    test_base: int = 100  # test clips whose first source is a base class
    test_new: int = 25  # test clips added by each incremental phase
    register_step: float = 10.0  # semitones between neighbouring registers (registers at -2..+2 steps)
    pitch_jitter: float = 0.7  # semitones
    source_probs: tuple[float, float, float] = (0.4, 0.4, 0.2)  # 1, 2 or 3 sources
    same_phase_extra: float = 0.3  # train phase t >= 1: chance that a further source is a phase-t class
    version: int = 1  # bump whenever the generator changes its output

    def to_json(self) -> dict:
        d = asdict(self)
        d["source_probs"] = list(self.source_probs)
        return d


def class_family(c: int) -> int:
    return c % len(AUDIO_FAMILIES)


def class_register(c: int) -> int:
    return c // len(AUDIO_FAMILIES)


CLASS_NAMES = tuple(
    f"{AUDIO_FAMILIES[class_family(c)]}/{REGISTER_NAMES[class_register(c)]}" for c in range(sum(PHASE_SIZES))
)


def phase_classes(t: int) -> list[int]:
    lo = sum(PHASE_SIZES[:t])
    return list(range(lo, lo + PHASE_SIZES[t]))


def draw_sources(rng: np.random.Generator, cfg: SynthTagsConfig, phase: int, train: bool) -> list[int]:
    """Classes of one clip: the first from `phase`, the rest from phase (train) or older phases."""
    k = int(rng.choice(3, p=cfg.source_probs)) + 1
    new = phase_classes(phase)
    older = [c for t in range(phase) for c in phase_classes(t)]
    pool_all = older + new
    out = [int(rng.choice(new))]
    while len(out) < k:
        if phase == 0:
            cand = new
        elif train:
            cand = new if rng.random() < cfg.same_phase_extra else older
        else:
            cand = pool_all
        c = int(rng.choice(cand))
        if c not in out:
            out.append(c)
    return out


def synth_mixture(sources: list[int], rng: np.random.Generator, cfg: SynthTagsConfig) -> np.ndarray:
    """Sum of SynthAV sources (each with its own onset, gain, noise, distractor); float32 in [-1, 1]."""
    av = SynthConfig(sample_rate=cfg.sample_rate, seconds=cfg.seconds)
    mix = np.zeros(int(round(cfg.seconds * cfg.sample_rate)), dtype=np.float64)
    for c in sources:
        pitch = cfg.register_step * (class_register(c) - 2) + rng.normal(0, cfg.pitch_jitter)
        mix += synth_audio(class_family(c), pitch, rng, av)
    return np.clip(mix, -1, 1).astype(np.float32)


def clip_plan(cfg: SynthTagsConfig) -> list[tuple[str, str, int, list[int]]]:
    """(id, 'train'/'test', phase, source classes) of every clip, deterministic from the seed."""
    plan = []
    for split, counts in (
        ("train", (cfg.train_base,) + (cfg.train_new,) * 4),
        ("test", (cfg.test_base,) + (cfg.test_new,) * 4),
    ):
        for t, n in enumerate(counts):
            for i in range(n):
                rng = np.random.default_rng([cfg.seed, 0 if split == "train" else 1, t, i, 0])
                plan.append((f"{split[:2]}{t}_{i:04d}", split, t, draw_sources(rng, cfg, t, split == "train")))
    return plan


def _write_wav(path: Path, wave: np.ndarray, rate: int) -> None:
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, wave, rate, subtype="PCM_16", format="WAV")
    atomic_write_bytes(path, buf.getvalue())


class SynthTags(PhaseFileAdapter):
    name = "synth_tags"
    title = "SynthTags (embedded, 30+5x4)"
    class_names = CLASS_NAMES

    def __init__(self, config: SynthTagsConfig | None = None, **kw):
        self.config = config or SynthTagsConfig()
        super().__init__(frontend=LogMelConfig(sample_rate=self.config.sample_rate, seconds=self.config.seconds), **kw)

    def folder(self, data_root: Path) -> Path:
        default = self.config == SynthTagsConfig()
        from datasets.io import config_hash

        return Path(data_root) / ("synth_tags" if default else f"synth_tags-{config_hash(self.config.to_json())[:8]}")

    def availability(self, data_root: Path) -> Availability:
        return Availability(
            True, f"built in: generated under {self.folder(data_root)} on first use, from seed {self.config.seed}"
        )

    def phase_set(self, data_root: Path):
        self.generate(data_root)
        return super().phase_set(data_root)

    def generate(self, data_root: Path) -> Path:
        """Make sure every wav and the phase files exist for this config."""
        root = self.folder(data_root)
        stamp, phases, wav = root / "generator.json", self.phase_dir(data_root), root / "wav"
        want = json.dumps(self.config.to_json(), sort_keys=True)
        if not (stamp.is_file() and stamp.read_text() == want):
            if root.exists():
                shutil.rmtree(root)  # another generator config: never trusted
            wav.mkdir(parents=True)
            atomic_write_text(stamp, want)
        plan = clip_plan(self.config)
        names = [train_phase_file(t) for t in range(len(PHASE_SIZES))] + [
            cumulative_test_file(t) for t in range(len(PHASE_SIZES))
        ]
        todo = [p for p in plan if not (wav / f"{p[0]}.wav").is_file()]
        if not todo and all((phases / n).is_file() for n in names):
            return root
        for name in names:  # phase files appear only once every wav they name exists
            (phases / name).unlink(missing_ok=True)
        for tmp in wav.glob(".*.tmp"):
            tmp.unlink()
        for cid, split, t, sources in todo:
            rng = np.random.default_rng([self.config.seed, 0 if split == "train" else 1, t, int(cid.split("_")[1]), 1])
            _write_wav(wav / f"{cid}.wav", synth_mixture(sources, rng, self.config), self.config.sample_rate)
        n = sum(PHASE_SIZES)
        for t in range(len(PHASE_SIZES)):
            lo, hi = sum(PHASE_SIZES[:t]), sum(PHASE_SIZES[: t + 1])
            lines = []
            for cid, split, pt, sources in plan:
                if split == "train" and pt == t:
                    y = np.zeros(n)
                    y[sources] = 1
                    lines.append(format_record(f"wav/{cid}.wav", y[lo:hi]))
            atomic_write_text(phases / train_phase_file(t), "\n".join(lines) + "\n")
            lines = []
            for cid, split, pt, sources in plan:
                if split == "test" and pt <= t:
                    y = np.zeros(n)
                    y[sources] = 1
                    lines.append(format_record(f"wav/{cid}.wav", y[:hi]))
            atomic_write_text(phases / cumulative_test_file(t), "\n".join(lines) + "\n")
        return root


ADAPTERS = [SynthTags()]
