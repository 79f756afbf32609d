"""Multi-label audio datasets for class-incremental learning: AudioSet-50, FSD50K-50, CSV manifests.

Protocol (Mulimani & Mesaros, ICASSP 2024 / TASLP 2025; ../shared/reference/multilabel_audio.md
sections 3 and 13): 50 classes, phase 0 learns 30 base classes, phases 1-4 learn 5 new classes
each. The reference describes a phase with text files:

    train_phase_0.txt              clips of phase 0, 30-dim multi-hot labels (the base classes)
    train_phase_<t>.txt, t=1..4    clips of phase t, 5-dim labels: the NEW classes only (old-class
                                   presence in these clips is unknown, not negative)
    test_phase_0.txt, test_phase_0_1.txt, ..., test_phase_0_1_2_3_4.txt
                                   cumulative test sets, labels over the 30, 35, ..., 50 seen classes

One record is `<wav path>_[<numpy-printed multi-hot vector>]`. numpy wraps long vectors, so a
record spans one or more physical lines; continuation lines start with whitespace. The parser
here keeps every record (the reference drops the last one of each file), needs no hard-coded
path prefix (the reference finds record starts by `/scratch/project_2003370/`), and reports
every malformed record as a DatasetError naming the file and line: a vector of the wrong width,
a value other than 0/1, an unterminated vector, a missing or corrupt wav. With `skip_bad: true`
(dataset.yaml) such records are skipped instead and listed (printed, and saved in the result
record).

Where the audio is (`--audio-root`, or `audio_root:` in `<data_root>/<dataset>/dataset.yaml`):
the reference files hold absolute paths of the authors' machine. With an audio root, the part
of each absolute path after the directory common to all records of the dataset (or after
`path_prefix:` when given) is appended to the audio root; relative paths are appended to it as
they are. Without one, absolute paths are used as they are and relative ones are resolved
against the dataset folder `<data_root>/<dataset>/`. Example: records under
`/scratch/project_2003370/x/audioset/{train,eval}/Y...wav` with `--audio-root /data/as` are read
from `/data/as/train/Y...wav` and `/data/as/eval/Y...wav`.

There is no validation split: the reference has none and evaluates the last-epoch model of
every phase; so does this harness (CSV manifests: `val` rows are ignored and listed).

Features: `datasets.encoders.logmel` (32 kHz, 10 s, 64 HTK mels, natural log; 1001 x 64), computed once
per distinct wav and cached as float16 in a feature store (view `logmel`) under
`<data_root>/cache/store/<dataset>-<hash>`; store rows are the distinct recorded wav paths. The
labels stay in the phase files (parsed on every run, cheap), so fixing a label never forces a
feature re-extraction; the stream hash covers them.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datasets.base import Availability, DatasetAdapter, ProtocolSpec, SampleTable
from datasets.encoders.logmel import LogMel, LogMelConfig, load_wave, logmel_of_waves
from datasets.errors import DatasetError
from datasets.io import atomic_write_text, config_hash, read_yaml
from datasets.store import FeatureStore, StoreWriter, ViewSpec

SUITE = "audio-multilabel"
PHASE_SIZES = (30, 5, 5, 5, 5)

# data/AudioSet_classes.txt of mulimani/CIL-ML-Audio: file order = label index; 0-29 base classes.
AUDIOSET50_CLASSES = (
    "Generic impact sounds",
    "Male speech, man speaking",
    "Tick",
    "Female speech, woman speaking",
    "Breathing",
    "Music",
    "Mechanisms",
    "Background noise",
    "Wind noise (microphone)",
    "Bird vocalization, bird call, bird song",
    "Human voice",
    "Surface contact",
    "Sound effect",
    "Walk, footsteps",
    "Laughter",
    "Tap",
    "Child speech, kid speaking",
    "Wind",
    "Clapping",
    "Chirp, tweet",
    "Male singing",
    "Human sounds",
    "Clicking",
    "Accelerating, revving, vroom",
    "Conversation",
    "Beep, bleep",
    "Bark",
    "Shout",
    "Female singing",
    "Heart sounds, heartbeat",
    "Speech",
    "Video game sound",
    "Animal",
    "Dog",
    "Gunshot, gunfire",
    "Hubbub, speech noise, speech babble",
    "Cricket",
    "Squeal",
    "Crowd",
    "Water",
    "Computer keyboard",
    "Whistling",
    "Crumpling, crinkling",
    "Thump, thud",
    "Speech synthesizer",
    "Bell",
    "Choir",
    "Hammer",
    "Motor vehicle (road)",
    "Clickety-clack",
)
# data/FSD50K_classes.txt: sorted by descending development count.
FSD50K50_CLASSES = (
    "Music",
    "Domestic_sounds_and_home_sounds",
    "Vehicle",
    "Animal",
    "Human_voice",
    "Water",
    "Wild_animals",
    "Motor_vehicle_(road)",
    "Wind_instrument_and_woodwind_instrument",
    "Percussion",
    "Bird",
    "Alarm",
    "Plucked_string_instrument",
    "Keyboard_(musical)",
    "Mechanisms",
    "Guitar",
    "Engine",
    "Bowed_string_instrument",
    "Liquid",
    "Human_group_actions",
    "Rail_transport",
    "Thunder",
    "Thunderstorm",
    "Domestic_animals_and_pets",
    "Rain",
    "Speech",
    "Explosion",
    "Car",
    "Bird_vocalization_and_bird_call_and_bird_song",
    "Tools",
    "Bell",
    "Door",
    "Dog",
    "Piano",
    "Singing",
    "Livestock_and_farm_animals_and_working_animals",
    "Brass_instrument",
    "Drum",
    "Glass",
    "Laughter",
    "Respiratory_sounds",
    "Telephone",
    "Trumpet",
    "Acoustic_guitar",
    "Hands",
    "Cymbal",
    "Electric_guitar",
    "Snare_drum",
    "Fart",
    "Hi-hat",
)
assert len(AUDIOSET50_CLASSES) == len(FSD50K50_CLASSES) == sum(PHASE_SIZES)


def train_phase_file(t: int) -> str:
    return f"train_phase_{t}.txt"


def cumulative_test_file(t: int) -> str:
    return "test_phase_" + "_".join(str(i) for i in range(t + 1)) + ".txt"


def phase_file_names(num_phases: int) -> list[str]:
    return [train_phase_file(t) for t in range(num_phases)] + [cumulative_test_file(t) for t in range(num_phases)]


# ----------------------------------------------------------------------------- parsing
@dataclass(frozen=True)
class Record:
    path: str  # as written in the file (the store id)
    labels: np.ndarray  # uint8 multi-hot, the file's width
    where: str  # "<file>:<line>" of the record's first line


_RECORD = re.compile(r"^(?P<path>.+\.(?:wav|flac|ogg))_\[(?P<vec>[^\[\]]*)\]\s*$", re.IGNORECASE | re.DOTALL)


def parse_vector(text: str) -> list[float]:
    tokens = [t for t in re.split(r"[,\s]+", text.strip()) if t]
    return [float(t) for t in tokens]


def parse_phase_file(path: Path, width: int | None = None, skip_bad: bool = False) -> tuple[list[Record], list[str]]:
    """Every record of one phase file, and the skipped ones ("file:line: reason") when `skip_bad`.

    Record boundaries: a record starts on a line that does not begin with whitespace and ends
    with the `]` closing its vector; lines in between (numpy's wrapped continuation lines,
    which begin with a space) belong to it. Blank lines are ignored. Without `skip_bad` the
    first malformed record raises a DatasetError naming the file and line.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read the phase file ({e})") from e
    records: list[Record] = []
    skipped: list[str] = []

    def bad(line_no: int, reason: str) -> None:
        msg = f"{path}:{line_no}: {reason}"
        if not skip_bad:
            raise DatasetError(msg + "; fix the record, or set skip_bad: true in the dataset's dataset.yaml to skip it")
        skipped.append(msg)

    raw: list[tuple[int, list[str]]] = []  # (first line number, physical lines)

    def is_open(chunks: list[str]) -> bool:
        text = " ".join(chunks)
        start = text.find("_[")
        return start < 0 or "]" not in text[start:]

    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        continuation = line[:1].isspace()
        if raw and is_open(raw[-1][1]) and (continuation or "_[" not in line):
            raw[-1][1].append(line)
            continue
        if continuation:
            what = "before any record" if not raw else "after a record whose vector is already closed"
            bad(no, f"continuation line (starts with whitespace) {what}")
            continue
        if raw and is_open(raw[-1][1]):
            bad(
                raw[-1][0],
                "record is not terminated: its label vector has no closing ']' before the next record starts",
            )
            raw.pop()
        if "_[" not in line:
            bad(no, "not a record `<audio path>.wav_[<multi-hot vector>]`")
            continue
        raw.append((no, [line]))
    if raw and is_open(raw[-1][1]):
        bad(raw[-1][0], "record is not terminated: its label vector has no closing ']' (file truncated?)")
        raw.pop()

    seen: dict[str, int] = {}
    for no, chunks in raw:
        text = chunks[0].rstrip() + "".join(" " + c.strip() for c in chunks[1:])
        m = _RECORD.match(text)
        if not m:
            bad(no, "not a record `<audio path>.wav_[<multi-hot vector>]`")
            continue
        try:
            values = parse_vector(m.group("vec"))
        except ValueError:
            bad(no, f"label vector [{m.group('vec').strip()[:60]}] holds a value that is not a number")
            continue
        if width is not None and len(values) != width:
            bad(no, f"label vector has {len(values)} entries, expected {width}")
            continue
        if any(v not in (0.0, 1.0) for v in values):
            bad(no, "label vector must be multi-hot (only 0 and 1)")
            continue
        p = m.group("path").strip()
        if p in seen:
            bad(no, f"{p} is listed twice in this file (first at line {seen[p]})")
            continue
        seen[p] = no
        records.append(Record(p, np.asarray(values, dtype=np.uint8), f"{path}:{no}"))
    if not records:
        raise DatasetError(f"{path}: no records found; every phase file needs at least one `<path>.wav_[...]` record")
    return records, skipped


def format_record(path: str, labels) -> str:
    """A record exactly as the reference writes it: the path, '_', then numpy's str() of a float vector."""
    return f"{path}_{np.asarray(labels, dtype=np.float64)}"


# ----------------------------------------------------------------------------- phase sets
@dataclass
class PhaseSet:
    """The parsed protocol: per phase, train records (new-class labels) and cumulative test records."""

    class_names: list[str]
    phase_sizes: tuple[int, ...]
    train: list[list[Record]]
    test: list[list[Record]]
    skipped: list[str] = field(default_factory=list)
    source: str = ""

    @property
    def num_phases(self) -> int:
        return len(self.phase_sizes)

    def bounds(self, t: int) -> tuple[int, int]:
        lo = sum(self.phase_sizes[:t])
        return lo, lo + self.phase_sizes[t]

    def audio_paths(self) -> list[str]:
        """Distinct recorded paths in order of first appearance (train files first)."""
        out: dict[str, None] = {}
        for recs in self.train + self.test:
            for r in recs:
                out.setdefault(r.path, None)
        return list(out)

    def first_listing(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for recs in self.train + self.test:
            for r in recs:
                out.setdefault(r.path, r.where)
        return out

    def drop(self, paths: set[str], reason: str) -> None:
        """Remove every record of `paths`, listing each removal."""
        for group in (self.train, self.test):
            for t, recs in enumerate(group):
                keep = []
                for r in recs:
                    if r.path in paths:
                        self.skipped.append(f"{r.where}: {r.path}: {reason}")
                    else:
                        keep.append(r)
                group[t] = keep

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps({"classes": self.class_names, "phases": list(self.phase_sizes)}).encode())
        for name, group in (("train", self.train), ("test", self.test)):
            for t, recs in enumerate(group):
                h.update(f"{name}{t}".encode())
                for r in recs:
                    h.update(r.path.encode() + b"\0" + r.labels.tobytes())
        return h.hexdigest()


def check_widths(ps: PhaseSet) -> None:
    for t in range(ps.num_phases):
        if not ps.train[t]:
            raise DatasetError(f"{ps.source}: train phase {t} has no usable record left")
        if not ps.test[t]:
            raise DatasetError(f"{ps.source}: test phase {t} has no usable record left")


class MultiLabelTable(SampleTable):
    """Store rows of a multi-label dataset: labels live in the phase files, so `labels` is -1."""

    def validate(self, source: str) -> None:
        if len(set(self.ids)) != len(self.ids):
            raise DatasetError(f"{source}: duplicate audio paths")
        bad = sorted(set(self.splits.tolist()) - {"train", "test"})
        if bad:
            raise DatasetError(f"{source}: unknown split name(s) {bad}")


# ----------------------------------------------------------------------------- adapters
class MultiLabelAdapter(DatasetAdapter):
    """Common part: options, path resolution, the log-mel store. Subclasses parse their source."""

    suites = (SUITE,)
    modalities = ("audio",)
    views = ("logmel",)
    class_names: tuple[str, ...] = ()
    phase_sizes: tuple[int, ...] = PHASE_SIZES
    EXTRACT_VERSION = 1

    def __init__(self, frontend: LogMelConfig | None = None, batch_size: int = 32, workers: int | None = None):
        self.frontend = frontend or LogMelConfig()
        self.batch_size = batch_size
        self.workers = workers if workers is not None else min(4, os.cpu_count() or 1)
        self.overrides: dict = {}  # from configure() (run_all --audio-root), over dataset.yaml
        self._cache: dict = {}

    # -- options -------------------------------------------------------------------------
    def configure(self, **options) -> None:
        """Runtime options over dataset.yaml: audio_root, path_prefix, skip_bad (None = unset)."""
        self.overrides.update({k: v for k, v in options.items() if v is not None})
        self._cache.clear()

    def folder(self, data_root: Path) -> Path:
        return Path(data_root) / self.name

    def options(self, data_root: Path) -> dict:
        opts = {"audio_root": None, "path_prefix": None, "skip_bad": False}
        cfg = self.folder(data_root) / "dataset.yaml"
        if cfg.is_file():
            opts.update(read_yaml(cfg, "fix the file (see README)", mapping="audio_root, path_prefix, skip_bad, ..."))
        opts.update(self.overrides)
        return opts

    def protocols(self) -> list[ProtocolSpec]:
        k = self.phase_sizes
        name = f"{k[0]}+{k[1]}x{len(k) - 1}" if len(set(k[1:])) == 1 and len(k) > 1 else "+".join(map(str, k))
        return [ProtocolSpec(name, tuple(k), 0)]

    # -- the phase set ----------------------------------------------------------------------
    def parse(self, data_root: Path, opts: dict) -> PhaseSet:
        raise NotImplementedError

    def resolver(self, data_root: Path, ps: PhaseSet, opts: dict):
        """recorded path -> file to read (see the module docstring)."""
        root = opts.get("audio_root")
        base = self.folder(data_root)
        if not root:
            return lambda p: Path(p) if os.path.isabs(p) else base / p
        root = Path(root).expanduser()
        prefix = opts.get("path_prefix")
        if prefix is None:
            absolute = [os.path.dirname(p) for p in ps.audio_paths() if os.path.isabs(p)]
            prefix = os.path.commonpath(absolute) if absolute else "/"

        def resolve(p: str) -> Path:
            if not os.path.isabs(p):
                return root / p
            rel = os.path.relpath(p, prefix)
            if rel.startswith(".."):
                raise DatasetError(
                    f"{p}: does not lie under the path prefix {prefix!r}; fix path_prefix in dataset.yaml"
                )
            return root / rel

        return resolve

    def phase_set(self, data_root: Path) -> tuple[PhaseSet, dict[str, Path]]:
        """Parsed, validated phase set plus recorded path -> file; missing audio is an error (or skipped)."""
        opts = self.options(data_root)
        key = (str(data_root), json.dumps(opts, sort_keys=True, default=str))
        if key in self._cache:
            return self._cache[key]
        ps = self.parse(data_root, opts)
        resolve = self.resolver(data_root, ps, opts)
        files = {p: resolve(p) for p in ps.audio_paths()}
        missing = [p for p, f in files.items() if not f.is_file()]
        if missing:
            where = ps.first_listing()
            if not opts.get("skip_bad"):
                hint = (
                    ""
                    if opts.get("audio_root")
                    else " (paths from another machine: pass --audio-root or set audio_root in dataset.yaml)"
                )
                raise DatasetError(
                    f"{where[missing[0]]}: audio file {files[missing[0]]} not "
                    f"found{hint}; {len(missing)} of {len(files)} listed files are "
                    "missing. Put the wavs there, or set skip_bad: true "
                    "in dataset.yaml to skip the records that name them"
                )
            ps.drop(set(missing), "audio file not found")
            for p in missing:
                files.pop(p)
        check_widths(ps)
        self._cache[key] = (ps, files)
        return ps, files

    # -- the store --------------------------------------------------------------------------
    def store_key(self, ps: PhaseSet) -> dict:
        ids = hashlib.sha256("\n".join(ps.audio_paths()).encode()).hexdigest()
        return {
            "dataset": self.name,
            "ids": ids,
            "frontend": self.frontend.to_json(),
            "extract_version": self.EXTRACT_VERSION,
        }

    def store_path(self, data_root: Path, ps: PhaseSet) -> Path:
        return Path(data_root) / "cache" / "store" / f"{self.name}-{config_hash(self.store_key(ps))}"

    def open(self, data_root: Path, progress: bool = True) -> FeatureStore:
        ps, files = self.phase_set(data_root)
        path = self.store_path(data_root, ps)
        if (path / "manifest.json").is_file():
            return FeatureStore(path)
        return self._extract(data_root, ps, files, path, progress)

    def _extract(
        self, data_root: Path, ps: PhaseSet, files: dict[str, Path], path: Path, progress: bool
    ) -> FeatureStore:
        from tqdm import tqdm

        ids = ps.audio_paths()
        in_train = {r.path for recs in ps.train for r in recs}
        table = MultiLabelTable(
            ids,
            np.full(len(ids), -1),
            np.array(["train" if i in in_train else "test" for i in ids]),
            list(ps.class_names),
        )
        meta = {
            "dataset": self.name,
            "pretrained": None,
            "frontend": self.frontend.to_json(),
            "encoders": {"note": "no encoder: the view is the log-mel front-end output, the model is trained on it"},
        }
        writer = StoreWriter(path, table, [ViewSpec("logmel", self.frontend.shape)], meta, ps.source)
        bad_file = writer.partial / "bad_rows.json"
        bad: dict[str, str] = json.loads(bad_file.read_text()) if bad_file.is_file() else {}
        skip_bad = bool(self.options(data_root).get("skip_bad"))
        where = ps.first_listing()
        front = LogMel(self.frontend)
        start = writer.filled["logmel"]
        bar = tqdm(
            total=len(ids), initial=start, desc=f"{self.title}: log-mel features", disable=not progress, unit="clip"
        )
        t0 = time.time()

        def load(i: int):
            try:
                return load_wave(files[ids[i]], self.frontend, where=where[ids[i]]), None
            except DatasetError as e:
                if not skip_bad:
                    raise
                return np.zeros(self.frontend.samples, dtype=np.float32), str(e)

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for lo in range(start, len(ids), self.batch_size):
                idx = list(range(lo, min(lo + self.batch_size, len(ids))))
                loaded = list(pool.map(load, idx))
                feats = logmel_of_waves(np.stack([w for w, _ in loaded]), front)
                for i, (_, err) in zip(idx, loaded):
                    if err is not None:
                        bad[ids[i]] = err
                        feats[i - lo] = 0
                if any(err for _, err in loaded):
                    atomic_write_text(bad_file, json.dumps(bad))
                writer.write("logmel", lo, feats)
                bar.update(len(idx))
        bar.close()
        writer.add_meta(extract_seconds=round(time.time() - t0, 1), bad_audio=bad)
        return writer.finalize()

    def bad_audio(self, store: FeatureStore) -> dict[str, str]:
        return dict(store.meta.get("bad_audio") or {})


class PhaseFileAdapter(MultiLabelAdapter):
    """A dataset given as the reference's phase text files in `<data_root>/<name>/phases/`."""

    instructions = ""

    def phase_dir(self, data_root: Path) -> Path:
        return self.folder(data_root) / "phases"

    def availability(self, data_root: Path) -> Availability:
        d = self.phase_dir(data_root)
        names = phase_file_names(len(self.phase_sizes))
        missing = [n for n in names if not (d / n).is_file()]
        if not missing:
            return Availability(True, f"phase files in {d}")
        return Availability(False, self._missing_message(d, missing))

    def _missing_message(self, d: Path, missing: list[str]) -> str:
        return (
            f"phase files missing in {d}: {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}\n"
            f"1. Put the reference's phase files there: {', '.join(phase_file_names(len(self.phase_sizes)))}\n"
            "   (records `<wav path>_[<numpy-printed multi-hot vector>]`; "
            "train_phase_0 has 30-dim labels, train_phase_1..4\n"
            "   5-dim new-class labels, test_phase_0[_1[_2...]] the cumulative 30..50-dim labels).\n"
            f"2. {self.instructions}\n"
            "3. If the files hold absolute paths of another machine, "
            "pass --audio-root DIR (or write `audio_root: DIR` in\n"
            f"   {d.parent / 'dataset.yaml'}): the part of each path after "
            "the directory common to all records is read under DIR.\n"
            "   Relative paths are read under DIR, or under the dataset folder without one.\n"
            "4. Optional in dataset.yaml: `path_prefix: /old/prefix` "
            "(the part to replace), `skip_bad: true` (skip and list\n"
            "   malformed records and missing or unreadable wavs instead of stopping).\n"
            "Log-mel features (32 kHz, 10 s, 1001 x 64) are then computed once into data/cache/store/."
        )

    def parse(self, data_root: Path, opts: dict) -> PhaseSet:
        d = self.phase_dir(data_root)
        skip = bool(opts.get("skip_bad"))
        train, test, skipped = [], [], []
        seen = 0
        for t, k in enumerate(self.phase_sizes):
            seen += k
            recs, sk = parse_phase_file(d / train_phase_file(t), k, skip)
            train.append(recs)
            skipped += sk
            recs, sk = parse_phase_file(d / cumulative_test_file(t), seen, skip)
            test.append(recs)
            skipped += sk
        return PhaseSet(list(self.class_names), tuple(self.phase_sizes), train, test, skipped, str(d))


class AudioSet50(PhaseFileAdapter):
    name = "audioset50"
    title = "AudioSet-50 (strong labels, 30+5x4)"
    class_names = AUDIOSET50_CLASSES
    instructions = (
        "Put the 10 s wavs of temporally-strong AudioSet (95,645 development and 15,289 evaluation excerpts,\n"
        "   `Y<YouTubeID>_<start_ms>.wav`) where the records point (or under --audio-root, see 3.)."
    )


class FSD50K50(PhaseFileAdapter):
    name = "fsd50k50"
    title = "FSD50K-50 (30+5x4)"
    class_names = FSD50K50_CLASSES
    instructions = (
        "Put the FSD50K excerpt wavs where the records point (or under --audio-root, see 3.). Clips are padded\n"
        "   or truncated to 10 s, as the reference loader does (1 s excerpts are zero-padded)."
    )


class CsvManifest(MultiLabelAdapter):
    """A user-built dataset: `manifest.csv` (path, labels, split) + `classes.txt` in `<data_root>/ml_csv/`.

    manifest.csv has a header with the columns `path`, `labels` (class names separated by ';')
    and `split` (`train` or `test`; `val` rows are ignored and listed: no model selection).
    classes.txt lists the class names in label order, one a line; the first `base_classes` (30)
    are phase 0, then phases of `classes_per_phase` (5), set in dataset.yaml. Phase files are
    derived as the reference's are described: train phase t holds the train clips carrying a
    class of phase t, labelled on phase t's classes only; test phase t holds the test clips
    carrying any class seen by phase t, labelled on all seen classes.
    """

    name = "ml_csv"
    title = "CSV manifest (multi-label)"

    def phase_sizes_for(self, n: int, opts: dict, source: Path) -> tuple[int, ...]:
        base, per = int(opts.get("base_classes", 30)), int(opts.get("classes_per_phase", 5))
        if base <= 0 or per <= 0 or base > n or (n - base) % per:
            raise DatasetError(
                f"{source}: {n} classes do not split into {base} base classes and phases of {per}; "
                "set base_classes and classes_per_phase in dataset.yaml"
            )
        return (base,) + (per,) * ((n - base) // per)

    def availability(self, data_root: Path) -> Availability:
        d = self.folder(data_root)
        if (d / "manifest.csv").is_file() and (d / "classes.txt").is_file():
            return Availability(True, f"manifest in {d}")
        return Availability(
            False,
            (
                f"no manifest in {d}\n"
                f"Put {d / 'manifest.csv'} (header `path,labels,split`; "
                "labels: class names separated by ';'; split: train or test)\n"
                f"and {d / 'classes.txt'} (class names in label order, one a "
                f"line). Optional {d / 'dataset.yaml'}: base_classes (30),\n"
                "classes_per_phase (5), audio_root, path_prefix, skip_bad. "
                "Relative paths are read under the folder (or audio_root)."
            ),
        )

    def parse(self, data_root: Path, opts: dict) -> PhaseSet:
        d = self.folder(data_root)
        classes = [c.strip() for c in (d / "classes.txt").read_text(encoding="utf-8").splitlines() if c.strip()]
        if len(set(classes)) != len(classes):
            raise DatasetError(f"{d / 'classes.txt'}: a class name is listed twice")
        index = {c: i for i, c in enumerate(classes)}
        sizes = self.phase_sizes_for(len(classes), opts, d / "classes.txt")
        skip = bool(opts.get("skip_bad"))
        skipped: list[str] = []
        clips: dict[str, list[tuple[str, np.ndarray, str]]] = {"train": [], "test": []}
        src = d / "manifest.csv"
        with open(src, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"path", "labels", "split"} <= set(reader.fieldnames):
                raise DatasetError(
                    f"{src}: the header must name the columns path, labels, split (got {reader.fieldnames})"
                )
            seen_paths: set[str] = set()
            for no, row in enumerate(reader, 2):
                where = f"{src}:{no}"
                split = (row["split"] or "").strip()
                names = [n.strip() for n in (row["labels"] or "").split(";") if n.strip()]
                path = (row["path"] or "").strip()
                problem = None
                if split == "val":
                    skipped.append(f"{where}: val row ignored (no validation split: the last-epoch model is evaluated)")
                    continue
                if split not in ("train", "test"):
                    problem = f"split {split!r} is not train or test"
                elif not path:
                    problem = "empty path"
                elif path in seen_paths:
                    problem = f"{path} is listed twice"
                elif unknown := [n for n in names if n not in index]:
                    problem = f"unknown class name(s) {unknown} (not in classes.txt)"
                if problem:
                    if not skip:
                        raise DatasetError(
                            f"{where}: {problem}; fix the row, or set skip_bad: true in {d / 'dataset.yaml'}"
                        )
                    skipped.append(f"{where}: {problem}")
                    continue
                seen_paths.add(path)
                y = np.zeros(len(classes), dtype=np.uint8)
                y[[index[n] for n in names]] = 1
                clips[split].append((path, y, where))
        train, test = [], []
        lo = 0
        for k in sizes:
            hi = lo + k
            train.append([Record(p, y[lo:hi], w) for p, y, w in clips["train"] if y[lo:hi].any()])
            test.append([Record(p, y[:hi], w) for p, y, w in clips["test"] if y[:hi].any()])
            lo = hi
        return PhaseSet(classes, sizes, train, test, skipped, str(src))

    def phase_set(self, data_root: Path):
        # the class list and phase sizes come from the files: expose them on the adapter too
        ps, files = super().phase_set(data_root)
        self.class_names, self.phase_sizes = tuple(ps.class_names), tuple(ps.phase_sizes)
        return ps, files

    def protocols(self) -> list[ProtocolSpec]:
        return [ProtocolSpec("manifest", tuple(self.phase_sizes), 0)]


ADAPTERS = [AudioSet50(), FSD50K50(), CsvManifest()]


def configure(audio_roots: dict[str | None, str] | None = None) -> None:
    """Apply `run_all --audio-root [DATASET=]DIR` to the registered multi-label adapters."""
    from datasets import registry

    for name, adapter in registry().items():
        if not isinstance(adapter, MultiLabelAdapter) or not audio_roots:
            continue
        root = audio_roots.get(name, audio_roots.get(None))
        if root is not None:
            adapter.configure(audio_root=str(root))
