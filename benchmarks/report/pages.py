"""Render the leaderboard (markdown pages, plots, results.csv) from the result records alone.

Why from the records alone: a record is the only thing a finished cell leaves behind, so the
leaderboard can be re-rendered at any time (after a crash, on another machine, after a
fix to this file) without re-running anything. The caller adds only what the records cannot
say: which datasets were missing and what to do about them, and optional dataset titles.

Rules the output keeps:
- Records of different class streams (stream hash) are never averaged together, even for the
  same (dataset, protocol): each stream gets its own table and the page says so.
- A run whose epochs were overridden (`reference_protocol == false`) is its own row, marked
  with a dagger, and never averaged with reference runs.
- Output is deterministic: the same records give byte-identical markdown and CSV (sorted
  everywhere; the only time printed is the newest record's `created`).
- Every file is written atomically (temp file, then os.replace).

Usage: `render(results_dir, out_dir, suites={"audio-visual": {"missing": {"ave": "..."}}})`
or `python -m benchmarks.report.pages --results results --out leaderboard`.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from benchmarks.metrics import accuracy as M  # noqa: E402
from benchmarks.metrics import multilabel as MLM  # noqa: E402
from benchmarks.core.records import iter_errors, iter_records  # noqa: E402
from datasets.store import atomic_write_bytes, atomic_write_text  # noqa: E402

METRICS = list(M.METRIC_NAMES)  # column order of the tables and the CSV
MODALITY_ORDER = ("audio", "visual", "audio-visual")
DAGGER = "†"
SELECTION_LINE = (
    "Numbers from the best-validation checkpoint of each step, as in the reference, unless a note under the table "
    "says a method keeps its last-epoch model (as its own reference does); last-epoch numbers are in [results.csv](results.csv)."
)
CSV_COLUMNS = (
    ["suite", "dataset", "protocol", "stream_hash", "method", "modality", "seed"]
    + METRICS
    + [f"last_epoch_{m}" for m in METRICS]
    + ["train_seconds", "peak_memory_mb", "peak_memory_kind", "parameters", "reference_protocol", "epochs_override", "pretrained_encoders"]
    + ["selection", "mcil_m1", "mcil_m2", "mcil_m1_last_batch", "mcil_m2_last_batch", "towers"]
)
# The MCIL-AudioCLIP metrics (benchmarks.metrics.accuracy.mcil_metrics): a column only in tables that have them.
MCIL_COLUMNS = {"mcil_m1": "MCIL M1", "mcil_m2": "MCIL M2"}
MCIL_FORMULAS = {
    "mcil_m1": "M1 = Ā/2 + (1/T) Σ_t (1 − s_t)(100 − F_t)/2, Ā the average incremental accuracy (%), F_t continuum-1.2.7 "
               "forgetting after step t (%), s_t the task similarity (s_0 = 1; mean of the rescaled cosines of consecutive "
               "steps' mean text embedding and mean test image feature). MCIL-AudioCLIP's Metric 1 as released, with the image "
               "mean over the whole test set (the release: its last batch; that form is in results.csv as *_last_batch).",
    "mcil_m2": "M2 = ½[½Ā_frac + ½(1/T) Σ_t (BWT_t + FWT_t)] + ½[½NMI(v,f) + ½NMI(a,f)] (0–1 scale), continuum-1.2.7 BWT/FWT "
               "(fractions), softmax NMIs of image v / audio a against the fused feature f over the whole test set after the "
               "last step (the release: its last batch). Only methods with text prototypes and a fusion report them.",
}
INT_COLUMNS = ["seed", "parameters", "epochs_override"]


# ----------------------------------------------------------------------------- small helpers
def safe_name(*parts: str) -> str:
    """A deterministic file name made of letters, digits, '-', '_' and '.'.

    Names that needed changing get a short hash of the original, so two different names
    can never end up with the same file.
    """
    raw = "__".join(str(p) for p in parts)
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-.") or "x"
    if clean != raw:
        clean += "-" + hashlib.sha1(raw.encode()).hexdigest()[:6]
    return clean


def _modality_key(m: str) -> tuple:
    return (MODALITY_ORDER.index(m), m) if m in MODALITY_ORDER else (len(MODALITY_ORDER), m)


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _md(text) -> str:
    """Escape what would break a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def fmt_stat(values: Sequence) -> str:
    """`mean ± std (n=K)` over the seeds that have a value; std is the sample std (0 when n=1)."""
    v = [float(x) for x in values if not _is_missing(x)]
    if not v:
        return "n/a"
    std = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return f"{np.mean(v):.2f} ± {std:.2f} (n={len(v)})"


def _fmt_steps(classes_per_step: Sequence[int]) -> str:
    k = list(classes_per_step)
    if k and len(set(k)) == 1:
        return f"{len(k)} step{'s' if len(k) > 1 else ''} x {k[0]} classes"
    return f"{len(k)} steps, classes per step {k}"


def _created_key(s: str) -> tuple:
    """Sort key for ISO times that tolerates odd strings (they sort first)."""
    try:
        return (1, datetime.fromisoformat(s).timestamp(), s)
    except (TypeError, ValueError):
        return (0, 0.0, str(s))


def _matrix(R, T: int) -> np.ndarray:
    """Lower-triangular rows (None above the diagonal) as a T x T float array, NaN above."""
    out = np.full((T, T), np.nan)
    for t, row in enumerate(R[:T]):
        for j, v in enumerate(row[: t + 1]):
            out[t, j] = np.nan if v is None else float(v)
    return out


# ----------------------------------------------------------------------------- records -> rows
def _metrics_of(block: Mapping | None) -> dict:
    """The stored metrics of a result block, computed from its R and A where a key is absent."""
    block = block or {}
    stored = dict(block.get("metrics") or {})
    if any(m not in stored for m in METRICS) and block.get("R") and block.get("A"):
        computed = M.summarize(block["R"], block["A"])
        stored = {**computed, **stored}
    return {m: stored.get(m) for m in METRICS}


def record_row(suite: str, rec: Mapping) -> dict:
    """One flat row per record: the CSV row plus what the tables and plots need."""
    cell, stream, res = rec["cell"], rec.get("stream") or {}, rec.get("results") or {}
    cost = rec.get("cost") or {}
    best, last = _metrics_of(res), _metrics_of(res.get("last_epoch"))
    return {
        "suite": rec.get("suite", suite),
        "dataset": cell["dataset"],
        "protocol": cell["protocol"],
        "stream_hash": stream.get("hash", "unknown"),
        "method": cell["method"],
        "modality": cell["modality"],
        "seed": cell.get("seed"),
        **best,
        **{f"last_epoch_{m}": v for m, v in last.items()},
        "train_seconds": cost.get("train_seconds"),
        "peak_memory_mb": cost.get("peak_memory_mb"),
        "peak_memory_kind": cost.get("peak_memory_kind"),
        "parameters": cost.get("parameters"),
        "reference_protocol": bool(rec.get("reference_protocol", True)),
        "epochs_override": rec.get("epochs_override"),
        "pretrained_encoders": _pretrained(rec),
        "selection": res.get("selection", "best-val"),
        **_mcil_values(res.get("method_metrics")),
        "towers": (rec.get("method_info") or {}).get("towers"),
        # not in the CSV:
        "_method_info": rec.get("method_info") or {},
        "_method_metrics": res.get("method_metrics") or {},
        "_R": res.get("R"),
        "_A": res.get("A"),
        "_classes_per_step": list(stream.get("classes_per_step") or []),
        "_memory": stream.get("memory"),
        "_created": rec.get("created", ""),
        "_override": "" if _is_missing(rec.get("epochs_override")) else str(rec.get("epochs_override")),
    }


def _pretrained(rec: Mapping):
    """Whether the numbers come from pretrained encoders: the store's flag, and for methods that
    carry their own towers (method_info.weights) whether weights were loaded."""
    flag = (rec.get("encoders") or {}).get("pretrained")
    weights = ((rec.get("method_info") or {}).get("weights") or {})
    if weights:
        return flag is not False and "init" not in weights
    return flag


def _mcil_values(mm: Mapping | None) -> dict:
    mm = mm or {}
    whole, last = mm.get("whole-set") or {}, mm.get("last-batch") or {}
    return {"mcil_m1": whole.get("m1"), "mcil_m2": whole.get("m2"), "mcil_m1_last_batch": last.get("m1"), "mcil_m2_last_batch": last.get("m2")}


def load_rows(results_dir: Path, suite: str) -> list[dict]:
    return [record_row(suite, r) for r in iter_records(results_dir, suite)]


def _sorted_rows(rows: list[dict]) -> list[dict]:
    return sorted(
        rows,
        key=lambda r: (r["suite"], r["dataset"], r["protocol"], r["stream_hash"], r["method"], _modality_key(r["modality"]),
                       not r["reference_protocol"], str(r["epochs_override"]), r["seed"] if r["seed"] is not None else -1),
    )


def results_frame(rows: list[dict]) -> pd.DataFrame:
    """The results.csv table: one row per record, fixed columns, deterministic order."""
    df = pd.DataFrame([{c: r[c] for c in CSV_COLUMNS} for r in _sorted_rows(rows)], columns=CSV_COLUMNS)
    for c in INT_COLUMNS:
        df[c] = pd.array([None if _is_missing(v) else int(v) for v in df[c]], dtype="Int64")
    return df


# ----------------------------------------------------------------------------- plots
def _save(fig, path: Path) -> None:
    """PNG without the 'Software' stamp (so plots, too, only change when the data does)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _series_label(method: str, reference: bool) -> str:
    return method if reference else f"{method} {DAGGER}"


def plot_accuracy_curves(rows: list[dict], title: str, path: Path) -> None:
    """A_t vs number of seen classes: one panel per modality, one line per method, mean ± std band over seeds."""
    df = pd.DataFrame(rows)
    modalities = sorted(df["modality"].unique(), key=_modality_key)
    seen = np.cumsum(rows[0]["_classes_per_step"]) if rows[0]["_classes_per_step"] else None
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, len(modalities), figsize=(4.6 * len(modalities), 3.8), sharey=True, squeeze=False)
        palette = dict(zip(sorted({_series_label(r["method"], r["reference_protocol"]) for r in rows}), sns.color_palette("tab10", 10) * 10))
        for ax, modality in zip(axes[0], modalities):
            sub = df[df["modality"] == modality]
            for (method, ref), g in sorted(sub.groupby(["method", "reference_protocol"]), key=lambda kv: (kv[0][0], not kv[0][1])):
                curves = [a for a in g["_A"] if a]
                if not curves:
                    continue
                T = min(len(a) for a in curves)
                A = np.array([a[:T] for a in curves], dtype=float)
                mean = A.mean(axis=0)
                std = A.std(axis=0, ddof=1) if len(A) > 1 else np.zeros(T)
                x = seen[:T] if seen is not None and len(seen) >= T else np.arange(1, T + 1)
                label = _series_label(method, ref)
                ax.plot(x, mean, marker="o", ms=4, color=palette[label], label=f"{label} (n={len(A)})")
                ax.fill_between(x, mean - std, mean + std, color=palette[label], alpha=0.2, linewidth=0)
            ax.set_title(modality)
            ax.set_xlabel("number of seen classes")
            ax.set_ylim(0, 100)
            if seen is not None and len(seen) <= 12:  # beyond that the ticks would overlap
                ax.set_xticks(seen)
            ax.legend(fontsize=7, loc="lower left")
        axes[0][0].set_ylabel("A_t: accuracy on all seen classes (%)")
        fig.suptitle(title, fontsize=10)
        _save(fig, path)


def plot_r_heatmaps(rows: list[dict], title: str, path: Path) -> None:
    """R[t][j] (mean over seeds), one panel per modality, values annotated, upper triangle masked."""
    df = pd.DataFrame(rows)
    modalities = [m for m in sorted(df["modality"].unique(), key=_modality_key) if any(df[df["modality"] == m]["_R"])]
    T = max(len(R) for R in df["_R"] if R)
    mask = np.triu(np.ones((T, T), dtype=bool), k=1)
    n = len(modalities)
    # one shared colour bar in its own narrow column, so every panel has the same size
    fig, axes = plt.subplots(1, n + 1, figsize=((0.55 * T + 2.0) * n + 0.6, 0.5 * T + 2.0),
                             gridspec_kw={"width_ratios": [1] * n + [0.05], "wspace": 0.25})
    for ax, modality in zip(axes[:n], modalities):
        mats = np.array([_matrix(R, T) for R in df[df["modality"] == modality]["_R"] if R])
        with warnings.catch_warnings():  # the masked upper triangle is all-NaN by design
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(mats, axis=0)
        sns.heatmap(mean, mask=mask | np.isnan(mean), vmin=0, vmax=100, cmap="viridis", annot=True, fmt=".1f",
                    annot_kws={"fontsize": 7 if T <= 10 else 5}, square=False, cbar_ax=axes[n], ax=ax)
        ax.set_title(f"{modality} (n={len(mats)})", fontsize=9)
        ax.set_xlabel("evaluated on step j's classes")
        ax.set_ylabel("after training step t" if ax is axes[0] else "")
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


# ----------------------------------------------------------------------------- markdown
def _encoder_note(values, short: bool = False) -> str:
    """Pretrained or random encoders: random ones are said loudly, since the numbers then mean little.

    `short` is the one-line form under each table (the page opens with the long warning).
    """
    vals = {v for v in values}
    if vals == {True}:
        return "Encoders: pretrained."
    if False in vals and short:
        return "Encoders: **⚠ RANDOM, not pretrained" + (" (some runs)" if len(vals) > 1 else "") + "**: see the warning at the top."
    if False in vals:
        which = "some runs" if len(vals) > 1 else "all runs"
        return (f"**⚠ RANDOM ENCODERS ({which}): the feature encoders were NOT pretrained, so these numbers do not "
                "measure the methods as published. Provide the pretrained checkpoints and re-extract the features.**")
    return "Encoders: pretraining unknown (the records do not say)."


COST_COLUMNS = ["Train time (s, mean)", "Peak memory (MB, max)", "Parameters"]


def _table(rows: list[dict], second: str = "modality", metrics: Sequence[str] | None = None,
           names: Mapping[str, str] | None = None) -> tuple[list[str], set]:
    """One markdown table for one (dataset, protocol, stream): a row per (method, `second` column),
    reference runs before overridden ones; returns its lines and the overrides seen. Single-label
    tables (second = modality) add the MCIL columns where some row has them."""
    if metrics is None:
        metrics = METRICS + [c for c in MCIL_COLUMNS if any(not _is_missing(r.get(c)) for r in rows)]
    names = names or {**M.METRIC_NAMES, **MCIL_COLUMNS}
    cols = ["Method", second.capitalize()] + [names[m] for m in metrics] + COST_COLUMNS
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(cols) - 2)) + "|"]
    overrides: set = set()
    df = pd.DataFrame(rows)
    order = _modality_key if second == "modality" else _norm_key
    groups = sorted(df.groupby(["method", second, "reference_protocol", "_override"]),
                    key=lambda kv: (kv[0][0], order(kv[0][1]), not kv[0][2], kv[0][3]))
    for (method, key, ref, ovr), g in groups:
        name = _md(method)
        if not ref:
            name += f" {DAGGER}"
            overrides.add(ovr or "?")
        train = [v for v in g["train_seconds"] if not _is_missing(v)]
        mem = [v for v in g["peak_memory_mb"] if not _is_missing(v)]
        kinds = sorted({str(k) for k in g["peak_memory_kind"] if not _is_missing(k)})
        params = sorted({int(v) for v in g["parameters"] if not _is_missing(v)})
        label = _md(key) if second == "modality" else _md(str(key).upper())
        cells = [name, label] + [fmt_stat(list(g[m])) for m in metrics] + [
            f"{np.mean(train):.1f}" if train else "n/a",
            (f"{max(mem):.0f}" + (f" ({', '.join(kinds)})" if kinds else "")) if mem else "n/a",
            ("{:,}".format(params[0]) if len(params) == 1 else "{:,}–{:,}".format(params[0], params[-1])) if params else "n/a",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines, overrides


def _method_notes(rows: list[dict]) -> list[str]:
    """Per-method facts under a table: the model selection when it is not best-val, and for methods
    with their own towers which configuration ran (random or pretrained) and MCIL diagnostics."""
    out = []
    for method in sorted({r["method"] for r in rows}):
        mrows = [r for r in rows if r["method"] == method]
        facts = []
        if any(r["selection"] == "last" for r in mrows):
            facts.append("last-epoch model of each step (no validation selection, as its reference)")
        towers = sorted({str(r["towers"]) for r in mrows if r.get("towers")})
        if towers:
            inits = sorted({str(w.get("init", "pretrained weights loaded")) for r in mrows if (w := r["_method_info"].get("weights")) is not None})
            facts.append(f"towers {', '.join(towers)} ({'; '.join(inits)})")
        fired = [v for r in mrows for v in ((r["_method_metrics"].get("fusion_fired_test") or [])[-1:])]
        if fired:
            facts.append(f"fusion fired on {100 * np.mean(fired):.1f} % of test samples after the last step (mean over seeds)")
        sel = [v for r in mrows for v in ((r["_method_metrics"].get("task_selection_acc") or [])[-1:]) if v is not None]
        if sel:
            facts.append(f"task-selection accuracy after the last step {np.mean(sel):.1f} %")
        if facts:
            out.append(f"- `{_md(method)}`: " + "; ".join(facts) + ".")
    return out + [""] if out else []


def _missing_protocols(missing_protocols: Mapping[str, Sequence[str]], titles: Mapping[str, str]) -> list[str]:
    """A heading per protocol of every missing dataset, so the page shows where its table will be."""
    lines = []
    for dataset, protocols in sorted(missing_protocols.items()):
        for protocol in protocols:
            lines += _section_heading(dataset, protocol, titles) + [
                "**Missing**: the dataset is not on this machine, so this table is empty; "
                "[Missing datasets](#missing-datasets) says what to put where.", ""]
    return lines


def _failed_cells(errors: list[dict]) -> list[str]:
    if not errors:
        return ["None."]
    out = []
    for e in sorted(errors, key=lambda e: tuple(str(e.get("cell", {}).get(k, "")) for k in ("dataset", "protocol", "method", "modality", "seed"))):
        c = e.get("cell", {})
        where = " / ".join(str(c.get(k, "?")) for k in ("dataset", "protocol", "method", "modality")) + f" / seed {c.get('seed', '?')}"
        msg = str(e.get("error", "")).strip().splitlines() or ["(no message)"]
        out.append(f"- `{where}`: {_md(msg[-1])}")
        if len(msg) > 1:  # keep the tail of a traceback readable, not the whole thing
            out += ["", "  ```", *("  " + line for line in msg[-15:]), "  ```", ""]
    return out


def _reported(entries: Sequence[Mapping], titles: Mapping[str, str]) -> list[str]:
    """Numbers published by the references: a separate table, never mixed with the harness's."""
    if not entries:
        return []
    lines = ["## Reported by the references (not this harness's results)", "",
             "| Dataset | Protocol | Method | Modality | " + " | ".join(M.METRIC_NAMES[m] for m in METRICS) + " | Source |",
             "|---|---|---|---|" + "---:|" * len(METRICS) + "---|"]
    for e in sorted(entries, key=lambda e: (e["dataset"], e["protocol"], e["method"], _modality_key(e["modality"]))):
        values = " | ".join("" if e.get(m) is None else f"{float(e[m]):.2f}" for m in METRICS)
        lines.append(f"| {_md(titles.get(e['dataset'], e['dataset']))} | {_md(e['protocol'])} | {_md(e['method'])} | {_md(e['modality'])} | {values} | {_md(e['source'])} |")
    return lines + [""]


def _missing(missing) -> list[str]:
    """One bullet per missing dataset; its (multi-line) instructions verbatim in a text block."""
    if not missing:
        return ["None."]
    items = sorted(missing.items()) if isinstance(missing, Mapping) else [(None, m) for m in missing]
    lines = []
    for name, message in items:
        first, _, rest = str(message).partition("\n")
        lines.append(f"- {'**' + _md(name) + '**: ' if name else ''}{_md(first)}")
        if rest.strip():
            lines += ["", "  ```text", *("  " + line for line in rest.splitlines()), "  ```", ""]
    return lines


def _page_head(suite: str, info: Mapping, rows: list[dict], csv_name: str) -> list[str]:
    """Title, record count and newest record, the caller's notes; "no results" when there are none."""
    newest = max((r["_created"] for r in rows), key=_created_key, default=None)
    lines = [f"# Leaderboard: {_md(info.get('title', suite))}", "",
             f"{len(rows)} result records; newest record: {newest or 'none'}. [Index](README.md) · [{csv_name}]({csv_name})", ""]
    for note in info.get("notes", []) or []:
        lines += [f"> {note}", ""]
    return lines + ([] if rows else ["No results yet for this suite.", ""])


def _section_heading(dataset: str, protocol: str, titles: Mapping[str, str]) -> list[str]:
    dtitle = titles.get(dataset, dataset)
    heading = f"{_md(dtitle)} (`{dataset}`)" if dtitle != dataset else f"`{dataset}`"
    return [f"## {heading}, protocol `{protocol}`", ""]


def _sections(rows: list[dict]) -> list[tuple[str, str, list[tuple[str, list[dict]]]]]:
    """(dataset, protocol, [(stream hash, its rows), ...]) sorted; within a section the newest stream
    first (most likely the current one), ties by hash: deterministic. Streams are never merged."""
    by_dp: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        by_dp.setdefault((r["dataset"], r["protocol"]), {}).setdefault(r["stream_hash"], []).append(r)
    out = []
    for (dataset, protocol), streams in sorted(by_dp.items()):
        order = sorted(streams)
        order.sort(key=lambda h: max(_created_key(r["_created"]) for r in streams[h]), reverse=True)
        out.append((dataset, protocol, [(h, streams[h]) for h in order]))
    return out


def _several_streams(streams: list, what: str, why: str) -> list[str]:
    if len(streams) < 2:
        return []
    return [f"> **{len(streams)} different {what}** exist for this dataset and protocol {why}. "
            "Each has its own table below; their numbers are never averaged together.", ""]


def _stream_heading(h: str, streams: list) -> list[str]:
    return [f"### Stream `{h[:12]}`", ""] if len(streams) > 1 else []


def render_suite(suite: str, rows: list[dict], errors: list[dict], info: Mapping, titles: Mapping[str, str],
                 out_dir: Path) -> tuple[str, set[str]]:
    """The markdown of one suite page (plots are written as a side effect); returns it and the plot files."""
    plots: set[str] = set()
    lines = _page_head(suite, info, rows, "results.csv")
    if rows and any(r["pretrained_encoders"] is not True for r in rows):
        lines[4:4] = ["> " + _encoder_note(r["pretrained_encoders"] for r in rows), ""]
    overrides: set = set()
    for dataset, protocol, streams in _sections(rows):
        dtitle = titles.get(dataset, dataset)
        lines += _section_heading(dataset, protocol, titles)
        lines += _several_streams(streams, "class streams", "(different class order, split or steps)")
        for h, srows in streams:
            first = srows[0]
            lines += _stream_heading(h, streams)
            lines.append(f"{SELECTION_LINE} Stream `{h[:12]}`; {_fmt_steps(first['_classes_per_step'])}; memory {first['_memory']} exemplars.")
            lines += ["", _encoder_note((r["pretrained_encoders"] for r in srows), short=True), ""]
            table, ovr = _table(srows)
            overrides |= ovr
            lines += table + [""] + _method_notes(srows)
            stem = safe_name(suite, dataset, protocol, h[:12])
            curve = f"{stem}__acc.png"
            plot_accuracy_curves(srows, f"{dtitle} {protocol} (stream {h[:8]}): A_t, mean ± std over seeds", out_dir / "plots" / curve)
            plots.add(curve)
            lines += [f"![A_t vs seen classes](plots/{curve})", ""]
            links = []
            for (method, ref) in sorted({(r["method"], r["reference_protocol"]) for r in srows}, key=lambda k: (k[0], not k[1])):
                mrows = [r for r in srows if r["method"] == method and r["reference_protocol"] == ref and r["_R"]]
                if not mrows:
                    continue
                label = _series_label(method, ref)
                heat = f"{stem}__R__{safe_name(method if ref else method + '-override')}.png"
                plot_r_heatmaps(mrows, f"{dtitle} {protocol}, {label}: R[t][j] (%), mean over seeds", out_dir / "plots" / heat)
                plots.add(heat)
                links.append(f"[{_md(label)}](plots/{heat})")
            if links:
                lines += ["Accuracy matrices R (heatmaps): " + " · ".join(links), ""]
    lines += _missing_protocols(info.get("missing_protocols") or {}, titles)
    lines += ["## Missing datasets", "", *_missing(info.get("missing")), ""]
    lines += _reported(info.get("reported") or [], titles)
    lines += ["## Failed cells", "", *_failed_cells(errors), ""]
    lines += ["## Notes", ""]
    if overrides:
        n = ", ".join(sorted(overrides))
        lines.append(f"- {DAGGER} epochs overridden with --epochs {n}: not the reference protocol.")
    lines.append("- ± is the sample standard deviation over seeds (0 when n=1); n is the number of seeds with a value; "
                 "n/a: undefined (e.g. forgetting with a single step) or not recorded.")
    lines.append("- Train time: mean over seeds; peak memory: max over seeds (rss = host memory, cuda = GPU memory).")
    for m in METRICS:
        lines.append(f"- **{M.METRIC_NAMES[m]}**: {M.FORMULAS[m]}")
    if any(not _is_missing(r.get("mcil_m1")) for r in rows):
        lines += [f"- **{MCIL_COLUMNS[c]}**: {MCIL_FORMULAS[c]}" for c in MCIL_COLUMNS]
    return "\n".join(lines) + "\n", plots

# ----------------------------------------------------------------------------- multi-label suites
ML_COLUMNS = list(MLM.HEADLINE)
ML_CSV_COLUMNS = (
    ["suite", "dataset", "protocol", "stream_hash", "method", "norm", "cell_method", "seed"]
    + ML_COLUMNS
    + [f"{p}_{m}" for p in ("avg", "final", "forgetting") for m in ("lwlrap", "mAP_binarized")]
    + ["train_seconds", "peak_memory_mb", "peak_memory_kind", "parameters", "widths", "reference_protocol", "epochs_override"]
)
NORM_ORDER = ("bn", "gn", "cn")
ML_CURVES = (("mAP", "mAP (%)"), ("micro_f1", "micro-F1 (%)"), ("macro_f1", "macro-F1 (%)"), ("base_macro_f1", "macro-F1 on the base classes (%)"))


def _norm_key(n) -> tuple:
    n = str(n)
    return (NORM_ORDER.index(n), n) if n in NORM_ORDER else (len(NORM_ORDER), n)


def ml_record_row(suite: str, rec: Mapping) -> dict:
    """One flat row per multi-label record."""
    cell, stream, res = rec["cell"], rec.get("stream") or {}, rec.get("results") or {}
    cost, cfg, m = rec.get("cost") or {}, rec.get("config") or {}, res.get("metrics") or {}
    metric_keys = ML_COLUMNS + [f"{p}_{k}" for p in ("avg", "final", "forgetting") for k in ("lwlrap", "mAP_binarized")]
    return {
        "suite": rec.get("suite", suite), "dataset": cell["dataset"], "protocol": cell["protocol"],
        "stream_hash": stream.get("hash", "unknown"),
        "method": res.get("method") or cfg.get("method") or cell["method"], "norm": (res.get("norm") or cfg.get("norm") or "?"),
        "cell_method": cell["method"], "seed": cell.get("seed"),
        **{k: m.get(k) for k in metric_keys},
        "train_seconds": cost.get("train_seconds"), "peak_memory_mb": cost.get("peak_memory_mb"),
        "peak_memory_kind": cost.get("peak_memory_kind"), "parameters": cost.get("parameters"),
        "widths": " ".join(str(w) for w in (res.get("model") or {}).get("widths") or cfg.get("widths") or []),
        "reference_protocol": bool(rec.get("reference_protocol", True)), "epochs_override": rec.get("epochs_override"),
        "_curves": res.get("curves") or {}, "_ap": res.get("ap_matrix") or [],
        "_classes_per_step": list(stream.get("classes_per_step") or []), "_class_names": list(stream.get("class_names") or []),
        "_created": rec.get("created", ""), "_skipped": len(stream.get("skipped") or []),
        "_override": "" if _is_missing(rec.get("epochs_override")) else str(rec.get("epochs_override")),
        "_frames": ((rec.get("encoders") or {}).get("frontend") or {}),
    }


def _ml_sorted(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["suite"], r["dataset"], r["protocol"], r["stream_hash"], r["method"], _norm_key(r["norm"]),
                                       not r["reference_protocol"], str(r["epochs_override"]), r["seed"] if r["seed"] is not None else -1))


def ml_results_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame([{c: r[c] for c in ML_CSV_COLUMNS} for r in _ml_sorted(rows)], columns=ML_CSV_COLUMNS)
    for c in ("seed", "parameters", "epochs_override"):
        df[c] = pd.array([None if _is_missing(v) else int(v) for v in df[c]], dtype="Int64")
    return df


def _ml_label(r_or_key) -> str:
    method, norm, ref = r_or_key
    return f"{method} ({str(norm).upper()})" + ("" if ref else f" {DAGGER}")


def _ml_table(rows: list[dict]) -> tuple[list[str], set]:
    return _table(rows, "norm", ML_COLUMNS, MLM.HEADLINE_NAMES)


def plot_ml_curves(rows: list[dict], title: str, path: Path) -> None:
    """Per-phase curves (mAP, micro-F1, macro-F1, base-class macro-F1) vs seen classes: one line per
    method (colour) and normalisation (line style), mean ± std band over seeds."""
    seen = np.cumsum(rows[0]["_classes_per_step"]) if rows[0]["_classes_per_step"] else None
    keys = sorted({(r["method"], r["norm"], r["reference_protocol"]) for r in rows}, key=lambda k: (k[0], _norm_key(k[1]), not k[2]))
    methods = sorted({k[0] for k in keys})
    colours = dict(zip(methods, sns.color_palette("tab10", 10) * 10))
    styles = {"bn": "-", "gn": "--", "cn": ":"}
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, len(ML_CURVES), figsize=(4.4 * len(ML_CURVES), 3.9), squeeze=False)
        for ax, (metric, ylabel) in zip(axes[0], ML_CURVES):
            for key in keys:
                curves = [r["_curves"].get(metric) for r in rows if (r["method"], r["norm"], r["reference_protocol"]) == key]
                curves = [[np.nan if v is None else float(v) for v in c] for c in curves if c]
                if not curves:
                    continue
                T = min(len(c) for c in curves)
                A = np.array([c[:T] for c in curves], dtype=float)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    mean = np.nanmean(A, axis=0)
                    std = np.nanstd(A, axis=0, ddof=1) if len(A) > 1 else np.zeros(T)
                x = seen[:T] if seen is not None and len(seen) >= T else np.arange(1, T + 1)
                ax.plot(x, mean, marker="o", ms=3.5, color=colours[key[0]], linestyle=styles.get(str(key[1]), "-."),
                        label=f"{_ml_label(key)} (n={len(A)})")
                ax.fill_between(x, mean - std, mean + std, color=colours[key[0]], alpha=0.12, linewidth=0)
            ax.set_title(ylabel, fontsize=9)
            ax.set_xlabel("number of seen classes")
            ax.set_ylim(0, 100)
            if seen is not None and len(seen) <= 12:
                ax.set_xticks(seen)
        handles, labels = axes[0][0].get_legend_handles_labels()
        if handles:  # below the panels, so no curve is hidden
            fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(handles), 3), fontsize=7, frameon=False)
        fig.suptitle(title, fontsize=10)
        _save(fig, path)


def plot_ap_matrix(rows: list[dict], title: str, path: Path) -> None:
    """Per-class AP (%) after each phase, mean over seeds; blank: not yet seen or no positive test clip."""
    mats = []
    for r in rows:
        ap = r["_ap"]
        if not ap:
            continue
        C = max(len(a) for a in ap)
        mats.append(np.array([[np.nan if (j >= len(a) or a[j] is None) else float(a[j]) for j in range(C)] for a in ap], dtype=float))
    if not mats:
        return
    T, C = min(m.shape[0] for m in mats), min(m.shape[1] for m in mats)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(np.stack([m[:T, :C] for m in mats]), axis=0)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.2 * C + 2.0), 0.45 * T + 1.8))
    sns.heatmap(mean, mask=np.isnan(mean), vmin=0, vmax=100, cmap="viridis", ax=ax, cbar_kws={"label": "AP (%)"})
    ax.set_xlabel("class index")
    ax.set_ylabel("after phase t")
    ax.set_title(f"{title} (n={len(mats)})", fontsize=9)
    _save(fig, path)


def render_ml_suite(suite: str, rows: list[dict], errors: list[dict], info: Mapping, titles: Mapping[str, str],
                    out_dir: Path) -> tuple[str, set[str]]:
    """The page of a multi-label suite: rows method x normalisation, per-phase curves, AP matrices."""
    plots: set[str] = set()
    csv_name = f"results-{safe_name(suite)}.csv"
    lines = _page_head(suite, info, rows, csv_name)
    overrides: set = set()
    for dataset, protocol, streams in _sections(rows):
        dtitle = titles.get(dataset, dataset)
        lines += _section_heading(dataset, protocol, titles)
        lines += _several_streams(streams, "streams", "(phase files)")
        for h, srows in streams:
            first = srows[0]
            lines += _stream_heading(h, streams)
            widths = sorted({r["widths"] for r in srows})
            fr = first["_frames"]
            front = (f"log-mel {fr.get('seconds')} s at {fr.get('sample_rate')} Hz, {fr.get('n_mels')} mels" if fr else "log-mel")
            lines.append(f"Last-epoch model of each phase (no validation split, as in the reference). Stream `{h[:12]}`; "
                         f"classes per phase {first['_classes_per_step']}; {front}; CNN14 widths {' / '.join(w or '?' for w in widths)}."
                         + (f" {first['_skipped']} skipped records (listed in the records)." if first["_skipped"] else ""))
            lines.append("")
            table, ovr = _ml_table(srows)
            overrides |= ovr
            lines += table + [""]
            stem = safe_name(suite, dataset, protocol, h[:12])
            curve = f"{stem}__curves.png"
            plot_ml_curves(srows, f"{dtitle} {protocol} (stream {h[:8]}): per-phase metrics, mean ± std over seeds", out_dir / "plots" / curve)
            plots.add(curve)
            lines += [f"![per-phase metrics vs seen classes](plots/{curve})", ""]
            links = []
            for key in sorted({(r["method"], r["norm"], r["reference_protocol"]) for r in srows}, key=lambda k: (k[0], _norm_key(k[1]), not k[2])):
                krows = [r for r in srows if (r["method"], r["norm"], r["reference_protocol"]) == key]
                name = f"{stem}__AP__{safe_name(key[0] + '-' + str(key[1]) + ('' if key[2] else '-override'))}.png"
                plot_ap_matrix(krows, f"{dtitle} {protocol}, {_ml_label(key)}: per-class AP after each phase", out_dir / "plots" / name)
                if (out_dir / "plots" / name).exists():
                    plots.add(name)
                    links.append(f"[{_md(_ml_label(key))}](plots/{name})")
            if links:
                lines += ["Per-class AP matrices (heatmaps): " + " · ".join(links), ""]
    lines += ["## Missing datasets", "", *_missing(info.get("missing")), ""]
    if info.get("reported"):
        lines += ["## Reported by the references (not this harness's results)", "",
                  "| Dataset | Method | " + " | ".join(MLM.HEADLINE_NAMES[m] for m in ML_COLUMNS) + " | Source |",
                  "|---|---|" + "---:|" * len(ML_COLUMNS) + "---|"]
        for e in sorted(info["reported"], key=lambda e: (e["dataset"], e["method"])):
            vals = " | ".join("" if e.get(m) is None else f"{float(e[m]):.2f}" for m in ML_COLUMNS)
            lines.append(f"| {_md(titles.get(e['dataset'], e['dataset']))} | {_md(e['method'])} | {vals} | {_md(e['source'])} |")
        lines.append("")
    lines += ["## Failed cells", "", *_failed_cells(errors), ""]
    lines += ["## Notes", ""]
    if overrides:
        lines.append(f"- {DAGGER} epochs overridden with --epochs {', '.join(sorted(overrides))}: not the reference protocol.")
    lines.append("- Rows: method × normalisation of the CNN14 conv blocks (BN: BatchNorm; GN: GroupNorm(32); CN: Continual "
                 "Normalization = GroupNorm without affine, then BatchNorm).")
    lines.append("- ± is the sample standard deviation over seeds (0 when n=1); n is the number of seeds with a value; n/a: undefined "
                 "(e.g. no class with a positive test clip) or not recorded. All values in %.")
    lines.append("- Evaluated after each phase t on its cumulative test set, over the 30 + 5t seen classes; threshold 0.5 on the "
                 "sigmoid for F1. A class without positive test clips in a phase has no AP and is left out of mAP; a class with "
                 "F1 = 0/0 is left out of macro-F1 (benchmarks/metrics/multilabel.py). lwlrap and the reference's binarised mAP: "
                 f"[{csv_name}]({csv_name}).")
    for m in ML_COLUMNS:
        lines.append(f"- **{MLM.HEADLINE_NAMES[m]}**: {MLM.FORMULAS[m]}")
    return "\n".join(lines) + "\n", plots


def _suite_kind(results_dir: Path, suite: str, info: Mapping) -> str:
    if info.get("kind"):
        return info["kind"]
    root = Path(results_dir) / suite
    if root.is_dir():
        for rec in iter_records(results_dir, suite):
            return "multilabel" if (rec.get("results") or {}).get("kind") == "multilabel" else "single-label"
    return "single-label"


def _suites_in(results_dir: Path) -> list[str]:
    root = Path(results_dir)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []


def render(results_dir: Path, out_dir: Path, suites: Mapping[str, Mapping] | None = None, *,
           titles: Mapping[str, str] | None = None, produced_by: str | None = None) -> dict[str, Path]:
    """Render README.md, one <suite>.md per suite, plots/ and results.csv into out_dir.

    suites: {suite: {"missing": {dataset: message} | [message, ...], "title": str, "notes": [str],
        "reported": [{dataset, protocol, method, modality, <metric>: value, source}]}}, all keys
        optional. A suite named here gets a page even with no records (e.g. every dataset missing);
        a suite found under results_dir but not named here gets one too.
    titles: dataset name -> display title (default: the name).
    produced_by: how the results were produced, e.g. the command line (shown in README.md).
    Returns {"README.md": path, "<suite>.md": path, ..., "results.csv": path}.
    """
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    suites = dict(suites or {})
    titles = dict(titles or {})
    names = sorted(set(suites) | set(_suites_in(results_dir)))
    all_rows: list[dict] = []
    ml_rows: list[dict] = []  # multi-label records: their own pages and CSVs
    written: dict[str, Path] = {}
    plots: set[str] = set()
    index = []
    for suite in names:
        errors = list(iter_errors(results_dir, suite)) if (results_dir / suite).is_dir() else []
        info = suites.get(suite, {})
        if _suite_kind(results_dir, suite, info) == "multilabel":
            rows = [ml_record_row(suite, r) for r in iter_records(results_dir, suite)] if (results_dir / suite).is_dir() else []
            text, suite_plots = render_ml_suite(suite, rows, errors, info, titles, out_dir)
            csv_name = f"results-{safe_name(suite)}.csv"
            atomic_write_text(out_dir / csv_name, ml_results_frame(rows).to_csv(index=False, lineterminator="\n"))
            written[csv_name] = out_dir / csv_name
            ml_rows += rows
            random = ""
        else:
            rows = load_rows(results_dir, suite) if (results_dir / suite).is_dir() else []
            text, suite_plots = render_suite(suite, rows, errors, info, titles, out_dir)
            all_rows += rows
            random = " **(random encoders)**" if any(r["pretrained_encoders"] is False for r in rows) else ""
        page = f"{safe_name(suite)}.md"
        atomic_write_text(out_dir / page, text)
        written[page] = out_dir / page
        plots |= suite_plots
        missing = info.get("missing") or {}
        index.append(f"- [{_md(info.get('title', suite))}]({page}): {len(rows)} records, "
                     f"{len({r['dataset'] for r in rows})} datasets, {len(missing)} missing datasets, {len(errors)} failed cells{random}")
    csv = results_frame(all_rows).to_csv(index=False, lineterminator="\n")
    atomic_write_text(out_dir / "results.csv", csv)
    written["results.csv"] = out_dir / "results.csv"
    newest = max((r["_created"] for r in all_rows + ml_rows), key=_created_key, default=None)
    readme = ["# Leaderboard", "", *index, "",
              f"Rendered by `benchmarks/report/pages.py` from the JSON result records alone ({len(all_rows) + len(ml_rows)} records)"
              + (f"; results produced by `{produced_by}`." if produced_by else "."),
              f"Newest record: {newest or 'none'}.", "",
              "All numbers: best-validation checkpoint of each step (as in the reference), except methods whose reference "
              "selects nothing (noted under their table). "
              "Every record, with last-epoch numbers too: [results.csv](results.csv).", ""]
    if any(_suite_kind(results_dir, s_, suites.get(s_, {})) == "multilabel" for s_ in names):
        readme[-2:-1] = ["Single-label suites: best-validation checkpoint of each step (as in the reference; methods whose reference "
                         "selects nothing keep the last epoch, noted under their table); every record, with "
                         "last-epoch numbers too: [results.csv](results.csv). Multi-label suites: the last-epoch model of each "
                         "phase (the reference has no validation split); every record: results-<suite>.csv."]
    atomic_write_text(out_dir / "README.md", "\n".join(readme))
    written["README.md"] = out_dir / "README.md"
    # plots/ belongs to the leaderboard: drop figures of cells that no longer exist
    plot_dir = out_dir / "plots"
    if plot_dir.is_dir():
        for p in plot_dir.glob("*.png"):
            if p.name not in plots:
                p.unlink()
    return written


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Re-render the leaderboard from result records.")
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--out", type=Path, default=Path("leaderboard"))
    args = ap.parse_args(argv)
    for name, path in render(args.results, args.out).items():
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
