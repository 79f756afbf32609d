"""The differential's table: per method x modality, per-step accuracy and average incremental accuracy of each
side (mean +- std over seeds), their difference, and seconds per run. Pure functions of the run results."""

from __future__ import annotations

import math
import statistics

SIDES = ("reference", "harness")


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def avg_inc_acc(A: list[float]) -> float:
    """Mean of the per-step accuracies, step 0 included (the harness's avg_inc_acc; av_cil.md section 4)."""
    return statistics.fmean(A) if A and None not in A else math.nan


def summarize(runs: dict[str, list[dict]]) -> dict:
    """`runs`: side -> list of run results ({"A", "seconds", ...}), one per seed. Returns per side the per-step
    and average (mean, std), the per-seed averages, the mean seconds; and `diff` = harness - reference (means)."""
    out: dict = {}
    for side in SIDES:
        rs = runs.get(side) or []
        steps = max((len(r["A"]) for r in rs), default=0)
        out[side] = {
            "n": len(rs),
            "steps": [mean_std([r["A"][t] for r in rs if t < len(r["A"])]) for t in range(steps)],
            "avg": mean_std([avg_inc_acc(r["A"]) for r in rs]),
            "per_seed_avg": [avg_inc_acc(r["A"]) for r in rs],
            "seeds": [r.get("seed") for r in rs],
            "best_val_epoch": [r.get("best_val_epoch") for r in rs],
            "seconds": mean_std([r["seconds"] for r in rs])[0],
        }
    ref, har = out["reference"]["avg"][0], out["harness"]["avg"][0]
    out["diff"] = har - ref if not (math.isnan(ref) or math.isnan(har)) else math.nan
    return out


def _pm(ms: tuple[float, float]) -> str:
    m, s = ms
    return "–" if math.isnan(m) else f"{m:.1f} ± {s:.1f}"


def markdown(summaries: dict[tuple[str, str], dict], tolerance: float = 2.0) -> str:
    """One row per (method, modality) and side; the difference on the harness row (marked when beyond tolerance)."""
    lines = [
        "| method | modality | side | n | per-step accuracy (mean ± std) | avg inc acc | per-seed avg | diff | s/run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (method, modality), s in summaries.items():
        for side in SIDES:
            d = s[side]
            steps = ", ".join(_pm(x) for x in d["steps"]) or "–"
            seeds = ", ".join("–" if math.isnan(v) else f"{v:.1f}" for v in d["per_seed_avg"]) or "–"
            diff = ""
            if side == "harness" and not math.isnan(s["diff"]):
                diff = f"{s['diff']:+.1f}" + (" **!**" if abs(s["diff"]) > tolerance else "")
            secs = "–" if math.isnan(d["seconds"]) else f"{d['seconds']:.0f}"
            lines.append(
                f"| {method} | {modality} | {side} | {d['n']} | {steps} | {_pm(d['avg'])} | {seeds} | {diff} | {secs} |"
            )
    return "\n".join(lines) + "\n"


def trajectory_markdown(method: str, modality: str, runs: dict[str, list[dict]]) -> str:
    """Per seed and step: the selected epoch, its val accuracy, the final train loss, the test accuracy, and the
    exemplar memory after the step (its size; in brackets, how many of its samples the other side's run with the
    same seed also kept -- a diagnostic: the two sides draw from different random streams)."""
    lines = [
        f"#### {method} / {modality}",
        "",
        "| side | seed | step | selected epoch | val at selected | final train loss | test acc | exemplars (shared) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    memories = {(side, r.get("seed")): r.get("exemplars") or [] for side in SIDES for r in runs.get(side) or []}
    for side in SIDES:
        other = SIDES[1 - SIDES.index(side)]
        for r in runs.get(side) or []:
            mine, theirs = memories[(side, r.get("seed"))], memories.get((other, r.get("seed"))) or []
            for t, epochs in enumerate(r.get("trajectory") or []):
                kept = "–"
                if t < len(mine):
                    kept = f"{len(mine[t])}" + (f" ({len(set(mine[t]) & set(theirs[t]))})" if t < len(theirs) else "")
                best = (r.get("best_val_epoch") or [None] * (t + 1))[t]
                val = next((e["val"] for e in epochs if e["epoch"] == best), None)
                loss = epochs[-1]["loss"] if epochs else None
                acc = r["A"][t] if t < len(r["A"]) else None
                lines.append(
                    f"| {side} | {r.get('seed')} | {t} | {best} | {'–' if val is None else f'{val:.1f}'} | "
                    f"{'–' if loss is None else f'{loss:.3f}'} | {'–' if acc is None else f'{acc:.1f}'} | {kept} |"
                )
    return "\n".join(lines) + "\n"
