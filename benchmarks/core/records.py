"""Result records: one JSON file per grid cell, written atomically.

Path: `<results_dir>/<suite>/<dataset>/<protocol>/<method>/<modality>/seed<k>.json`.
A failed cell writes `seed<k>.error.json` beside it instead (and never a partial record);
a later success removes the error file.

Schema (version 1):

    schema: 1
    suite, cell: {dataset, protocol, method, modality, seed}
    cell_key: hash(resolved config, stream hash): a re-run skips a cell whose record has it
    config: the resolved method config (epochs, lr, batch sizes, memory, ...)
    reference_protocol: false when --epochs overrode the method's epochs
    stream: {hash, class_order, class_names, classes_per_step, memory, counts: {train, val, test}}
    results:
      selection: "best-val" (the leaderboard's numbers) ; R, A, test_counts, metrics
      last_epoch: {R, A, metrics}   (the last-epoch model of every step, for comparison)
      best_val_epoch: [epoch per step], val_acc: [best val accuracy per step]
    cost: {train_seconds, wall_seconds, peak_memory_mb, peak_memory_kind, parameters}
    encoders: the store's encoder metadata (pretrained or random, checkpoint hashes)
    environment: {python, packages, git_commit, device, torch_threads}
    seeds: {train_seed}
    created: ISO time
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from datasets.io import atomic_write_text

SCHEMA = 1


def record_path(
    results_dir: Path, suite: str, dataset: str, protocol: str, method: str, modality: str, seed: int
) -> Path:
    return Path(results_dir) / suite / dataset / protocol / method / modality / f"seed{seed}.json"


def error_path(path: Path) -> Path:
    return path.with_name(path.stem + ".error.json")


def load_record(path: Path) -> dict | None:
    """A finished record, or None if absent or unreadable (an unreadable one is re-run)."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return rec if rec.get("schema") == SCHEMA else None


def write_record(path: Path, record: dict) -> None:
    atomic_write_text(path, json.dumps({"schema": SCHEMA, **record}, indent=1, default=float))
    err = error_path(path)
    if err.exists():
        os.remove(err)


def write_error(path: Path, cell: dict, message: str) -> None:
    atomic_write_text(error_path(path), json.dumps({"schema": SCHEMA, "cell": cell, "error": message}, indent=1))


def iter_records(results_dir: Path, suite: str | None = None):
    """All finished records (and, separately, error records) under results_dir."""
    root = Path(results_dir) / suite if suite else Path(results_dir)
    for p in sorted(root.rglob("seed*.json")):
        if p.name.endswith(".error.json"):
            continue
        rec = load_record(p)
        if rec is not None:
            yield rec


def iter_errors(results_dir: Path, suite: str | None = None):
    root = Path(results_dir) / suite if suite else Path(results_dir)
    for p in sorted(root.rglob("seed*.error.json")):
        try:
            yield json.loads(p.read_text())
        except (OSError, ValueError):
            continue
