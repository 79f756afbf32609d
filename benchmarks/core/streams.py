"""Class-incremental streams: Avalanche benchmarks over sample ids and targets only.

The stream of a (dataset, protocol) pair is built once and shared by every method. Its
datasets hold store rows and class-order positions (the model's class index), never
features; methods gather views from the store. The stream's content hash (protocol plus
the sorted sample ids of every step and split) goes into every result record.

Avalanche 0.6.0 pitfalls handled here (see ../shared/reference/cil_toolboxes.md 2.2):
- `class_incremental_benchmark(num_experiences=...)` silently drops remainder classes:
  we always pass the explicit `num_classes_per_exp` and check the result.
- stock strategies/plugins need task labels: datasets are task-aware with task label 0.
- labels must be contiguous from 0: targets are class-order positions.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import torch

from benchmarks.core.protocols import Protocol
from datasets.base import SPLITS
from datasets.errors import DatasetError
from datasets.store import FeatureStore


class IdDataset(torch.utils.data.Dataset):
    """Items are (store row, target position); `.targets` lets Avalanche split by class."""

    def __init__(self, rows: np.ndarray, targets: np.ndarray):
        self.rows = torch.as_tensor(rows, dtype=torch.long)
        self.targets = [int(t) for t in targets]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i], self.targets[i]


def experience_rows(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, targets) of an Avalanche experience dataset, read once per experience."""
    if len(dataset) == 0:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    items = [dataset[i] for i in range(len(dataset))]
    rows = torch.stack([torch.as_tensor(it[0]) for it in items]).long()
    targets = torch.tensor([int(it[1]) for it in items], dtype=torch.long)
    return rows, targets


@dataclass
class CILStream:
    """An Avalanche class-incremental benchmark plus the row/target tensors of each step."""

    dataset: str
    protocol: Protocol
    benchmark: object
    steps: dict[str, list[tuple[torch.Tensor, torch.Tensor]]]  # split -> per step (rows, targets)
    hash: str
    class_names: list[str]

    @property
    def num_steps(self) -> int:
        return self.protocol.num_steps

    def step(self, split: str, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.steps[split][t]

    def seen(self, split: str, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows and targets of all classes of steps 0..t."""
        parts = self.steps[split][: t + 1]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def counts(self) -> dict[str, list[int]]:
        return {s: [len(r) for r, _ in self.steps[s]] for s in SPLITS}

    def describe(self) -> dict:
        return {
            "hash": self.hash,
            **self.protocol.to_json(),
            "class_names": [self.class_names[c] for c in self.protocol.class_order],
            "counts": self.counts(),
        }


def build_stream(store: FeatureStore, protocol: Protocol) -> CILStream:
    from avalanche.benchmarks import class_incremental_benchmark
    from avalanche.benchmarks.utils import _make_taskaware_classification_dataset

    n_classes = len(store.class_names)
    bad = [c for c in protocol.class_order if not 0 <= c < n_classes]
    if bad:
        raise DatasetError(
            f"protocol {protocol.name}: class indices {bad} do not exist in {store.dataset} ({n_classes} classes, "
            "store "
            f"{store.path}); fix the protocol's class_order (the dataset adapter's protocols(), or its folder's "
            f"protocol.yaml) to list only indices 0..{n_classes - 1}"
        )
    position = np.full(n_classes, -1, dtype=np.int64)
    position[list(protocol.class_order)] = np.arange(protocol.num_classes)
    split_sets = {}
    for split in SPLITS:
        rows = store.rows(split, classes=protocol.class_order)
        targets = position[store.labels[rows]]
        counts = np.bincount(targets, minlength=protocol.num_classes)
        if (counts == 0).any():
            empty = [store.class_names[protocol.class_order[p]] for p in np.flatnonzero(counts == 0)]
            raise DatasetError(
                f"{store.path}: class(es) {empty} have no {split} samples; every class in the protocol needs train, "
                "val and test samples"
            )
        split_sets[split] = _make_taskaware_classification_dataset(IdDataset(rows, targets), task_labels=0)
    bm = class_incremental_benchmark(
        split_sets, class_order=list(range(protocol.num_classes)), num_classes_per_exp=list(protocol.classes_per_step)
    )
    steps: dict[str, list] = {}
    for split in SPLITS:
        stream = getattr(bm, f"{split}_stream")
        per_step = [experience_rows(exp.dataset) for exp in stream]
        if len(per_step) != protocol.num_steps:
            raise RuntimeError(f"avalanche built {len(per_step)} experiences for {protocol.num_steps} steps")
        for t, (_, targets) in enumerate(per_step):
            lo, hi = protocol.step_bounds(t)
            if len(targets) and (targets.min() < lo or targets.max() >= hi or len(torch.unique(targets)) != hi - lo):
                raise RuntimeError(f"avalanche experience {t} of {split} does not hold exactly classes [{lo}, {hi})")
        steps[split] = per_step
    content = {
        "dataset": store.dataset,
        "protocol": protocol.to_json(),
        "steps": {s: [sorted(store.ids[i] for i in rows.tolist()) for rows, _ in steps[s]] for s in SPLITS},
    }
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    return CILStream(store.dataset, protocol, bm, steps, digest, list(store.class_names))
