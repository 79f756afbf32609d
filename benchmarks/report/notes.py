"""The prose blocks of a leaderboard page that are neither a table nor a figure.

Why they are said on the page and not left to the records: a reader of the page must see, next to the numbers, what
would make them misleading (random encoders, a method that keeps its last epoch, a missing dataset, a failed cell)
without opening a JSON file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from benchmarks.report.tables import md_cell

SELECTION_LINE = (
    "Numbers from the best-validation checkpoint of each step, as in the reference, unless a note under the table "
    "says a method keeps its last-epoch model (as its own reference does); last-epoch numbers are in "
    "[results.csv](results.csv)."
)


def encoder_note(values: Iterable, short: bool = False) -> str:
    """Pretrained or random encoders: random ones are said loudly, since the numbers then mean little.

    `short` is the one-line form under each table (the page opens with the long warning).
    """
    vals = set(values)
    if vals == {True}:
        return "Encoders: pretrained."
    if False in vals and short:
        some = " (some runs)" if len(vals) > 1 else ""
        return f"Encoders: **⚠ RANDOM, not pretrained{some}**: see the warning at the top."
    if False in vals:
        which = "some runs" if len(vals) > 1 else "all runs"
        return (
            f"**⚠ RANDOM ENCODERS ({which}): the feature encoders were NOT pretrained, so these numbers do not "
            "measure the methods as published. Provide the pretrained checkpoints and re-extract the features.**"
        )
    return "Encoders: pretraining unknown (the records do not say)."


def last_values(rows: list[dict], key: str) -> list:
    """The value after the last step of a per-step method metric, for every row that has it."""
    return [v for r in rows for v in ((r["_method_metrics"].get(key) or [])[-1:]) if v is not None]


def method_facts(rows: list[dict]) -> list[str]:
    """What a reader must know about one method's rows: model selection, towers, MCIL diagnostics."""
    facts = []
    if any(r["selection"] == "training-free" for r in rows):
        facts.append("training-free: one closed-form statistics pass per step (no epochs, nothing selected)")
    elif any(r["selection"] == "last" for r in rows):
        facts.append("last-epoch model of each step (no validation selection, as its reference)")
    towers = sorted({str(r["towers"]) for r in rows if r.get("towers")})
    if towers:
        inits = sorted(
            {
                str(w.get("init", "pretrained weights loaded"))
                for r in rows
                if (w := r["_method_info"].get("weights")) is not None
            }
        )
        facts.append(f"towers {', '.join(towers)} ({'; '.join(inits)})")
    if fired := last_values(rows, "fusion_fired_test"):
        facts.append(
            f"fusion fired on {100 * np.mean(fired):.1f} % of test samples after the last step (mean over seeds)"
        )
    if sel := last_values(rows, "task_selection_acc"):
        facts.append(f"task-selection accuracy after the last step {np.mean(sel):.1f} %")
    return facts


def method_notes(rows: list[dict]) -> list[str]:
    """Per-method facts under a single-label table, one bullet per method that has any."""
    out = []
    for method in sorted({r["method"] for r in rows}):
        if facts := method_facts([r for r in rows if r["method"] == method]):
            out.append(f"- `{md_cell(method)}`: " + "; ".join(facts) + ".")
    return out + [""] if out else []


def failed_cells(errors: list[dict]) -> list[str]:
    """One bullet per error record with its last message line, and the tail of a traceback."""
    if not errors:
        return ["None."]
    fields = ("dataset", "protocol", "method", "modality", "seed")
    out = []
    for e in sorted(errors, key=lambda e: tuple(str(e.get("cell", {}).get(k, "")) for k in fields)):
        c = e.get("cell", {})
        where = " / ".join(str(c.get(k, "?")) for k in fields[:-1]) + f" / seed {c.get('seed', '?')}"
        msg = str(e.get("error", "")).strip().splitlines() or ["(no message)"]
        out.append(f"- `{where}`: {md_cell(msg[-1])}")
        if len(msg) > 1:  # keep the tail of a traceback readable, not the whole thing
            out += ["", "  ```", *("  " + line for line in msg[-15:]), "  ```", ""]
    return out


def missing_datasets(missing) -> list[str]:
    """One bullet per missing dataset; its (multi-line) instructions verbatim in a text block."""
    if not missing:
        return ["None."]
    items = sorted(missing.items()) if isinstance(missing, Mapping) else [(None, m) for m in missing]
    lines = []
    for name, message in items:
        first, _, rest = str(message).partition("\n")
        lines.append(f"- {'**' + md_cell(name) + '**: ' if name else ''}{md_cell(first)}")
        if rest.strip():
            lines += ["", "  ```text", *("  " + line for line in rest.splitlines()), "  ```", ""]
    return lines


def fmt_steps(classes_per_step: Sequence[int]) -> str:
    k = list(classes_per_step)
    if k and len(set(k)) == 1:
        return f"{len(k)} step{'s' if len(k) > 1 else ''} x {k[0]} classes"
    return f"{len(k)} steps, classes per step {k}"


def single_label_intro(h: str, rows: list[dict]) -> list[str]:
    """Under a single-label headline: model selection, stream, steps, memory, encoders."""
    first = rows[0]
    return [
        f"{SELECTION_LINE} Stream `{h[:12]}`; {fmt_steps(first['_classes_per_step'])}; memory {first['_memory']} "
        "exemplars.",
        "",
        encoder_note((r["pretrained_encoders"] for r in rows), short=True),
        "",
    ]


def multilabel_intro(h: str, rows: list[dict]) -> list[str]:
    """Under a multi-label headline: model selection, stream, phases, front end, CNN14 widths, skipped records."""
    first, fr = rows[0], rows[0]["_frames"]
    widths = " / ".join(w or "?" for w in sorted({r["widths"] for r in rows}))
    front = f"log-mel {fr.get('seconds')} s at {fr.get('sample_rate')} Hz, {fr.get('n_mels')} mels" if fr else "log-mel"
    skipped = f" {first['_skipped']} skipped records (listed in the records)." if first["_skipped"] else ""
    return [
        f"Last-epoch model of each phase (no validation split, as in the reference). Stream `{h[:12]}`; "
        f"classes per phase {first['_classes_per_step']}; {front}; CNN14 widths {widths}.{skipped}",
        "",
    ]


def single_label_notes(csv_name: str) -> list[str]:
    return [
        "- ± is the sample standard deviation over seeds (0 when n=1); n is the number of seeds with a value; "
        "n/a: undefined (e.g. forgetting with a single step) or not recorded.",
        "- Train time: mean over seeds; peak memory: max over seeds (rss = host memory, cuda = GPU memory).",
    ]


def multilabel_notes(csv_name: str) -> list[str]:
    return [
        "- Rows: method × normalisation of the CNN14 conv blocks (BN: BatchNorm; GN: GroupNorm(32); CN: Continual "
        "Normalization = GroupNorm without affine, then BatchNorm).",
        "- ± is the sample standard deviation over seeds (0 when n=1); n is the number of seeds with a value; n/a: "
        "undefined (e.g. no class with a positive test clip) or not recorded. All values in %.",
        "- Evaluated after each phase t on its cumulative test set, over the classes seen so far; threshold 0.5 "
        "on the sigmoid for F1 and the thresholded mAP. A class without positive test clips in a phase has no AP "
        "and is left out of mAP; a class with F1 = 0/0 counts as 0 in macro-F1 (scikit-learn's zero_division=0, as "
        "the reference; benchmarks/metrics/multilabel.py)."
        f" lwlrap and the thresholded mAP's forgetting: [{csv_name}]({csv_name}).",
    ]
