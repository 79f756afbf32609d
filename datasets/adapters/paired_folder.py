"""Paired image+audio datasets from a folder tree: the generic adapter, the base of ImageNet-ESC and miniARIC.

Why: image+audio+text methods (MCIL-AudioCLIP and the CLIP-style baselines) train on raw
images paired with raw audio clips, and the datasets they are evaluated on (ImageNet-ESC,
miniARIC, a user's own folder) are not videos but two folders of files. This adapter turns
such a tree into two feature stores the harness already knows how to read, once:

Layout (generic; `register_paired_folder` or `run_all.py --paired-folder PATH[=NAME]`):

    root/image/{train,test}/<class>/*.{jpg,jpeg,png}     any size, any mode (converted to RGB)
    root/image/val/<class>/...                           optional (else 10 % of train, datasets.adapters.paired_scan)
    root/audio/{train,test}/<class>/*.{wav,flac}         any rate / channel count ("split" audio layout)
      or root/audio/<class>.{wav,flac}                   one clip per class ("per-class" audio layout)
    root/protocol.yaml                                   the class-incremental protocol (or --paired-protocol)

protocol.yaml (or the same keys as a mapping: `register_paired_folder(protocol=...)`; the command
line's `--paired-protocol INITIAL,PER_STEP` gives only the two step sizes): `initial`, `per_step` and
optionally `name`, `class_order` / `class_order_file`, `memory`, `prompt_template`
(datasets.adapters.paired_protocol).

Class names are the image class folder names, sorted (label = position); the name put in
prompts is the folder name with `_` read as a space (subclasses give their own). Every class needs
images in every image split; an audio class folder without a matching image class, an image
class without any audio clip, a class without images in a split and an unreadable file are
each a DatasetError naming the file or folder and the fix.

The parts: `paired_scan` lists the files and checks the structure, `paired_protocol` reads the
protocol, `paired_build` checks and decodes the files (datasets.media) into the stores, and
`datasets.pairing.AudioPairing` pairs images with clips for training and evaluation.

Stores (under `<data_root>/cache/store/`, written with StoreWriter: batched, resumable after an
interruption, published atomically):

  `<name>-bank-<hash>`: the clip bank, rows = audio clips, label = class index, split = the
      clip's folder split (per-class layout: "train"), view `waveform` (L,) float16 mono in
      [-1, 1] at `sample_rate` (44.1 kHz default, ESC-50's and AudioCLIP's rate),
      L = sample_rate * clip_seconds (5 s default): channels averaged, polyphase-resampled
      (datasets.media.mix_resample) when the file's rate differs, centre-cropped when longer,
      zero-padded on both sides (centred) when shorter. A bank is no training set, so it is
      validated only for the splits every class has clips in (`required_splits`).
  `<name>-<hash>`: the image store, rows = images, view `clip_image` (3, S, S) float16: CLIP's eval
      transform (datasets.media.clip_image), so a CLIP tower sees what it was trained on. S = 224 for
      real datasets. With "fixed" pairing also the int32 view `audio_clip`: the bank row of each image.

Image store meta: dataset, audio_bank (the bank directory name, a sibling of the image store),
pairing ("fixed" | "class"), sample_rate, clip_samples, image_size, image_mean, image_std,
prompt_template, class_prompt_names, skipped ([{file, reason}]), plus val_split, audio_layout
and pairing_fallback (classes whose clips come from another split group, see datasets.pairing).

The store hashes cover the file lists with sizes and mtimes, the preprocessing parameters, the
prompts and the skip list, so editing, adding or fixing a file builds a new store.

Bad files: without skip_bad the first bad file stops the run with its name; with skip_bad
(constructor, `run_all.py --skip-bad`, or PAIRED_SKIP_BAD=1) bad files are left out, logged and
listed in meta["skipped"] (an image whose fixed audio partner is bad goes too). How they are found:
datasets.adapters.paired_build.

Once `python -m datasets.extraction.paired` has written a frozen-encoder features store for the
image store, `open` returns that store instead (views `audio`, `visual` plus the linked raw views;
datasets.paired_stores finds it).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from datasets.adapters.paired_build import (
    SKIP_ENV,
    SKIP_FIX,
    BadFiles,
    Plan,
    apply_skips,
    build_bank,
    build_images,
    check_coverage,
    check_files,
    files_key,
    save_check,
)
from datasets.adapters.paired_protocol import DEFAULT_TEMPLATE, parse_protocol
from datasets.adapters.paired_scan import AUDIO_EXTS, Scan, files, listing, scan_class_audio, scan_images, subdirs
from datasets.base import Availability, DatasetAdapter, ProtocolSpec
from datasets.errors import ConfigError, DatasetError
from datasets.io import config_hash, read_yaml
from datasets.media import CLIP_MEAN, CLIP_STD
from datasets.paired_stores import FEATURE_VIEWS, extraction_command, features_store_path
from datasets.store import FeatureStore

log = logging.getLogger(__name__)

PREPROCESS_VERSION = 2  # bump whenever preprocessing changes the stored views


def configure(skip_bad: bool | None = None) -> None:
    """`run_all --skip-bad`: the run-time `skip_bad` of every registered paired adapter not given one in its
    constructor (None: unset, the env var decides). Kept on the adapter objects, not as a module default, because
    the Ray and Slurm launchers send the adapters to their workers, which never run this."""
    from datasets import registry

    for adapter in registry().values():
        if isinstance(adapter, PairedFolderAdapter):
            adapter.run_skip_bad = skip_bad


class PairedFolderAdapter(DatasetAdapter):
    """A paired image+audio folder tree (see the module docstring); the base of ImageNet-ESC and miniARIC.

    Subclasses set `folder` (the tree is `<data_root>/<folder>`), `CLASSES` (the exact class
    folders), `PROMPT_NAMES`, `prompt_template` and `protocols()`, and may override
    `scan_audio` (miniARIC pairs files by name). The generic adapter is built with an absolute
    `root` and takes its protocol from `protocol` or `<root>/protocol.yaml`.
    """

    name = "paired_folder"
    title = "Paired folder"
    suites = ("audio-visual",)
    modalities = ("audio", "visual", "audio-visual")
    views = ("clip_image", "waveform")  # `waveform` lives in the clip bank: read it through AudioPairing
    folder: str = ""
    CLASSES: tuple[str, ...] | None = None  # None: any class folders
    PROMPT_NAMES: tuple[str, ...] | None = None
    user_protocol = True  # the protocol comes from `protocol` / protocol.yaml; subclasses with fixed ones set False

    def __init__(
        self,
        root: Path | None = None,
        name: str | None = None,
        *,
        protocol: dict | None = None,
        image_size: int = 224,
        sample_rate: int = 44100,
        clip_seconds: float = 5.0,
        skip_bad: bool | None = None,
        batch_size: int = 64,
        workers: int | None = None,
        title: str | None = None,
    ):
        #: the folder a user registered (run_all --paired-folder); None for a built-in dataset under the data root
        self.user_root = Path(root) if root is not None else None
        if name is not None:
            self.name = name
        if title is not None:
            self.title = title
        elif self.user_root is not None and name is not None and type(self) is PairedFolderAdapter:
            self.title = name
        self._protocol = protocol
        self.image_size, self.sample_rate, self.clip_seconds = int(image_size), int(sample_rate), float(clip_seconds)
        self.clip_samples = int(round(self.sample_rate * self.clip_seconds))
        self._skip_bad = skip_bad
        self.run_skip_bad: bool | None = None  # set by configure() (run_all --skip-bad)
        self.batch_size = batch_size
        self.workers = workers if workers is not None else min(2, os.cpu_count() or 1)
        self.report: dict = {}  # what the last open skipped / resampled

    # -- options -----------------------------------------------------------------------

    @property
    def skip_bad(self) -> bool:
        if self._skip_bad is not None:
            return self._skip_bad
        if self.run_skip_bad is not None:
            return self.run_skip_bad
        return os.environ.get(SKIP_ENV, "").strip().lower() in ("1", "true", "yes")

    def root(self, data_root: Path) -> Path:
        return self.user_root if self.user_root is not None else Path(data_root) / self.folder

    def store_dir(self, data_root: Path) -> Path:
        return Path(data_root) / "cache" / "store"

    def image_params(self) -> dict:
        return {
            "image_size": self.image_size,
            "resize": "shorter side to image_size, PIL bicubic (long side truncated, torchvision Resize)",
            "crop": "centre (torchvision CenterCrop rounding)",
            "convert": "RGB",
            "image_mean": CLIP_MEAN,
            "image_std": CLIP_STD,
        }

    def audio_params(self) -> dict:
        return {
            "sample_rate": self.sample_rate,
            "clip_seconds": self.clip_seconds,
            "clip_samples": self.clip_samples,
            "mono": "channel mean",
            "resample": "polyphase (scipy resample_poly) when the file's rate differs",
            "fit": "centre crop when longer, centred zero padding when shorter",
            "range": "clipped to [-1, 1]",
        }

    # -- classes, prompts, protocol ----------------------------------------------------

    def class_names_hint(self, data_root: Path | None = None) -> list[str]:
        """The class list without a full scan: CLASSES, or the image/train class folders."""
        if self.CLASSES is not None:
            return sorted(self.CLASSES)
        if self.user_root is None and data_root is None:
            return []
        return subdirs(self.root(data_root) / "image" / "train")

    def prompt_names(self, class_names: list[str]) -> list[str]:
        """The name put in prompts per class: PROMPT_NAMES, else the folder name with `_` as spaces."""
        if self.PROMPT_NAMES is not None:
            return list(self.PROMPT_NAMES)
        return [c.replace("_", " ") for c in class_names]

    @property
    def class_prompt_names(self) -> list[str]:
        return self.prompt_names(self.class_names_hint())

    def protocol_source(self) -> tuple[dict | None, str, Path | None]:
        """(the generic adapter's protocol mapping or None, where it came from, its folder)."""
        if self._protocol is not None:
            return dict(self._protocol), f"protocol of paired folder {self.name!r} (command line)", self.user_root
        if self.user_root is None:
            return None, "", None
        path = self.user_root / "protocol.yaml"
        if not path.is_file():
            return None, str(path), self.user_root
        data = read_yaml(path, "see `initial`, `per_step`, ... in datasets/adapters/paired_protocol.py")
        return data, str(path), self.user_root

    def _parsed_protocol(self) -> tuple[ProtocolSpec, str]:
        spec, source, base = self.protocol_source()
        if spec is None:
            raise DatasetError(
                f"a protocol: put {source or 'protocol.yaml'} next to the data (`initial: N`, "
                "`per_step: K`, ...) "
                "or pass --paired-protocol INITIAL,PER_STEP"
            )
        return parse_protocol(spec, self.class_names_hint(), source, base)

    @property
    def prompt_template(self) -> str:
        """The eval prompt with one `{}` (subclasses set a plain class attribute instead)."""
        try:
            return self._parsed_protocol()[1]
        except DatasetError:  # no or a bad protocol: availability reports it
            return DEFAULT_TEMPLATE

    def protocols(self) -> list[ProtocolSpec]:
        """The folder's protocol; none while it is missing or invalid (availability says why; --list must not fail)."""
        try:
            return [self._parsed_protocol()[0]]
        except DatasetError:
            return []

    # -- availability ------------------------------------------------------------------

    def layout_help(self, root: Path) -> str:
        return (
            f"  {root}/image/{{train,test}}/<class>/*.jpg|png (optional image/val/<class>/...; else 10 % of train "
            "becomes val)\n"
            f"  {root}/audio/{{train,test}}/<class>/*.wav|flac   or   {root}/audio/<class>.wav|flac (one clip per "
            "class)\n"
            f"  {root}/protocol.yaml with `initial: N` and `per_step: K` (optional: name, class_order, "
            "class_order_file, memory, "
            "prompt_template), or pass --paired-protocol N,K"
        )

    def missing_parts(self, data_root: Path) -> list[str]:
        root = self.root(data_root)
        if not root.is_dir():
            return [f"{root}/ (the dataset folder)"]
        missing = []
        for split in ("train", "test"):
            d = root / "image" / split
            if not d.is_dir():
                missing.append(f"{d}/ (image class folders)")
            elif not subdirs(d):
                missing.append(f"{d}/<class>/ (no class folder in it)")
        audio = root / "audio"
        if not audio.is_dir():
            missing.append(f"{audio}/ (audio clips)")
        elif not subdirs(audio) and not files(audio, AUDIO_EXTS):
            missing.append(f"{audio}/train/<class>/*.wav or {audio}/<class>.wav (the audio folder is empty)")
        return missing

    def availability(self, data_root: Path) -> Availability:
        root = self.root(data_root)
        missing = self.missing_parts(data_root)
        if not missing and self.user_protocol:
            try:
                self._parsed_protocol()
            except DatasetError as e:
                missing.append(str(e))
        if missing:
            who = self.title if self.title == self.name else f"{self.title} ({self.name})"
            return Availability(
                False, f"{who}: missing " + "; ".join(missing) + f"\n  Expected layout:\n{self.layout_help(root)}"
            )
        return Availability(
            True, f"{self.title} at {root} (stores built on first use under {self.store_dir(data_root)})"
        )

    # -- scanning ----------------------------------------------------------------------

    def scan(self, data_root: Path) -> Scan:
        """List every file, check the structure, pair images with clips (no decoding)."""
        root = self.root(data_root)
        class_names, images, val_split = self.scan_images(root)
        scan = self.scan_audio(root, class_names, images)
        scan.val_split = val_split
        return scan

    def scan_images(self, root: Path):
        """(class names, image items, how val was made): datasets.adapters.paired_scan.scan_images."""
        return scan_images(root, self.CLASSES, self.title)

    def scan_audio(self, root: Path, class_names: list[str], images: list) -> Scan:
        """ "class" pairing through the audio class folders (subclasses override: miniARIC pairs files by name)."""
        return scan_class_audio(root, class_names, images, self.CLASSES is not None, self.title)

    # -- bad files -----------------------------------------------------------------------

    def _check_path(self, data_root: Path) -> Path:
        return self.store_dir(data_root) / f"{self.name}-check.json"

    # -- planning ----------------------------------------------------------------------

    def plan(self, scan: Scan, bad: dict[str, str]) -> Plan:
        """Apply the skips (or raise), validate what is left, name the stores and their meta."""
        root = scan.root
        if bad and not self.skip_bad:
            first = sorted(bad)[0]
            raise DatasetError(
                f"{root / first}: {bad[first]}; {SKIP_FIX}\n  {len(bad)} bad file(s):\n"
                + listing(f"{root / r}: {why}" for r, why in sorted(bad.items()))
            )
        images, clips, image_clip, skipped_list = apply_skips(scan, bad)
        if skipped_list:
            log.warning(
                "%s: skipping %d file(s):\n%s",
                self.title,
                len(skipped_list),
                listing(f"{d['file']}: {d['reason']}" for d in skipped_list),
            )
        bank_required, fallback = check_coverage(scan, images, clips, len(skipped_list), self.title)
        names = scan.class_names
        prompt_names = self.prompt_names(names)
        template = self.prompt_template
        skip_rels = [d["file"] for d in skipped_list]
        stats = {it.rel: it.path.stat() for it in (*images, *clips)}
        bank_key = {
            "version": PREPROCESS_VERSION,
            "dataset": self.name,
            "class_names": names,
            "audio": self.audio_params(),
            "clips": [
                (it.id, it.rel, stats[it.rel].st_size, stats[it.rel].st_mtime_ns, it.label, it.split) for it in clips
            ],
            "skipped": skip_rels,
        }
        bank_name = f"{self.name}-bank-{config_hash(bank_key)}"
        image_key = {
            "version": PREPROCESS_VERSION,
            "dataset": self.name,
            "class_names": names,
            "image": self.image_params(),
            "images": [(it.id, stats[it.rel].st_size, stats[it.rel].st_mtime_ns, it.label, it.split) for it in images],
            "bank": bank_name,
            "pairing": scan.pairing,
            "audio_clip": None if image_clip is None else config_hash(image_clip.tolist()),
            "skipped": skip_rels,
            "prompt_template": template,
            "class_prompt_names": prompt_names,
            "val_split": scan.val_split,
        }
        image_name = f"{self.name}-{config_hash(image_key)}"
        common = {"sample_rate": self.sample_rate, "clip_samples": self.clip_samples, "clip_seconds": self.clip_seconds}
        audio_files = {it.rel for it in scan.clips}
        bank_meta = {
            "dataset": f"{self.name}:audio_bank",
            "role": "audio clip bank",
            "source": str(root),
            "audio_layout": scan.audio_layout,
            "preprocess": self.audio_params(),
            **common,
            "pretrained": None,
            "skipped": [d for d in skipped_list if d["file"] in audio_files],
        }
        image_meta = {
            "dataset": self.name,
            "source": str(root),
            "audio_bank": bank_name,
            "pairing": scan.pairing,
            **common,
            "image_size": self.image_size,
            "image_mean": list(CLIP_MEAN),
            "image_std": list(CLIP_STD),
            "prompt_template": template,
            "class_prompt_names": prompt_names,
            "skipped": skipped_list,
            "val_split": scan.val_split,
            "audio_layout": scan.audio_layout,
            "pairing_fallback": fallback,
            "preprocess": self.image_params(),
            "pretrained": None,
            **scan.notes,
            "note": "raw media views (CLIP-normalised image; waveforms in the audio bank); no encoder",
        }
        return Plan(
            scan,
            images,
            clips,
            image_clip,
            skipped_list,
            bank_name,
            image_name,
            bank_meta,
            image_meta,
            bank_required,
            fallback,
        )

    # -- open --------------------------------------------------------------------------

    def open(self, data_root: Path, progress: bool = True) -> FeatureStore:
        """The frozen-encoder features store over the image store when one was extracted for it
        (`python -m datasets.extraction.paired`: adds `audio`/`visual`, links the raw views), else the image store."""
        raw = self.open_raw(data_root, progress)
        features = features_store_path(self, data_root, raw)
        return FeatureStore(features) if features is not None else raw

    def available_views(self, data_root: Path) -> tuple[str, ...]:
        """The raw views, plus `audio`/`visual` once the features store exists (no scan, no build)."""
        return tuple(self.views) + (FEATURE_VIEWS if features_store_path(self, data_root) is not None else ())

    def missing_views_hint(self, data_root: Path, lacking: set[str]) -> str:
        """The frozen-encoder views (`audio`, `visual`) come from one extraction command."""
        return f"extract them with `{extraction_command(self, data_root)}`" if lacking <= set(FEATURE_VIEWS) else ""

    def open_raw(self, data_root: Path, progress: bool = True) -> FeatureStore:
        """The image store (its clip bank next to it), built first if needed. Needs the data, not the protocol."""
        missing = self.missing_parts(data_root)
        if missing:
            raise DatasetError(
                f"{self.title}: missing "
                + "; ".join(missing)
                + f"\n  Expected layout:\n{self.layout_help(self.root(data_root))}"
            )
        data_root = Path(data_root)
        scan = self.scan(data_root)
        key = files_key(scan)
        check_path = self._check_path(data_root)
        bad = check_files(check_path, scan, key, self.workers, self.title, progress)
        store_dir = self.store_dir(data_root)
        for _ in range(len(scan.images) + len(scan.clips) + 1):  # each round skips at least one more file
            plan = self.plan(scan, bad)
            bank_path, image_path = store_dir / plan.bank_name, store_dir / plan.image_name
            self.report = {"skipped": plan.skipped, "pairing_fallback": plan.fallback_classes}
            if (image_path / "manifest.json").is_file() and (bank_path / "manifest.json").is_file():
                return FeatureStore(image_path)
            try:
                if not (bank_path / "manifest.json").is_file():
                    build_bank(
                        plan,
                        bank_path,
                        self.sample_rate,
                        self.clip_samples,
                        self.title,
                        self.workers,
                        self.batch_size,
                        progress,
                    )
                return build_images(
                    plan,
                    image_path,
                    self.image_size,
                    CLIP_MEAN,
                    CLIP_STD,
                    self.title,
                    self.workers,
                    self.batch_size,
                    progress,
                )
            except BadFiles as e:
                # Header fine, data not (e.g. a truncated JPEG): remember it for this file list, then stop or skip it.
                # The half-built stores are keyed on the old file state and skip list, so they can never be resumed.
                for built in (bank_path, image_path):
                    shutil.rmtree(built.with_name(built.name + ".partial"), ignore_errors=True)
                bad = {**bad, **e.bad}
                save_check(check_path, key, bad)
        raise RuntimeError("unreachable: every file was skipped")


# ----------------------------------------------------------------------------- registration


def register_paired_folder(
    root: Path, name: str | None = None, protocol: dict | None = None, **options
) -> PairedFolderAdapter:
    """Register a user's paired image+audio folder as a dataset, so `run_all.py` can run on it.

    `name` defaults to the folder name (characters other than letters, digits, `_ . -` become
    `_`); `protocol` (a protocol.yaml-like mapping) takes precedence over `<root>/protocol.yaml`.
    `options` go to PairedFolderAdapter (image_size, sample_rate, clip_seconds, skip_bad, ...).
    """
    from datasets import register

    root = Path(root).expanduser()
    if name is None:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", root.resolve().name).strip("_") or "paired_folder"
    elif not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"paired folder name {name!r}: use letters, digits, _ . - only (it names stores and records)")
    adapter = PairedFolderAdapter(root, name, protocol=protocol, **options)
    register(adapter)
    return adapter


def parse_paired_protocol(value: str) -> dict:
    """`--paired-protocol "INITIAL,PER_STEP"` -> {"initial": INITIAL, "per_step": PER_STEP}."""
    parts = [p.strip() for p in str(value).split(",")]
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(f"--paired-protocol {value!r}: expected INITIAL,PER_STEP (two positive integers, e.g. 4,3)")
    return {"initial": int(parts[0]), "per_step": int(parts[1])}


ADAPTERS: list = []  # the generic adapter exists only per registered folder
