"""Result records -> flat rows: the CSV schema of both record kinds and what the tables and plots read.

Why one flat row per record: every later step (CSV, tables, plots) groups and averages rows, so the record's nesting
is read in exactly one place. A row holds the CSV columns plus underscored fields (R, A, curves, ...) that only the
tables and plots read; those never reach the CSV.

Two record kinds, told apart by `results.kind`: "single-label" (accuracy matrices, rows per method x modality, all
single-label suites in one results.csv) and "multilabel" (per-phase mAP / F1, rows per method x normalisation, one
results-<suite>.csv per suite). `KINDS` describes what differs between them; the rest is shared.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from benchmarks.core.method import FAMILIES
from benchmarks.core.records import iter_records, settings_label
from benchmarks.metrics import accuracy, mcil

SINGLE, MULTI = "single-label", "multilabel"
MODALITY_ORDER = ("audio", "visual", "audio-visual")
NORM_ORDER = ("bn", "gn", "cn")

#: single-label metric keys, in the records' order (the table and CSV column order)
METRICS = [m.key for m in accuracy.METRICS]
#: the MCIL-AudioCLIP metrics: a column only in tables where some row has them
MCIL_METRICS = [m.key for m in mcil.METRICS if m.key in ("mcil_m1", "mcil_m2")]
#: multi-label summaries in the full table (and first in the CSV)
ML_METRICS = [
    "avg_mAP",
    "avg_micro_f1",
    "avg_macro_f1",
    "final_mAP",
    "final_micro_f1",
    "final_macro_f1",
    "forgetting_macro_f1",
    "forgetting_mAP",
]
#: multi-label summaries only in the CSV
ML_CSV_EXTRA = [f"{p}_{m}" for p in ("avg", "final", "forgetting") for m in ("lwlrap", "mAP_binarized")]
#: multi-label summaries a row carries (table, CSV and the headline's thresholded mAP)
ML_ROW_METRICS = ML_METRICS + ML_CSV_EXTRA

COST_COLUMNS = ["train_seconds", "peak_memory_mb", "peak_memory_kind", "parameters"]
CSV_COLUMNS = (
    ["suite", "dataset", "protocol", "stream_hash", "method", "modality", "seed"]
    + METRICS
    + [f"last_epoch_{m}" for m in METRICS]
    + COST_COLUMNS
    + ["reference_protocol", "epochs_override", "settings", "family", "pretrained_encoders"]
    + ["selection", "mcil_m1", "mcil_m2", "mcil_m1_last_batch", "mcil_m2_last_batch", "towers"]
)
ML_CSV_COLUMNS = (
    ["suite", "dataset", "protocol", "stream_hash", "method", "norm", "cell_method", "seed"]
    + ML_METRICS
    + ML_CSV_EXTRA
    + COST_COLUMNS
    + ["widths", "reference_protocol", "epochs_override", "settings", "family"]
)
INT_COLUMNS = ["seed", "parameters", "epochs_override"]


def is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def created_key(s: str) -> tuple:
    """Sort key for ISO times that tolerates odd strings (they sort first)."""
    try:
        return (1, datetime.fromisoformat(s).timestamp(), s)
    except (TypeError, ValueError):
        return (0, 0.0, str(s))


def order_key(value, order: tuple[str, ...]) -> tuple:
    """Known values in `order`, unknown ones after them by name."""
    value = str(value)
    return (order.index(value), value) if value in order else (len(order), value)


# ----------------------------------------------------------------------------- record -> row
def run_settings_of(rec: Mapping) -> dict:
    """The command-line settings a record was run with: its `settings`; a record written before runs recorded them
    has at most its --epochs value (`epochs_override`)."""
    if rec.get("settings") is not None:
        return dict(rec["settings"])
    override = rec.get("epochs_override")
    return {} if is_missing(override) else {"epochs": override}


def family_of(rec: Mapping, families: Mapping[str, str]) -> str:
    """The method family of a record (MethodSpec.family): the record's own; else `families` (the method registry's,
    given by the caller); else "seed" (MethodSpec's default: records from before families were recorded)."""
    return str(rec.get("family") or families.get(rec["cell"]["method"]) or FAMILIES[0])


def common_fields(suite: str, rec: Mapping) -> dict:
    """The fields every row has, whatever the record kind.

    settings: the run's command-line settings as text; "" = the method's own configuration under the reference
    protocol (a default run: the only rows that are ranked)."""
    cell, stream, cost = rec["cell"], rec.get("stream") or {}, rec.get("cost") or {}
    override, settings = rec.get("epochs_override"), run_settings_of(rec)
    return {
        "suite": rec.get("suite", suite),
        "dataset": cell["dataset"],
        "protocol": cell["protocol"],
        "stream_hash": stream.get("hash", "unknown"),
        "seed": cell.get("seed"),
        **{c: cost.get(c) for c in COST_COLUMNS},
        "reference_protocol": bool(rec.get("reference_protocol", True)),
        "epochs_override": override,
        "settings": settings_label(settings),
        "family": family_of(rec, {}),
        "_classes_per_step": list(stream.get("classes_per_step") or []),
        "_created": rec.get("created", ""),
    }


def stored_metrics(block: Mapping | None) -> dict:
    """The stored single-label metrics of a result block, computed from its R and A where a key is absent."""
    block = block or {}
    stored = dict(block.get("metrics") or {})
    if any(m not in stored for m in METRICS) and block.get("R") and block.get("A"):
        stored = {**accuracy.summarize(block["R"], block["A"]), **stored}
    return {m: stored.get(m) for m in METRICS}


def pretrained(rec: Mapping):
    """Whether the numbers come from pretrained encoders: the store's flag, and for methods that
    carry their own towers (method_info.weights) whether weights were loaded."""
    flag = (rec.get("encoders") or {}).get("pretrained")
    weights = (rec.get("method_info") or {}).get("weights") or {}
    if weights:
        return flag is not False and "init" not in weights
    return flag


def mcil_values(mm: Mapping | None) -> dict:
    """M1 / M2 of the whole test set (the shown variant) and of the release's last batch."""
    mm = mm or {}
    whole, last = mm.get("whole-set") or {}, mm.get("last-batch") or {}
    return {
        "mcil_m1": whole.get("m1"),
        "mcil_m2": whole.get("m2"),
        "mcil_m1_last_batch": last.get("m1"),
        "mcil_m2_last_batch": last.get("m2"),
    }


def single_label_row(suite: str, rec: Mapping) -> dict:
    """One row per single-label record: best-val metrics, last-epoch metrics, MCIL values, what the plots need."""
    cell, stream, res = rec["cell"], rec.get("stream") or {}, rec.get("results") or {}
    info = rec.get("method_info") or {}
    last = stored_metrics(res.get("last_epoch"))
    return {
        **common_fields(suite, rec),
        "method": cell["method"],
        "modality": cell["modality"],
        **stored_metrics(res),
        **{f"last_epoch_{m}": v for m, v in last.items()},
        "pretrained_encoders": pretrained(rec),
        "selection": res.get("selection", "best-val"),
        **mcil_values(res.get("method_metrics")),
        "towers": info.get("towers"),
        "_method_info": info,
        "_method_metrics": res.get("method_metrics") or {},
        "_R": res.get("R"),
        "_A": res.get("A"),
        "_memory": stream.get("memory"),
    }


def multilabel_row(suite: str, rec: Mapping) -> dict:
    """One row per multi-label record: the summaries, the model's widths, the curves and AP matrix for the plots."""
    cell, stream, res = rec["cell"], rec.get("stream") or {}, rec.get("results") or {}
    cfg, stored = rec.get("config") or {}, res.get("metrics") or {}
    widths = (res.get("model") or {}).get("widths") or cfg.get("widths") or []
    return {
        **common_fields(suite, rec),
        "method": res.get("method") or cfg.get("method") or cell["method"],
        "norm": res.get("norm") or cfg.get("norm") or "?",
        "cell_method": cell["method"],
        **{k: stored.get(k) for k in ML_ROW_METRICS},
        "widths": " ".join(str(w) for w in widths),
        "_curves": res.get("curves") or {},
        "_ap": res.get("ap_matrix") or [],
        "_skipped": len(stream.get("skipped") or []),
        "_frames": ((rec.get("encoders") or {}).get("frontend") or {}),
    }


# ----------------------------------------------------------------------------- the two kinds
@dataclass(frozen=True)
class Kind:
    """What differs between the record kinds in rows, CSV and tables.

    variant: the row field that splits a method into table rows (modality or normalisation).
    metrics: the full table's metric keys; optional: keys shown only where some row has a value.
    """

    name: str
    variant: str
    variant_order: tuple[str, ...]
    row: Callable[[str, Mapping], dict]
    csv_columns: list[str]
    metrics: list[str]
    optional: list[str]
    upper_variant: bool

    def variant_key(self, value) -> tuple:
        return order_key(value, self.variant_order)

    def variant_label(self, value) -> str:
        return str(value).upper() if self.upper_variant else str(value)

    def csv_name(self, safe_suite: str) -> str:
        """Single-label suites share results.csv; a multi-label suite has its own (named by its file-safe name)."""
        return "results.csv" if self.name == SINGLE else f"results-{safe_suite}.csv"


KINDS = {
    SINGLE: Kind(SINGLE, "modality", MODALITY_ORDER, single_label_row, CSV_COLUMNS, METRICS, MCIL_METRICS, False),
    MULTI: Kind(MULTI, "norm", NORM_ORDER, multilabel_row, ML_CSV_COLUMNS, ML_METRICS, [], True),
}


def record_kind(rec: Mapping) -> str:
    return MULTI if (rec.get("results") or {}).get("kind") == MULTI else SINGLE


def load_rows(results_dir: Path, suite: str, kind: Kind, families: Mapping[str, str] | None = None) -> list[dict]:
    """The rows of every finished record of a suite (none when the suite has no folder), each with its method family
    (`family_of`; `families`: method name -> family, for records that do not say)."""
    if not (Path(results_dir) / suite).is_dir():
        return []
    rows = []
    for rec in iter_records(results_dir, suite):
        rows.append({**kind.row(suite, rec), "family": family_of(rec, families or {})})
    return rows


def sorted_rows(rows: list[dict], kind: Kind) -> list[dict]:
    """Deterministic order: suite, dataset, protocol, stream, method, variant, default runs first, settings, seed."""

    def key(r):
        seed = r["seed"] if r["seed"] is not None else -1
        return (
            r["suite"],
            r["dataset"],
            r["protocol"],
            r["stream_hash"],
            r["method"],
            kind.variant_key(r[kind.variant]),
            r["settings"],
            seed,
        )

    return sorted(rows, key=key)


def results_frame(rows: list[dict], kind: Kind) -> pd.DataFrame:
    """A results CSV: one row per record, the kind's fixed columns, deterministic order, integer columns as Int64."""
    cols = kind.csv_columns
    df = pd.DataFrame([{c: r[c] for c in cols} for r in sorted_rows(rows, kind)], columns=cols)
    for c in INT_COLUMNS:
        df[c] = pd.array([None if is_missing(v) else int(v) for v in df[c]], dtype="Int64")
    return df
