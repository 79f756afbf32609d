"""Result records: one JSON file per grid cell, written atomically.

Path: `<results_dir>/<suite>/<dataset>/<protocol>/<method>/<modality>/seed<k>.json` for a run of the
method's own config. A run with command-line settings (`--epochs`, `--set KEY=VALUE`, `--precision`, where
they change the method's config) is filed one folder deeper, `<modality>/<settings folder>/seed<k>.json`
(`settings_folder`), so it never overwrites the default run's record and both stay.
A failed cell writes `seed<k>.error.json` beside it instead (and never a partial record);
a later success removes the error file.

Schema (version 1):

    schema: 1
    suite, cell: {dataset, protocol, method, modality, seed}
    cell_key: hash(resolved config, stream hash): a re-run skips a cell whose record has it
    config: the resolved method config (epochs, lr, batch sizes, memory, ...)
    reference_protocol: false when --epochs overrode the method's epochs
    settings: {key: value} the run changed in the method's own config (`run_settings`); absent or {} = none
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

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

from datasets.io import atomic_write_text

SCHEMA = 1

#: command-line values that are no run setting: `random_encoders` only permits random encoders where no weights are
#: given (the leaderboard marks random encoders from the record's `encoders`), it changes no method value
NOT_SETTINGS = ("random_encoders",)


def run_settings(own: Mapping, resolved: Mapping, epochs=None) -> dict:
    """What a run changed in a method's own config: {key: value} of every resolved value that differs from (or is
    absent in) `own`, the config without command-line values; `epochs` (--epochs) always, since the record marks any
    --epochs run as outside the reference protocol. {} = the method's default configuration."""
    settings = {
        k: resolved[k] for k in sorted(resolved) if k not in NOT_SETTINGS and (k not in own or own[k] != resolved[k])
    }
    if epochs is not None:
        settings["epochs"] = epochs
    return dict(sorted(settings.items()))


def settings_label(settings: Mapping | None) -> str:
    """`key=value, key=value` (sorted by key; strings as they are, other values as JSON); "" for none. The
    leaderboard's and the CSV's text, and the readable part of the settings folder."""

    def text(v) -> str:
        return v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)

    return ", ".join(f"{k}={text(v)}" for k, v in sorted((settings or {}).items()))


def settings_folder(settings: Mapping | None) -> str:
    """The folder of a run with settings: `set-<readable part>-<hash>`; "" for none. The readable part keeps
    letters, digits and `._=,-` (at most 60 characters); the hash of the full settings keeps two different runs
    apart even when their readable parts agree (long paths, characters replaced)."""
    if not settings:
        return ""
    label = settings_label(settings)
    readable = re.sub(r"[^A-Za-z0-9._=,-]+", "-", label.replace(", ", ",")).strip("-.")[:60]
    digest = hashlib.sha256(json.dumps(dict(settings), sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"set-{readable}-{digest}"


def record_path(
    results_dir: Path,
    suite: str,
    dataset: str,
    protocol: str,
    method: str,
    modality: str,
    seed: int,
    settings: Mapping | None = None,
) -> Path:
    """Where a cell's record lives; a run with settings in its own folder below the default run's (module doc)."""
    folder = Path(results_dir) / suite / dataset / protocol / method / modality
    if settings:
        folder = folder / settings_folder(settings)
    return folder / f"seed{seed}.json"


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
