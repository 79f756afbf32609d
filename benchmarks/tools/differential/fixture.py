"""A synthetic dataset in the AV-CIL reference's on-disk layout (the released-feature layout).

The layout and file names are the ones the harness's import reads (`datasets.adapters.avcil_features`:
`DICT_FILES`, `AUDIO_FILE`, `VISUAL_DICT`); the reference's dataloaders read the same files from
`data/<folder>/` (e.g. `fine_tuning/dataloader_incremental_fine_tuning.py:15-31`). The reference's model fixes
the feature width at 768 and the temporal slots at 8 (`model/audio_visual_model_incremental.py:16-23, 77`), so
only the number of spatial tokens per slot (`tokens`) and the number of clips are free.

Each class c has an audio mean and a visual mean (Gaussian, scales `audio_signal`, `visual_signal`); a clip is
its class means plus unit Gaussian noise. The visual class signal sits on ONE token per temporal slot (a random
position per clip and slot), so mean pooling dilutes it by 1/`tokens` and the audio-guided attention has
something to find. Values are rounded to float16-representable numbers: the harness's store keeps features in
float16, so both sides then read bit-identical inputs and the data type is not a difference between them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from datasets.adapters import avcil_features as av
from datasets.base import SPLITS

FEATURE_DIM = 768  # Linear(768, 768) in the reference model: the width is not a parameter there
TEMPORAL_SLOTS = 8  # visual.view(B, 8, -1, 768) in the reference model


@dataclass(frozen=True)
class FixtureSpec:
    dataset: str = "ave"  # harness name (datasets.adapters.avcil_features.INFOS): fixes classes and steps
    train_per_class: int = 20
    val_per_class: int = 5
    test_per_class: int = 10
    tokens: int = 4  # spatial tokens per temporal slot (the release has 14 x 14 = 196)
    audio_signal: float = 0.2
    visual_signal: float = 0.15
    seed: int = 0

    def per_split(self) -> dict[str, int]:
        return {"train": self.train_per_class, "val": self.val_per_class, "test": self.test_per_class}

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


SIZES = {
    # 28 classes x (10 train, 3 val, 4 test), 2 tokens: seconds per cell; the end-to-end test
    "tiny": FixtureSpec(train_per_class=10, val_per_class=3, test_per_class=4, tokens=2),
    # 28 classes x (20, 5, 10), 4 tokens: an audio-visual run takes 2-8 min on one shared CPU core
    "small": FixtureSpec(),
    # 28 classes x (60, 10, 14), 8 tokens: closer to AVE's per-class counts (~118 train, 14 val, 14 test)
    "medium": FixtureSpec(train_per_class=60, val_per_class=10, test_per_class=14, tokens=8),
}


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def write_source(spec: FixtureSpec, src: Path) -> Path:
    """Write `src/<folder>/` in the released layout; return that folder."""
    info = av.dataset_info(spec.dataset)
    rng = np.random.default_rng(spec.seed)
    folder = Path(src) / info.folder
    (folder / "audio_pretrained_feature").mkdir(parents=True, exist_ok=True)
    (folder / "visual_pretrained_feature").mkdir(parents=True, exist_ok=True)
    n, d = info.num_classes, FEATURE_DIM
    names = [f"class_{c:03d}" for c in range(n)]
    audio_means = rng.standard_normal((n, d)) * spec.audio_signal
    visual_means = rng.standard_normal((n, d)) * spec.visual_signal
    encode = {names[c]: c for c in range(n)}
    class_vids: dict[str, dict[int, list[str]]] = {s: {} for s in SPLITS}
    vid_class: dict[str, dict[str, str]] = {s: {} for s in SPLITS}
    audio, visual = {}, {}
    for split in SPLITS:
        for c in range(n):
            vids = [f"{split[:2]}{c:03d}x{k:04d}" for k in range(spec.per_split()[split])]
            class_vids[split][c] = vids
            for vid in vids:
                vid_class[split][vid] = names[c]
                audio[vid] = _f16(audio_means[c] + rng.standard_normal(d))
                tokens = rng.standard_normal((TEMPORAL_SLOTS, spec.tokens, d))
                where = rng.integers(spec.tokens, size=TEMPORAL_SLOTS)
                tokens[np.arange(TEMPORAL_SLOTS), where] += visual_means[c]
                visual[vid] = _f16(tokens.reshape(TEMPORAL_SLOTS * spec.tokens, d))
    for file, obj in zip(av.DICT_FILES, (encode, class_vids, vid_class)):
        np.save(folder / file, np.array(obj, dtype=object))
    np.save(folder / av.AUDIO_FILE, np.array(audio, dtype=object))
    np.save(folder / av.VISUAL_DICT, np.array(visual, dtype=object))
    (folder / "fixture.json").write_text(json.dumps(asdict(spec), indent=1))
    return folder


def build(spec: FixtureSpec, root: Path) -> dict:
    """The source folder (reference layout) and the harness store imported from it, under `root/<key>/`;
    reused when already built. Returns {"src", "folder", "data_root", "spec"}."""
    base = Path(root) / f"{spec.dataset}-{spec.key()}"
    src, data_root = base / "src", base / "data"
    folder = src / av.dataset_info(spec.dataset).folder
    done = base / "done.json"
    if not done.is_file():
        write_source(spec, src)
        code = av.main(
            [
                "import",
                "--src",
                str(src),
                "--dataset",
                spec.dataset,
                "--data-root",
                str(data_root),
                "--trust-pickle",  # these pickles were written just above, by this generator
                "--no-progress",
                "--force",
            ]
        )
        if code != 0:
            raise RuntimeError(f"importing the generated fixture {src} into {data_root} failed (exit {code})")
        done.write_text(json.dumps(asdict(spec)))
    return {"src": src, "folder": folder, "data_root": data_root, "spec": asdict(spec)}
