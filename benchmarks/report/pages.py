"""Render the leaderboard (markdown pages, plots, results CSVs) from the result records alone.

Why from the records alone: a record is the only thing a finished cell leaves behind, so the
leaderboard can be re-rendered at any time (after a crash, on another machine, after a
fix to this package) without re-running anything. The caller adds only what the records cannot
say: which datasets were missing and what to do about them, and optional dataset titles.

Rules the output keeps:
- Records of different class streams (stream hash) are never averaged together, even for the
  same (dataset, protocol): each stream gets its own tables and the page says so.
- A run with command-line settings (`--epochs`, `--set KEY=VALUE`, `--precision`: the record's `settings`) is
  its own row per distinct settings, marked with a dagger and its settings, never averaged with the default
  runs and never ranked.
- Output is deterministic: the same records give byte-identical markdown and CSV (sorted
  everywhere; the only time printed is the newest record's `created`).
- Every file is written atomically (temp file, then os.replace).

One page builder serves both record kinds; what differs (the lines under a headline, the figures, the notes) is
chosen by the suite's kind through `PAGE_KINDS`.

Usage: `render(results_dir, out_dir, {"audio-visual": {"missing": {"ave": "..."}}})`
or `python -m benchmarks.report --results results --out leaderboard`.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.core.records import iter_errors, iter_records
from benchmarks.report import notes, plots
from benchmarks.report.rows import KINDS, MULTI, SINGLE, Kind, created_key, load_rows, record_kind, results_frame
from benchmarks.report.tables import DAGGER, details, footnotes, full_table, headline_table, md_cell, reported_table
from datasets.store import atomic_write_text

log = logging.getLogger(__name__)


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


# ----------------------------------------------------------------------------- figures of one stream
@dataclass(frozen=True)
class Stream:
    """Where one stream's figures go and what their titles say."""

    suite: str
    dataset: str
    protocol: str
    hash: str
    title: str  # the dataset's display title
    plot_dir: Path

    @property
    def stem(self) -> str:
        return safe_name(self.suite, self.dataset, self.protocol, self.hash[:12])

    def caption(self, what: str) -> str:
        return f"{self.title} {self.protocol} (stream {self.hash[:8]}): {what}"


@dataclass(frozen=True)
class Figures:
    """A kind's figures: one overview plot of the stream and one matrix per series (method run), linked in a line."""

    overview: Callable[[list[dict], str, Path], None]
    overview_file: str  # suffix of the overview's file name
    overview_alt: str
    overview_caption: str
    series: Callable[[list[dict]], list[tuple[str, str, list[dict]]]]  # (label, file part, rows)
    matrix: Callable[[list[dict], str, Path], bool]  # False: nothing to draw
    matrix_tag: str
    matrix_caption: str
    links: str


def single_label_series(rows: list[dict]) -> list[tuple[str, str, list[dict]]]:
    out = []
    for method, settings in sorted({(r["method"], r["settings"]) for r in rows}):
        mrows = [r for r in rows if (r["method"], r["settings"]) == (method, settings) and r["_R"]]
        if mrows:
            part = f"{method}-set-{settings}" if settings else method
            out.append((plots.series_label(method, settings), part, mrows))
    return out


def multilabel_series(rows: list[dict]) -> list[tuple[str, str, list[dict]]]:
    return [
        (
            plots.norm_label(*key),
            f"{key[0]}-{key[1]}" + (f"-set-{key[2]}" if key[2] else ""),
            [r for r in rows if (r["method"], r["norm"], r["settings"]) == key],
        )
        for key in plots.ml_series(rows)
    ]


def figures(spec: Figures, stream: Stream, rows: list[dict]) -> tuple[list[str], set[str]]:
    """Draw a stream's figures; returns the page lines that show and link them and the file names written."""
    overview = f"{stream.stem}__{spec.overview_file}.png"
    spec.overview(rows, stream.caption(spec.overview_caption), stream.plot_dir / overview)
    lines, written, links = [f"![{spec.overview_alt}](plots/{overview})", ""], {overview}, []
    for label, part, srows in spec.series(rows):
        name = f"{stream.stem}__{spec.matrix_tag}__{safe_name(part)}.png"
        title = f"{stream.title} {stream.protocol}, {label}: {spec.matrix_caption}"
        if spec.matrix(srows, title, stream.plot_dir / name):
            written.add(name)
            links.append(f"[{md_cell(label)}](plots/{name})")
    return lines + ([spec.links + " · ".join(links), ""] if links else []), written


# ----------------------------------------------------------------------------- what differs between the kinds
@dataclass(frozen=True)
class PageKind:
    """The kind-specific parts of a page."""

    streams: tuple[str, str]  # what a stream is called, and why there can be several
    intro: Callable[[str, list[dict]], list[str]]  # lines under the headline (stream hash, rows)
    after_table: Callable[[list[dict]], list[str]]  # lines after the full table
    figures: Figures
    notes: Callable[[str], list[str]]  # kind-specific bullets of the Notes section (csv name)
    warning: Callable[[list[dict]], list[str]]  # lines at the top of the page


def encoder_warning(rows: list[dict]) -> list[str]:
    if rows and any(r["pretrained_encoders"] is not True for r in rows):
        return ["> " + notes.encoder_note(r["pretrained_encoders"] for r in rows), ""]
    return []


PAGE_KINDS = {
    SINGLE: PageKind(
        ("class streams", "(different class order, split or steps)"),
        notes.single_label_intro,
        notes.method_notes,
        Figures(
            plots.accuracy_curves,
            "acc",
            "A_t vs seen classes",
            "A_t, mean ± std over seeds",
            single_label_series,
            plots.r_heatmaps,
            "R",
            "R[t][j] (%), mean over seeds",
            "Accuracy matrices R (heatmaps): ",
        ),
        notes.single_label_notes,
        encoder_warning,
    ),
    MULTI: PageKind(
        ("streams", "(phase files)"),
        notes.multilabel_intro,
        lambda rows: [],
        Figures(
            plots.ml_curves,
            "curves",
            "per-phase metrics vs seen classes",
            "per-phase metrics, mean ± std over seeds",
            multilabel_series,
            plots.ap_matrix,
            "AP",
            "per-class AP after each phase",
            "Per-class AP matrices (heatmaps): ",
        ),
        notes.multilabel_notes,
        lambda rows: [],
    ),
}


# ----------------------------------------------------------------------------- page skeleton
def page_head(suite: str, info: Mapping, rows: list[dict], csv_name: str) -> list[str]:
    """Title, record count and newest record, the caller's notes; "no results" when there are none."""
    newest = max((r["_created"] for r in rows), key=created_key, default=None)
    lines = [
        f"# Leaderboard: {md_cell(info.get('title', suite))}",
        "",
        f"{len(rows)} result records; newest record: {newest or 'none'}. [Index](README.md) · [{csv_name}]({csv_name})",
        "",
    ]
    for note in info.get("notes", []) or []:
        lines += [f"> {note}", ""]
    return lines + ([] if rows else ["No results yet for this suite.", ""])


def section_heading(dataset: str, protocol: str, titles: Mapping[str, str]) -> list[str]:
    dtitle = titles.get(dataset, dataset)
    heading = f"{md_cell(dtitle)} (`{dataset}`)" if dtitle != dataset else f"`{dataset}`"
    return [f"## {heading}, protocol `{protocol}`", ""]


def sections(rows: list[dict]) -> list[tuple[str, str, list[tuple[str, list[dict]]]]]:
    """(dataset, protocol, [(stream hash, its rows), ...]) sorted; within a section the newest stream
    first (most likely the current one), ties by hash: deterministic. Streams are never merged."""
    by_dp: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        by_dp.setdefault((r["dataset"], r["protocol"]), {}).setdefault(r["stream_hash"], []).append(r)
    out = []
    for (dataset, protocol), streams in sorted(by_dp.items()):
        order = sorted(streams)
        order.sort(key=lambda h: max(created_key(r["_created"]) for r in streams[h]), reverse=True)
        out.append((dataset, protocol, [(h, streams[h]) for h in order]))
    return out


def several_streams(streams: list, what: str, why: str) -> list[str]:
    if len(streams) < 2:
        return []
    return [
        f"> **{len(streams)} different {what}** exist for this dataset and protocol {why}. "
        "Each has its own table below; their numbers are never averaged together.",
        "",
    ]


def missing_protocols(missing: Mapping[str, Sequence[str]], titles: Mapping[str, str]) -> list[str]:
    """A heading per protocol of every missing dataset, so the page shows where its table will be."""
    lines = []
    for dataset, protocols in sorted(missing.items()):
        for protocol in protocols:
            lines += section_heading(dataset, protocol, titles) + [
                "**Missing**: the dataset is not on this machine, so this table is empty; "
                "[Missing datasets](#missing-datasets) says what to put where.",
                "",
            ]
    return lines


def stream_block(kind: Kind, stream: Stream, rows: list[dict], several: bool) -> tuple[list[str], set[str], list[str]]:
    """One stream's part of a section: headline table, context, full table (collapsed), notes, figures.
    Returns the lines, the figure files written and the metric keys shown."""
    page_kind = PAGE_KINDS[kind.name]
    headline, keys = headline_table(rows, kind)
    table, table_keys = full_table(rows, kind)
    figure_lines, written = figures(page_kind.figures, stream, rows)
    lines = ([f"### Stream `{stream.hash[:12]}`", ""] if several else []) + headline + [""]
    lines += page_kind.intro(stream.hash, rows)
    lines += details("All metrics and costs", table) + [""] + page_kind.after_table(rows) + figure_lines
    return lines, written, keys + table_keys


def overrides_note(rows: list[dict]) -> list[str]:
    """The dagger's meaning, with every set of settings that was used."""
    seen = sorted({r["settings"] for r in rows if r["settings"]})
    if not seen:
        return []
    used = "; ".join(f"`{md_cell(s)}`" for s in seen)
    return [
        f"- {DAGGER} run with command-line settings (`--epochs`, `--set KEY=VALUE`, `--precision`), shown beside the "
        "method: not the method's default configuration (with `epochs`: not the reference protocol). Each is its own "
        f"row, never averaged with the default runs and never bold. Settings used: {used}."
    ]


def suite_page(
    suite: str,
    kind: Kind,
    rows: list[dict],
    errors: list[dict],
    info: Mapping,
    titles: Mapping[str, str],
    out_dir: Path,
) -> tuple[str, set[str]]:
    """The markdown of one suite page (figures are written as a side effect); returns it and the figure files."""
    page_kind, csv_name = PAGE_KINDS[kind.name], kind.csv_name(safe_name(suite))
    lines = page_head(suite, info, rows, csv_name)
    lines[4:4] = page_kind.warning(rows)
    written: set[str] = set()
    keys: list[str] = []
    for dataset, protocol, streams in sections(rows):
        lines += section_heading(dataset, protocol, titles) + several_streams(streams, *page_kind.streams)
        for h, srows in streams:
            stream = Stream(suite, dataset, protocol, h, titles.get(dataset, dataset), out_dir / "plots")
            block, files, shown = stream_block(kind, stream, srows, len(streams) > 1)
            lines, written, keys = lines + block, written | files, keys + shown
    lines += missing_protocols(info.get("missing_protocols") or {}, titles)
    lines += ["## Missing datasets", "", *notes.missing_datasets(info.get("missing")), ""]
    if info.get("reported"):
        table, shown = reported_table(info["reported"], kind, titles)
        lines += ["## Reported by the references (not this harness's results)", "", *table, ""]
        keys += shown
    lines += ["## Failed cells", "", *notes.failed_cells(errors), ""]
    lines += ["## Notes", "", *overrides_note(rows), *page_kind.notes(csv_name), *footnotes(keys)]
    return "\n".join(lines) + "\n", written


# ----------------------------------------------------------------------------- the whole leaderboard
def suite_kind(results_dir: Path, suite: str, info: Mapping) -> str:
    """The caller's kind for the suite, else its first record's, else single-label."""
    if info.get("kind"):
        return info["kind"]
    if (Path(results_dir) / suite).is_dir():
        for rec in iter_records(results_dir, suite):
            return record_kind(rec)
    return SINGLE


def suites_in(results_dir: Path) -> list[str]:
    root = Path(results_dir)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []


def index_line(suite: str, info: Mapping, page: str, rows: list[dict], errors: list[dict]) -> str:
    """The README's line of one suite: counts, and a flag when some encoders were random."""
    random = " **(random encoders)**" if any(r.get("pretrained_encoders") is False for r in rows) else ""
    return (
        f"- [{md_cell(info.get('title', suite))}]({page}): {len(rows)} records, "
        f"{len({r['dataset'] for r in rows})} datasets, {len(info.get('missing') or {})} missing datasets, "
        f"{len(errors)} failed cells{random}"
    )


def readme(index: list[str], rows: list[dict], produced_by: str | None, multilabel: bool) -> str:
    newest = max((r["_created"] for r in rows), key=created_key, default=None)
    selection = (
        "All numbers: best-validation checkpoint of each step (as in the reference), except methods whose "
        "reference selects nothing (noted under their table). Every record, with last-epoch numbers too: "
        "[results.csv](results.csv)."
    )
    if multilabel:
        selection = (
            "Single-label suites: best-validation checkpoint of each step (as in the reference; methods whose "
            "reference selects nothing keep the last epoch, noted under their table); every record, with "
            "last-epoch numbers too: [results.csv](results.csv). Multi-label suites: the last-epoch model of "
            "each phase (the reference has no validation split); every record: results-<suite>.csv."
        )
    made = f"; results produced by `{produced_by}`." if produced_by else "."
    return "\n".join(
        [
            "# Leaderboard",
            "",
            *index,
            "",
            f"Rendered by `python -m benchmarks.report` from the JSON result records alone ({len(rows)} records){made}",
            f"Newest record: {newest or 'none'}.",
            "",
            selection,
            "",
        ]
    )


def write(out_dir: Path, name: str, text: str, written: dict[str, Path]) -> None:
    atomic_write_text(out_dir / name, text)
    written[name] = out_dir / name
    log.debug("wrote %s", out_dir / name)


def prune_plots(plot_dir: Path, keep: set[str]) -> None:
    """plots/ belongs to the leaderboard: drop figures of cells that no longer exist."""
    if plot_dir.is_dir():
        for p in plot_dir.glob("*.png"):
            if p.name not in keep:
                p.unlink()


def render(
    results_dir: Path,
    out_dir: Path,
    suites: Mapping[str, Mapping] | None = None,
    *,
    titles: Mapping[str, str] | None = None,
    produced_by: str | None = None,
    families: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Render README.md, one <suite>.md per suite, plots/ and the results CSVs into out_dir.

    suites: {suite: {"missing": {dataset: message} | [message, ...], "missing_protocols": {dataset: [protocol]},
        "title": str, "notes": [str], "kind": "single-label" | "multilabel",
        "reported": [{dataset, protocol, method, modality, <metric>: value, source, harness_differs?}]}}, all keys
        optional. A suite named here gets a page even with no records (e.g. every dataset missing);
        a suite found under results_dir but not named here gets one too.
    titles: dataset name -> display title (default: the name).
    produced_by: how the results were produced, e.g. the command line (shown in README.md).
    families: method name -> family (the method registry's MethodSpec.family), for records that do not carry their
        `family`; without it such records count as seed methods (rows.family_of).
    Returns {"<suite>.md": path, "results-<suite>.csv": path, ..., "results.csv": path, "README.md": path}.
    """
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    suites, titles = dict(suites or {}), dict(titles or {})
    written: dict[str, Path] = {}
    figures_kept: set[str] = set()
    index, by_kind = [], {SINGLE: [], MULTI: []}
    kinds_seen = set()
    for suite in sorted(set(suites) | set(suites_in(results_dir))):
        info = suites.get(suite, {})
        kind = KINDS[suite_kind(results_dir, suite, info)]
        rows = load_rows(results_dir, suite, kind, families)
        errors = list(iter_errors(results_dir, suite)) if (results_dir / suite).is_dir() else []
        text, files = suite_page(suite, kind, rows, errors, info, titles, out_dir)
        if kind.name == MULTI:
            csv = kind.csv_name(safe_name(suite))
            write(out_dir, csv, results_frame(rows, kind).to_csv(index=False, lineterminator="\n"), written)
        write(out_dir, f"{safe_name(suite)}.md", text, written)
        figures_kept |= files
        by_kind[kind.name] += rows
        kinds_seen.add(kind.name)
        index.append(index_line(suite, info, f"{safe_name(suite)}.md", rows, errors))
    single = results_frame(by_kind[SINGLE], KINDS[SINGLE]).to_csv(index=False, lineterminator="\n")
    write(out_dir, "results.csv", single, written)
    all_rows = by_kind[SINGLE] + by_kind[MULTI]
    write(out_dir, "README.md", readme(index, all_rows, produced_by, MULTI in kinds_seen), written)
    prune_plots(out_dir / "plots", figures_kept)
    return written
