"""The leaderboard's figures: curves vs seen classes (mean ± std band over seeds) and per-step matrices (heatmaps).

Why PNGs written through `save_figure`: the file carries no 'Software' stamp and is written atomically, so a
re-render of unchanged records leaves every figure byte-identical and a crash never leaves half a file. Other tools
(benchmarks/tools/cka.py) save their figures through it for the same reasons.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from benchmarks.report.rows import MODALITY_ORDER, NORM_ORDER, order_key  # noqa: E402
from benchmarks.report.tables import run_label  # noqa: E402
from datasets.io import atomic_write_bytes  # noqa: E402

#: the multi-label per-phase curves: (curve key in the record, axis label)
ML_CURVES = (
    ("mAP", "mAP (%)"),
    ("micro_f1", "micro-F1 (%)"),
    ("macro_f1", "macro-F1 (%)"),
    ("base_macro_f1", "macro-F1 on the base classes (%)"),
)
NORM_STYLES = {"bn": "-", "gn": "--", "cn": ":"}


def save_figure(fig, path: Path) -> None:
    """PNG without the 'Software' stamp (so plots, too, only change when the data does), written atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def series_label(method: str, settings: str) -> str:
    """A single-label series: the method, with a dagger and its settings for a run with settings."""
    return run_label(method, settings)


def norm_label(method: str, norm, settings: str) -> str:
    """A multi-label series: method (NORM), with a dagger and its settings for a run with settings."""
    return run_label(f"{method} ({str(norm).upper()})", settings)


def seen_classes(rows: list[dict]):
    """Cumulative seen classes per step (the x axis), None when the records do not say."""
    per_step = rows[0]["_classes_per_step"]
    return np.cumsum(per_step) if per_step else None


def nanmean_quiet(stack: np.ndarray, **kw) -> np.ndarray:
    """nanmean without the warning of all-NaN slices (masked triangles, classes not yet seen) that are NaN by design."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(stack, **kw)


def draw_band(ax, seen, curves: list, colour, label: str, alpha: float, **line) -> None:
    """Mean ± sample std over seeds of equally long prefixes of the curves (None = undefined), vs seen classes."""
    curves = [[np.nan if v is None else float(v) for v in c] for c in curves if c]
    if not curves:
        return
    T = min(len(c) for c in curves)
    A = np.array([c[:T] for c in curves], dtype=float)
    mean = nanmean_quiet(A, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        std = np.nanstd(A, axis=0, ddof=1) if len(A) > 1 else np.zeros(T)
    x = seen[:T] if seen is not None and len(seen) >= T else np.arange(1, T + 1)
    ax.plot(x, mean, marker="o", color=colour, label=f"{label} (n={len(A)})", **line)
    ax.fill_between(x, mean - std, mean + std, color=colour, alpha=alpha, linewidth=0)


def finish_axis(ax, seen, title: str, **title_style) -> None:
    ax.set_title(title, **title_style)
    ax.set_xlabel("number of seen classes")
    ax.set_ylim(0, 100)
    if seen is not None and len(seen) <= 12:  # beyond that the ticks would overlap
        ax.set_xticks(seen)


def palette(labels) -> dict:
    return dict(zip(sorted(labels), sns.color_palette("tab10", 10) * 10))


def accuracy_curves(rows: list[dict], title: str, path: Path) -> None:
    """A_t vs number of seen classes: one panel per modality, one line per method, mean ± std band over seeds."""
    modalities = sorted({r["modality"] for r in rows}, key=lambda m: order_key(m, MODALITY_ORDER))
    runs = sorted({(r["method"], r["settings"]) for r in rows})
    colours, seen = palette({series_label(*k) for k in runs}), seen_classes(rows)
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, len(modalities), figsize=(4.6 * len(modalities), 3.8), sharey=True, squeeze=False)
        for ax, modality in zip(axes[0], modalities):
            for method, settings in runs:
                curves = [
                    r["_A"] for r in rows if (r["modality"], r["method"], r["settings"]) == (modality, method, settings)
                ]
                label = series_label(method, settings)
                draw_band(ax, seen, curves, colours[label], label, 0.2, ms=4)
            finish_axis(ax, seen, modality)
            ax.legend(fontsize=7, loc="lower left")
        axes[0][0].set_ylabel("A_t: accuracy on all seen classes (%)")
        fig.suptitle(title, fontsize=10)
        save_figure(fig, path)


def lower_triangle(R, T: int) -> np.ndarray:
    """Lower-triangular rows (None above the diagonal) as a T x T float array, NaN above."""
    out = np.full((T, T), np.nan)
    for t, row in enumerate(R[:T]):
        for j, v in enumerate(row[: t + 1]):
            out[t, j] = np.nan if v is None else float(v)
    return out


def r_heatmaps(rows: list[dict], title: str, path: Path) -> bool:
    """R[t][j] (mean over seeds), one panel per modality, values annotated, upper triangle masked (rows with R only).
    Returns True (a figure is always written)."""
    modalities = [
        m
        for m in sorted({r["modality"] for r in rows}, key=lambda m: order_key(m, MODALITY_ORDER))
        if any(r["_R"] for r in rows if r["modality"] == m)
    ]
    T = max(len(r["_R"]) for r in rows if r["_R"])
    mask = np.triu(np.ones((T, T), dtype=bool), k=1)
    n = len(modalities)
    # one shared colour bar in its own narrow column, so every panel has the same size
    fig, axes = plt.subplots(
        1,
        n + 1,
        figsize=((0.55 * T + 2.0) * n + 0.6, 0.5 * T + 2.0),
        gridspec_kw={"width_ratios": [1] * n + [0.05], "wspace": 0.25},
    )
    for ax, modality in zip(axes[:n], modalities):
        mats = np.array([lower_triangle(r["_R"], T) for r in rows if r["modality"] == modality and r["_R"]])
        mean = nanmean_quiet(mats, axis=0)
        sns.heatmap(
            mean,
            mask=mask | np.isnan(mean),
            vmin=0,
            vmax=100,
            cmap="viridis",
            annot=True,
            fmt=".1f",
            annot_kws={"fontsize": 7 if T <= 10 else 5},
            square=False,
            cbar_ax=axes[n],
            ax=ax,
        )
        ax.set_title(f"{modality} (n={len(mats)})", fontsize=9)
        ax.set_xlabel("evaluated on step j's classes")
        ax.set_ylabel("after training step t" if ax is axes[0] else "")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
    return True


def ml_series(rows: list[dict]) -> list[tuple]:
    """(method, norm, settings) of every multi-label series, sorted: method, norm order, default run first."""
    keys = {(r["method"], r["norm"], r["settings"]) for r in rows}
    return sorted(keys, key=lambda k: (k[0], order_key(k[1], NORM_ORDER), k[2]))


def ml_curves(rows: list[dict], title: str, path: Path) -> None:
    """Per-phase curves (mAP, micro-F1, macro-F1, base-class macro-F1) vs seen classes: one line per method
    (colour) and normalisation (line style), mean ± std band over seeds."""
    seen, keys = seen_classes(rows), ml_series(rows)
    colours = palette({k[0] for k in keys})
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, len(ML_CURVES), figsize=(4.4 * len(ML_CURVES), 3.9), squeeze=False)
        for ax, (metric, ylabel) in zip(axes[0], ML_CURVES):
            for key in keys:
                curves = [r["_curves"].get(metric) for r in rows if (r["method"], r["norm"], r["settings"]) == key]
                draw_band(
                    ax,
                    seen,
                    curves,
                    colours[key[0]],
                    norm_label(*key),
                    0.12,
                    ms=3.5,
                    linestyle=NORM_STYLES.get(str(key[1]), "-."),
                )
            finish_axis(ax, seen, ylabel, fontsize=9)
        handles, labels = axes[0][0].get_legend_handles_labels()
        if handles:  # below the panels, so no curve is hidden
            fig.legend(
                handles,
                labels,
                loc="upper center",
                bbox_to_anchor=(0.5, 0.0),
                ncol=min(len(handles), 3),
                fontsize=7,
                frameon=False,
            )
        fig.suptitle(title, fontsize=10)
        save_figure(fig, path)


def ap_rows(ap: list) -> np.ndarray:
    """A record's per-phase AP lists (growing with the seen classes, None = no positive) as a phases x classes array."""
    C = max(len(a) for a in ap)
    return np.array([[np.nan if (j >= len(a) or a[j] is None) else float(a[j]) for j in range(C)] for a in ap])


def ap_matrix(rows: list[dict], title: str, path: Path) -> bool:
    """Per-class AP (%) after each phase, mean over seeds; blank: not yet seen or no positive test clip.
    Returns whether a figure was written (records without AP matrices give none)."""
    mats = [ap_rows(r["_ap"]) for r in rows if r["_ap"]]
    if not mats:
        return False
    T, C = min(m.shape[0] for m in mats), min(m.shape[1] for m in mats)
    mean = nanmean_quiet(np.stack([m[:T, :C] for m in mats]), axis=0)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.2 * C + 2.0), 0.45 * T + 1.8))
    sns.heatmap(mean, mask=np.isnan(mean), vmin=0, vmax=100, cmap="viridis", ax=ax, cbar_kws={"label": "AP (%)"})
    ax.set_xlabel("class index")
    ax.set_ylabel("after phase t")
    ax.set_title(f"{title} (n={len(mats)})", fontsize=9)
    save_figure(fig, path)
    return True
