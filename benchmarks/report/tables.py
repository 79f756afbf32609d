"""Markdown tables of the leaderboard: the headline table, the full table, the references' numbers, the footnotes.

Why two tables per stream: a reader comparing methods wants one number pair per method and modality (the headline);
a reader checking a run wants every metric and its costs (the full table, collapsed under the headline). Both average
over seeds the same way (mean, sample std) and never mix streams or overridden runs: the caller passes one stream's
rows, and a run with command-line settings (--epochs, --set) is always its own row, marked with a dagger and its
settings. The headline groups its rows by method family (MethodSpec.family: seed methods, continual-learning
strategies, pretrained-feature baselines) and ends with one line per baseline family: its best minus the best seed
method, per column, so the question "does the method beat the obvious baselines?" is answered at a glance.

Every table returns its lines and the metric keys it shows; `footnotes` prints the registry's formula of exactly those
keys, so a column on the page always has the formula of the code that computed it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from benchmarks.core.method import FAMILIES
from benchmarks.metrics import REGISTRY
from benchmarks.report.rows import MULTI, SINGLE, Kind, is_missing, order_key

DAGGER = "†"  # a run with command-line settings (not the method's default configuration)
EMPTY = "–"  # a headline cell without runs
COST_HEADERS = ["Train time (s, mean)", "Peak memory (MB, max)", "Parameters"]
#: the field that tells a default run ("") from a run with settings; after the kind's own label fields
RUN_FIELDS = ("settings",)
#: the headline's group label of each method family (MethodSpec.family), in FAMILIES order; another family shows its
#: name, after these
FAMILY_TITLES = {
    "seed": "Seed methods",
    "cl-strategy": "Continual-learning strategies",
    "feature-baseline": "Pretrained-feature baselines",
    "upper-bound": "Joint-training upper bounds",
}
#: the families compared with the best seed method under the headline (the upper bounds are no CL method)
COMPARED_FAMILIES = ("cl-strategy", "feature-baseline")


def md_cell(text) -> str:
    """Escape what would break a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def table_line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def table_head(titles: Sequence[str], left: int, text_after: int = 0) -> list[str]:
    """Header and alignment row: the first `left` and the last `text_after` columns left-aligned (text), the numbers
    between them right-aligned."""
    aligns = ["---"] * left + ["---:"] * (len(titles) - left - text_after) + ["---"] * text_after
    return [table_line(titles), "|" + "|".join(aligns) + "|"]


class Stat(NamedTuple):
    mean: float
    std: float
    n: int


def stat(values: Sequence) -> Stat | None:
    """Mean and sample std (0 when n=1) over the seeds that have a value; None when none has."""
    v = [float(x) for x in values if not is_missing(x)]
    if not v:
        return None
    std = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return Stat(float(np.mean(v)), std, len(v))


def fmt_stat(values: Sequence) -> str:
    """`mean ± std (n=K)` (two decimals), the full table's cell; n/a without a value."""
    s = stat(values)
    return "n/a" if s is None else f"{s.mean:.2f} ± {s.std:.2f} (n={s.n})"


def run_label(method: str, settings: str) -> str:
    """A method's run: the method for a default run; with a dagger and its settings for a run with settings."""
    return f"{method} {DAGGER} ({settings})" if settings else method


def group_rows(rows: list[dict], fields: Sequence[str], kind: Kind) -> list[tuple[tuple, list[dict]]]:
    """Rows grouped by `fields` (family, method and/or the kind's variant, then RUN_FIELDS), sorted: family order,
    method, variant order, the default run before runs with settings, then by settings."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[f] for f in fields), []).append(r)

    def order(f: str, v):
        return kind.variant_key(v) if f == kind.variant else order_key(v, FAMILIES) if f == "family" else v

    def key(item):
        return tuple(order(f, v) for f, v in zip(fields, item[0]))

    return sorted(groups.items(), key=key)


def label_cells(fields: Sequence[str], values: tuple, kind: Kind) -> list[str]:
    """The left cells of a row group: the method (with a dagger and the settings for a run with settings), the
    variant label; the family is the group's label row, not a cell."""
    v = dict(zip(fields, values))
    return [
        md_cell(run_label(v["method"], v["settings"])) if f == "method" else md_cell(kind.variant_label(v[f]))
        for f in fields
        if f not in RUN_FIELDS and f != "family"
    ]


# ----------------------------------------------------------------------------- full table
def cost_cells(g: list[dict]) -> list[str]:
    """Train time (mean), peak memory (max, with its kind) and parameter count (range if they differ)."""
    train = [v for v in (r["train_seconds"] for r in g) if not is_missing(v)]
    mem = [v for v in (r["peak_memory_mb"] for r in g) if not is_missing(v)]
    kinds = sorted({str(r["peak_memory_kind"]) for r in g if not is_missing(r["peak_memory_kind"])})
    params = sorted({int(r["parameters"]) for r in g if not is_missing(r["parameters"])})
    memory = f"{max(mem):.0f}" + (f" ({', '.join(kinds)})" if kinds else "") if mem else "n/a"
    count = "n/a" if not params else f"{params[0]:,}" if len(params) == 1 else f"{params[0]:,}–{params[-1]:,}"
    return [f"{np.mean(train):.1f}" if train else "n/a", memory, count]


def full_table(rows: list[dict], kind: Kind) -> tuple[list[str], list[str]]:
    """Every metric (mean ± std (n)) and the costs, a row per (method, variant, run); the kind's optional metrics
    (MCIL M1/M2) only where some row has them."""
    keys = kind.metrics + [k for k in kind.optional if any(not is_missing(r.get(k)) for r in rows)]
    fields = ("method", kind.variant, *RUN_FIELDS)
    lines = table_head(["Method", kind.variant.capitalize()] + [REGISTRY[k].name for k in keys] + COST_HEADERS, 2)
    for values, g in group_rows(rows, fields, kind):
        cells = label_cells(fields, values, kind) + [fmt_stat([r[k] for r in g]) for k in keys] + cost_cells(g)
        lines.append(table_line(cells))
    return lines, keys


# ----------------------------------------------------------------------------- headline table
@dataclass(frozen=True)
class Column:
    """A headline column: `primary` as mean ± std, then `secondary` as mean, over the group's rows that match
    `where` (field, value), all of them when None."""

    title: str
    primary: str
    secondary: str
    where: tuple[str, str] | None = None

    def values(self, g: list[dict], key: str) -> list:
        return [r.get(key) for r in g if self.where is None or r[self.where[0]] == self.where[1]]


@dataclass(frozen=True)
class Headline:
    """What a kind's headline shows: its row label fields, its columns, the legend under it."""

    by: tuple[str, ...]
    columns: Callable[[list[dict], Kind], list[Column]]
    legend: str


def modality_columns(rows: list[dict], kind: Kind) -> list[Column]:
    modalities = sorted({r["modality"] for r in rows}, key=kind.variant_key)
    return [Column(md_cell(m), "avg_inc_acc", "last_acc", ("modality", m)) for m in modalities]


#: the per-phase multi-label metrics of the headline, in column order: both mAPs side by side
ML_HEADLINE = ("mAP", "mAP_binarized", "micro_f1", "macro_f1")


def multilabel_columns(rows: list[dict], kind: Kind) -> list[Column]:
    return [Column(REGISTRY[m].name, f"avg_{m}", f"final_{m}") for m in ML_HEADLINE]


HEADLINES = {
    SINGLE: Headline(
        ("method",),
        modality_columns,
        f"Each cell: average incremental accuracy (**{REGISTRY['avg_inc_acc'].name}**), mean ± std "
        f"over seeds / last accuracy (**{REGISTRY['last_acc'].name}**), mean; in %. Bold: best of the "
        f"column (default runs: no {DAGGER}). {EMPTY}: not run. Every metric and the costs: *All metrics "
        "and costs* below.",
    ),
    MULTI: Headline(
        ("method", "norm"),
        multilabel_columns,
        "Each cell: average over the phases (Avg), mean ± std over seeds / after the last phase "
        "(Final), mean; in %. "
        f"**{REGISTRY['mAP'].name}** ranks the sigmoid scores (the standard mAP); "
        f"**{REGISTRY['mAP_binarized'].name}** is the AP of the 0/1 predictions at threshold 0.5, the "
        "number the papers' tables report: compare the papers with that column. Bold: best of the column "
        f"(default runs: no {DAGGER}).",
    ),
}


class HeadCell(NamedTuple):
    """One headline cell: the primary and secondary statistics; `ran`: the group has runs in this column."""

    primary: Stat | None
    secondary: Stat | None
    ran: bool

    def ns(self) -> list[int]:
        return sorted({x.n for x in (self.primary, self.secondary) if x is not None})


def column_best(stats: list[Stat | None], key: str) -> float | None:
    """The best mean of a column at the shown precision (so equal-looking values are bold together)."""
    shown = [round(s.mean, 1) for s in stats if s is not None]
    if not shown or REGISTRY[key].higher_is_better is None:
        return None
    return max(shown) if REGISTRY[key].higher_is_better else min(shown)


def bests(table: list[list[HeadCell]], eligible: list[bool], columns: list[Column]) -> list[tuple]:
    """(best primary, best secondary) per column, over the eligible (default-run) row groups only."""
    rows = [row for row, ok in zip(table, eligible) if ok]
    return [
        (
            column_best([row[i].primary for row in rows], c.primary),
            column_best([row[i].secondary for row in rows], c.secondary),
        )
        for i, c in enumerate(columns)
    ]


def cell_text(cell: HeadCell, best: tuple, n_in_header: bool) -> str:
    """`mean ± std / secondary mean`, each mean bold when it is the column's best; `(n=K)` unless in the header."""
    if not cell.ran:
        return EMPTY
    if cell.primary is None and cell.secondary is None:
        return "n/a"

    def mean(x: Stat | None, b) -> str:
        return "n/a" if x is None else (f"**{x.mean:.1f}**" if round(x.mean, 1) == b else f"{x.mean:.1f}")

    spread = f" ± {cell.primary.std:.1f}" if cell.primary is not None else ""
    text = f"{mean(cell.primary, best[0])}{spread} / {mean(cell.secondary, best[1])}"
    return text if n_in_header else text + f" (n={'/'.join(map(str, cell.ns()))})"


def family_title(family: str) -> str:
    return FAMILY_TITLES.get(family, family)


def versus_cells(
    table: list[list[HeadCell]], columns: list[Column], runs: list[dict], labels: list[str], family: str
) -> list[str] | None:
    """Per column: the best default run of `family` minus the best default seed method, for
    the primary and the secondary mean at the shown precision, then the two runs of the primary; None when either
    side has no row."""
    theirs = [i for i, run in enumerate(runs) if run["family"] == family and not run["settings"]]
    ours = [i for i, run in enumerate(runs) if run["family"] == FAMILIES[0] and not run["settings"]]
    if not theirs or not ours:
        return None

    def best(rows: list[int], col: int, which: str) -> tuple[float, str] | None:
        stats = [(getattr(table[i][col], which), labels[i]) for i in rows]
        found = [(round(x.mean, 1), label) for x, label in stats if x is not None]
        lower = REGISTRY[getattr(columns[col], which)].higher_is_better is False
        return (min if lower else max)(found, key=lambda x: x[0]) if found else None

    cells = []
    for col in range(len(columns)):
        a, b = best(theirs, col, "primary"), best(ours, col, "primary")
        if a is None or b is None:
            cells.append(EMPTY)
            continue
        a2, b2 = best(theirs, col, "secondary"), best(ours, col, "secondary")
        second = f" / {a2[0] - b2[0]:+.1f}" if a2 and b2 else ""
        cells.append(f"{a[0] - b[0]:+.1f}{second} ({a[1]} vs {b[1]})")
    return cells


def headline_table(rows: list[dict], kind: Kind) -> tuple[list[str], list[str]]:
    """One row per method (multi-label: per method x normalisation), one column per modality (multi-label: per
    metric); n in the header when every cell has the same number of seeds, else in every cell. With more than one
    method family: a label row opens each family's rows (seed methods first) and one line per other family gives
    its best minus the best seed method (`versus_cells`)."""
    spec = HEADLINES[kind.name]
    columns, fields = spec.columns(rows, kind), ("family", *spec.by, *RUN_FIELDS)
    groups = group_rows(rows, fields, kind)
    table = [
        [
            HeadCell(stat(c.values(g, c.primary)), stat(c.values(g, c.secondary)), bool(c.values(g, c.primary)))
            for c in columns
        ]
        for _, g in groups
    ]
    runs = [dict(zip(fields, values)) for values, _ in groups]
    eligible = [not run["settings"] for run in runs]  # default runs only are ranked
    families = [run["family"] for run in runs]
    labels = [" ".join(label_cells(fields, values, kind)) for values, _ in groups]
    best = bests(table, eligible, columns)
    ns = {n for row in table for cell in row for n in cell.ns()}
    n = ns.pop() if len(ns) == 1 else None
    first = ["Method" + (f" (n = {n} seed{'s' if n != 1 else ''})" if n else "")]
    lines = table_head(first + [f.capitalize() for f in spec.by[1:]] + [c.title for c in columns], len(spec.by))
    grouped = len(set(families)) > 1
    blank = [""] * (len(spec.by) - 1 + len(columns))
    for i, ((values, _), row, ok) in enumerate(zip(groups, table, eligible)):
        if grouped and (i == 0 or families[i] != families[i - 1]):
            lines.append(table_line([f"**{md_cell(family_title(families[i]))}**"] + blank))
        cells = [cell_text(cell, b if ok else (None, None), n is not None) for cell, b in zip(row, best)]
        lines.append(table_line(label_cells(fields, values, kind) + cells))
    legend = [spec.legend]
    if grouped:
        for family in dict.fromkeys(families):
            cells = versus_cells(table, columns, runs, labels, family) if family in COMPARED_FAMILIES else None
            if cells is not None:
                label = f"**Best of {md_cell(family_title(family).lower())} − best seed method**"
                lines.append(table_line([label] + [""] * (len(spec.by) - 1) + cells))
        legend.append(
            "Rows are grouped by method family, seed methods first. A *Best of … − best seed method* line gives, per "
            "column, the family's best default run minus the best seed method (both numbers of the cell, each at the "
            "shown precision; > 0: the family's best is higher), then the two methods of the first number."
        )
    return lines + ["", " ".join(legend)], [k for c in columns for k in (c.primary, c.secondary)]


def details(summary: str, body: list[str]) -> list[str]:
    """A collapsed block; blank lines around the body so GitHub renders the markdown inside."""
    return [f"<details><summary>{summary}</summary>", "", *body, "", "</details>"]


# ----------------------------------------------------------------------------- the references' numbers, footnotes
#: marks a reported number whose method the harness trains, by default, with a different loss (`harness_differs`)
DIFFERS = "‡"


def reported_table(entries: Sequence[Mapping], kind: Kind, titles: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """Numbers published by the references: a separate table, never mixed with the harness's.

    An entry with `harness_differs` (the harness's default row of that method uses a different loss than the
    reference, e.g. a reference bug fixed) gets DIFFERS next to its method and its text in a note under the table,
    so its number is not read as what the harness's row of the same name should reproduce."""
    keys = kind.metrics
    titles_ = ["Dataset", "Protocol", "Method", "Modality"] + [REGISTRY[k].name for k in keys] + ["Source"]
    lines = table_head(titles_, 4, 1)
    order = sorted(entries, key=lambda e: (e["dataset"], e["protocol"], e["method"], e.get("modality", "")))
    notes: dict[str, str] = {}  # method -> its note, in table order
    for e in order:
        differs = " ".join(str(e.get("harness_differs") or "").split())
        method = e["method"] + (f" {DIFFERS}" if differs else "")
        where = [titles.get(e["dataset"], e["dataset"]), e["protocol"], method, e.get("modality", "")]
        values = ["" if e.get(k) is None else f"{float(e[k]):.2f}" for k in keys]
        lines.append(table_line([md_cell(x) for x in where] + values + [md_cell(e["source"])]))
        if differs and notes.get(e["method"], differs) != differs:
            raise ValueError(f"reported {e['method']}: entries disagree on harness_differs")
        if differs:
            notes[e["method"]] = differs
    if notes:
        lines += ["", *(f"- {DIFFERS} **{md_cell(m)}**: {md_cell(text)}" for m, text in notes.items())]
    return lines, list(keys)


def footnotes(keys: Sequence[str]) -> list[str]:
    """`**name**: formula` for every shown key, in the registry's order, after the per-phase metrics they summarise."""
    position = {k: i for i, k in enumerate(REGISTRY)}
    shown = sorted(set(keys), key=position.__getitem__)
    phases = sorted({REGISTRY[k].per_phase for k in shown if REGISTRY[k].per_phase}, key=position.__getitem__)
    per_phase = [f"- **{REGISTRY[p].name}** (after each phase t): {REGISTRY[p].formula}" for p in phases]
    return per_phase + [f"- **{REGISTRY[k].name}**: {REGISTRY[k].formula}" for k in shown]
