"""Shared fixtures: a tiny in-memory-sized feature store with class-clustered features."""

import numpy as np
import pytest

from benchmarks.core.protocols import Protocol
from datasets.base import SampleTable
from datasets.store import StoreWriter, ViewSpec


def toy_table(n_classes, per_split, class_name="class{}") -> SampleTable:
    """Rows c<k>-<split>-<i>: per_split = (train, val, test) samples of every class."""
    ids, labels, splits = [], [], []
    for c in range(n_classes):
        for split, n in zip(("train", "val", "test"), per_split):
            for i in range(n):
                ids.append(f"c{c}-{split}-{i}")
                labels.append(c)
                splits.append(split)
    return SampleTable(ids, np.array(labels), np.array(splits), [class_name.format(c) for c in range(n_classes)])


def make_toy_store(path, n_classes=6, per_split=(12, 4, 4), audio_dim=8, grid=(2, 3, 8), seed=0):
    """Gaussian class clusters in both views; enough signal for a few epochs to learn."""
    rng = np.random.default_rng(seed)
    table = toy_table(n_classes, per_split, "class{}")
    ids, labels = table.ids, table.labels
    audio_centres = rng.normal(size=(n_classes, audio_dim)) * 2
    visual_centres = rng.normal(size=(n_classes, grid[-1])) * 2
    labels = np.array(labels)
    audio = audio_centres[labels] + rng.normal(size=(len(ids), audio_dim))
    visual = visual_centres[labels][:, None, None, :] + rng.normal(size=(len(ids), *grid))
    w = StoreWriter(
        path,
        table,
        [ViewSpec("audio", (audio_dim,)), ViewSpec("visual", tuple(grid))],
        {"dataset": "toy", "pretrained": False},
        "toy",
    )
    w.write("audio", 0, audio)
    w.write("visual", 0, visual)
    return w.finalize()


@pytest.fixture
def toy_store(tmp_path):
    return make_toy_store(tmp_path / "store" / "toy")


@pytest.fixture
def toy_protocol():
    return Protocol("3x2", tuple(range(6)), (2, 2, 2), memory=12)


class ToyAdapter:
    """A registered-looking adapter over make_toy_store, for grid-level tests."""

    name, title, suites = "toy", "Toy", ("audio-visual",)
    modalities = ("audio", "visual", "audio-visual")
    views = ("audio", "visual")

    def availability(self, data_root):
        from datasets.base import Availability

        return Availability(True, "always present")

    def open(self, data_root, progress=True):
        from datasets.store import FeatureStore

        path = data_root / "toy-store"
        return FeatureStore(path) if path.exists() else make_toy_store(path)

    def protocols(self):
        from datasets.base import ProtocolSpec

        return [ProtocolSpec("3x2", (2, 2, 2), 12)]


class MissingAdapter(ToyAdapter):
    name, title = "absent", "Absent"

    def availability(self, data_root):
        from datasets.base import Availability

        return Availability(False, "put absent files in DATA/absent")


class ToyPairedAdapter(ToyAdapter):
    """A paired image + audio dataset (SynthAV-like raw views) for the raw-media methods."""

    name, title = "toy_paired", "Toy paired"
    views = ("clip_image", "waveform")

    def open(self, data_root, progress=True):
        from datasets.store import FeatureStore

        path = data_root / "toy-paired-store"
        return FeatureStore(path) if path.exists() else make_toy_paired_store(path)

    def protocols(self):
        from datasets.base import ProtocolSpec

        return [ProtocolSpec("3x2", (2, 2, 2), 0)]


@pytest.fixture
def toy_registry(monkeypatch):
    """Make the dataset registry hold only the toy (and a missing) adapter, plus a paired toy."""
    import benchmarks.run.grid
    import datasets

    adapters = {"toy": ToyAdapter(), "absent": MissingAdapter(), "toy_paired": ToyPairedAdapter()}
    monkeypatch.setattr(datasets, "registry", lambda: adapters)
    monkeypatch.setattr(benchmarks.run.grid, "dataset_registry", lambda: adapters)
    return adapters


def make_toy_paired_store(
    path, n_classes=6, per_split=(8, 2, 4), image_size=64, sample_rate=16000, seconds=0.5, seed=0
):
    """A paired image+audio store like SynthAV's raw views: colour-coded images, class-pitched tones,
    its own aligned `waveform` view (audio_bank "self")."""
    rng = np.random.default_rng(seed)
    table = toy_table(n_classes, per_split, "class_{}")
    ids, labels = table.ids, table.labels
    colours = rng.normal(size=(n_classes, 3, 1, 1))
    images = colours[labels] + 0.5 * rng.normal(size=(len(ids), 3, image_size, image_size))
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    waves = 0.3 * np.sin(2 * np.pi * (200 + 150 * labels[:, None]) * t) + 0.05 * rng.normal(size=(len(ids), len(t)))
    meta = {
        "dataset": "toy_paired",
        "pretrained": False,
        "audio_bank": "self",
        "pairing": "self",
        "sample_rate": sample_rate,
        "clip_samples": len(t),
        "image_size": image_size,
        "prompt_template": "a toy video of {}.",
        "class_prompt_names": [f"toy class {c}" for c in range(n_classes)],
    }
    w = StoreWriter(
        path, table, [ViewSpec("clip_image", (3, image_size, image_size)), ViewSpec("waveform", (len(t),))], meta, "toy"
    )
    w.write("clip_image", 0, images)
    w.write("waveform", 0, waves)
    return w.finalize()
