"""The leaderboard renders hand-made records correctly and deterministically.

Fake results dir (suite "audio-visual"):
- synth_av / 3x2, stream S1: methods finetune, icarl-nme x modalities audio, audio-visual x seeds 0, 1
  (8 records), plus icarl-nme / audio-visual seed 2 with --epochs 2 (reference_protocol false).
- synth_av / 3x2, stream S2 (another class order): finetune / audio seed 0: never averaged with S1.
- synth_one / 1x4: a single step, so every forgetting metric is None -> "n/a".
- one error record (finetune / visual seed 0).
Multi-label suite "audio-multilabel" (own fixture): ml_a and ml_b with BN, seeds 0 and 1, hand-set summaries.
"""

from __future__ import annotations

import hashlib
import re

import pandas as pd
import pytest

from benchmarks.core.records import error_path, record_path, write_error, write_record
from benchmarks.metrics import REGISTRY
from benchmarks.metrics import accuracy as M
from benchmarks.report import pages as LB
from benchmarks.report.rows import CSV_COLUMNS
from benchmarks.report.tables import DAGGER

SUITE = "audio-visual"
S1 = hashlib.sha256(b"stream-1").hexdigest()
S2 = hashlib.sha256(b"stream-2").hexdigest()
S3 = hashlib.sha256(b"stream-3").hexdigest()
COUNTS = [10, 10, 10]

# finetune / audio, the cell whose numbers are checked by hand:
#   seed 0: R = [[80], [40, 90], [20, 50, 95]]  -> A = [80, 65, 55]
#           avg inc = 200/3 = 66.667 ; last = 55 ; avg forgetting = mean(80-40, mean(80-20, 90-50)) = mean(40, 50) = 45
#           final forgetting = mean(80-20, 90-50) = 50 ; BWT = mean(20-80, 50-90) = -50
#   seed 1: R = [[70], [30, 80], [10, 40, 85]]  -> A = [70, 55, 45]
#           avg inc = 170/3 = 56.667 ; last = 45 ; avg forgetting = mean(40, mean(60, 40)) = 45 ; final 50 ; BWT -50
#   mean ± sample std: avg inc 61.67 ± 7.07 (10/sqrt 2) ; last 50.00 ± 7.07 ; forgetting 45.00 ± 0.00 ;
#   final 50.00 ± 0.00 ; BWT -50.00 ± 0.00 ; train time mean(10, 20) = 15.0 ; peak memory max(100, 300) = 300
BASE_R = {0: [[80.0], [40.0, 90.0], [20.0, 50.0, 95.0]], 1: [[70.0], [30.0, 80.0], [10.0, 40.0, 85.0]]}
# Other cells: the same matrices shifted by a constant (A shifts by it, forgetting and BWT do not).
SHIFT = {
    ("finetune", "audio"): 0.0,
    ("finetune", "audio-visual"): 5.0,
    ("icarl-nme", "audio"): 2.0,
    ("icarl-nme", "audio-visual"): 4.0,
}


def _result(R, counts):
    A = M.pooled_accuracy(R, counts)
    return {"R": R, "A": A, "test_counts": counts, "metrics": M.summarize(R, A)}


def fake_record(
    dataset,
    protocol,
    method,
    modality,
    seed,
    R,
    *,
    stream=S1,
    counts=COUNTS,
    override=None,
    minute=0,
    train_seconds=10.0,
    memory_mb=100.0,
    per_step=2,
):
    """A record with the fields the leaderboard reads; last-epoch numbers are the best-val ones minus 1."""
    best = _result(R, counts)
    last = _result([[v - 1.0 for v in row] for row in R], counts)
    return {
        "suite": SUITE,
        "cell": {"dataset": dataset, "protocol": protocol, "method": method, "modality": modality, "seed": seed},
        "cell_key": f"{dataset}-{protocol}-{method}-{modality}-{seed}",
        "config": {"epochs": override or 30},
        "reference_protocol": override is None,
        "epochs_override": override,
        "stream": {
            "hash": stream,
            "classes_per_step": [per_step] * len(R),
            "memory": 20,
            "class_names": [],
            "counts": {"train": [50] * len(R), "val": [5] * len(R), "test": counts},
        },
        "results": {
            "selection": "best-val",
            **best,
            "last_epoch": last,
            "best_val_epoch": [1] * len(R),
            "val_acc": [50.0] * len(R),
        },
        "cost": {
            "train_seconds": train_seconds,
            "wall_seconds": train_seconds + 1,
            "peak_memory_mb": memory_mb,
            "peak_memory_kind": "rss",
            "parameters": 123456,
        },
        "encoders": {"pretrained": False},
        "environment": {},
        "seeds": {"train_seed": seed},
        "created": f"2026-11-21T22:{minute:02d}:00+00:00",
    }


def write_fake_results(results_dir):
    """Write the fake results dir described in the module docstring; returns the number of records."""
    n = 0
    for (method, modality), c in SHIFT.items():
        for seed, R in BASE_R.items():
            rec = fake_record(
                "synth_av",
                "3x2",
                method,
                modality,
                seed,
                [[v + c for v in row] for row in R],
                minute=n,
                train_seconds=10.0 * (seed + 1),
                memory_mb=100.0 + 200.0 * seed,
            )
            write_record(record_path(results_dir, SUITE, "synth_av", "3x2", method, modality, seed), rec)
            n += 1
    over = fake_record("synth_av", "3x2", "icarl-nme", "audio-visual", 2, BASE_R[0], override=2, minute=n)
    write_record(record_path(results_dir, SUITE, "synth_av", "3x2", "icarl-nme", "audio-visual", 2), over)
    # Stream S2 is older than S1 (minute 0 vs up to 9), so its table comes second.
    flat = [[99.0], [99.0, 99.0], [99.0, 99.0, 99.0]]
    other = fake_record("synth_av", "3x2", "finetune", "audio", 0, flat, stream=S2, minute=0)
    # The results layout has one file per cell; a second stream of the same cell lives in another results dir in
    # practice, so here it is written under seed 7 to keep both.
    other["cell"]["seed"] = 7
    write_record(record_path(results_dir, SUITE, "synth_av", "3x2", "finetune", "audio", 7), other)
    single = fake_record(
        "synth_one", "1x4", "finetune", "audio", 0, [[60.0]], stream=S3, counts=[8], minute=30, per_step=4
    )
    write_record(record_path(results_dir, SUITE, "synth_one", "1x4", "finetune", "audio", 0), single)
    cell = {"dataset": "synth_av", "protocol": "3x2", "method": "finetune", "modality": "visual", "seed": 0}
    trace = "Traceback (most recent call last):\n  ...\nRuntimeError: out of memory"
    write_error(record_path(results_dir, SUITE, **cell), cell, trace)
    return n + 3


SUITES = {
    SUITE: {"missing": {"ave": "AVE not found under data/raw/AVE: download it and run `make features`."}},
    "visual-only": {"missing": {"k-s": "Kinetics-Sounds not found: see datasets/README."}},
}
TITLES = {"synth_av": "Synthetic AV"}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    base = tmp_path_factory.mktemp("lb")
    results, out = base / "results", base / "out"
    n = write_fake_results(results)
    written = LB.render(results, out, SUITES, titles=TITLES, produced_by="make run")
    page = (out / f"{SUITE}.md").read_text()
    return {"results": results, "out": out, "n": n, "written": written, "page": page}


def cells_of(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _row(page, method, modality, stream=S1):
    """The full-table row of (method, modality) in the given stream's section of synth_av."""
    section = page.split(f"Stream `{stream[:12]}`;", 1)[1].split("![", 1)[0]
    for line in section.splitlines():
        cells = cells_of(line)
        if len(cells) > 2 and cells[0] == method and cells[1] == modality:
            return cells
    raise AssertionError(f"no row {method} / {modality}")


def headline(page, after):
    """The cells of the headline table that follows the text `after` (header, then rows; no alignment row)."""
    section = page.split(after, 1)[1].split("Each cell:", 1)[0]
    return [cells_of(line) for line in section.splitlines() if line.startswith("| ")]


def test_table_values_are_hand_computed_means_and_stds(rendered):
    cells = _row(rendered["page"], "finetune", "audio")
    assert cells[2:7] == [
        "61.67 ± 7.07 (n=2)",
        "50.00 ± 7.07 (n=2)",
        "45.00 ± 0.00 (n=2)",
        "50.00 ± 0.00 (n=2)",
        "-50.00 ± 0.00 (n=2)",
    ]
    assert cells[7:] == ["15.0", "300 (rss)", "123,456"]
    # finetune / audio-visual is shifted by +5: accuracies move, forgetting and BWT do not.
    assert _row(rendered["page"], "finetune", "audio-visual")[2:4] == ["66.67 ± 7.07 (n=2)", "55.00 ± 7.07 (n=2)"]


def test_rows_sorted_by_method_then_modality(rendered):
    section = rendered["page"].split(f"Stream `{S1[:12]}`;", 1)[1].split("![", 1)[0]
    rows = [
        tuple(cells_of(line)[:2]) for line in section.splitlines() if line.startswith("| ") and "Method" not in line
    ]
    assert rows == [
        ("finetune", "audio"),
        ("finetune", "audio-visual"),
        ("icarl-nme", "audio"),
        ("icarl-nme", "audio-visual"),
        (f"icarl-nme {DAGGER} (epochs=2)", "audio-visual"),
    ]


def test_headline_bold_best_per_column_last_accuracy_and_per_cell_n(rendered):
    # S1: finetune audio 61.67 / 50 (n=2), audio-visual +5; icarl-nme audio +2, audio-visual +4; the --epochs run
    # (icarl-nme †, audio-visual, n=1) has A = [80, 65, 55] -> 66.67 / 55: as good as the best but never bold.
    table = headline(rendered["page"], f"### Stream `{S1[:12]}`")
    assert table[0] == ["Method", "audio", "audio-visual"]  # n differs (2 and 1): no n in the header
    assert table[1] == ["finetune", "61.7 ± 7.1 / 50.0 (n=2)", "**66.7** ± 7.1 / **55.0** (n=2)"]
    assert table[2] == ["icarl-nme", "**63.7** ± 7.1 / **52.0** (n=2)", "65.7 ± 7.1 / 54.0 (n=2)"]
    assert table[3] == [f"icarl-nme {DAGGER} (epochs=2)", "–", "66.7 ± 0.0 / 55.0 (n=1)"]
    assert len(table) == 4


def test_headline_n_once_in_the_header_when_equal(rendered):
    page = rendered["page"]
    one = [["Method (n = 1 seed)", "audio"], ["finetune", "**60.0** ± 0.0 / **60.0**"]]
    assert headline(page, "`synth_one`") == one
    assert headline(page, f"### Stream `{S2[:12]}`")[0] == ["Method (n = 1 seed)", "audio"]
    legend = page.split("Each cell:", 1)[1].splitlines()[0]
    assert "average incremental accuracy" in legend and "last accuracy" in legend and "Bold: best" in legend


def test_headline_opens_every_section_and_the_full_table_is_collapsed(rendered):
    page = rendered["page"]
    for section in page.split("\n## ")[1:3]:  # synth_av and synth_one
        body = section.split("\n", 2)[2].lstrip("\n")
        assert body.startswith(("| Method", "> **2 different class streams**")), body[:80]
    block = "<details><summary>All metrics and costs</summary>\n\n| Method | Modality | Avg inc. acc. |"
    assert page.count(block) == 3  # S1, S2, synth_one
    assert page.count("|\n\n</details>") == 3
    for start in (f"### Stream `{S1[:12]}`", f"### Stream `{S2[:12]}`", "`synth_one`"):
        part = page.split(start, 1)[1]
        assert part.index("| Method") < part.index("Each cell:") < part.index(block)


def test_override_marked_and_not_averaged(rendered):
    page = rendered["page"]
    # the reference icarl-nme / audio-visual row has its 2 seeds only; the --epochs run is its own row (n=1)
    assert _row(page, "icarl-nme", "audio-visual")[2].endswith("(n=2)")
    assert _row(page, f"icarl-nme {DAGGER} (epochs=2)", "audio-visual")[2] == "66.67 ± 0.00 (n=1)"
    assert f"{DAGGER} run with command-line settings" in page and "Settings used: `epochs=2`." in page


def test_streams_never_averaged(rendered):
    page = rendered["page"]
    assert "2 different class streams" in page and "never averaged" in page
    assert page.index(f"### Stream `{S1[:12]}`") < page.index(f"### Stream `{S2[:12]}`")  # newest stream first
    assert _row(page, "finetune", "audio", stream=S2)[2] == "99.00 ± 0.00 (n=1)"
    assert _row(page, "finetune", "audio")[2].endswith("(n=2)")


def test_na_for_undefined_metrics(rendered):
    section = rendered["page"].split("`synth_one`", 1)[1].split("![", 1)[0]
    row = next(cells_of(line) for line in section.splitlines() if line.startswith("| finetune | audio |"))
    assert row[2:7] == ["60.00 ± 0.00 (n=1)", "60.00 ± 0.00 (n=1)", "n/a", "n/a", "n/a"]


def test_notes_sections_and_footnotes(rendered):
    page = rendered["page"]
    assert "## Missing datasets" in page and "AVE not found under data/raw/AVE" in page
    assert "## Failed cells" in page and "synth_av / 3x2 / finetune / visual / seed 0" in page
    assert "RuntimeError: out of memory" in page
    for m in M.METRICS:
        assert f"**{m.name}**: {m.formula}" in page
    assert "RANDOM ENCODERS" in page
    assert "best-validation checkpoint of each step, as in the reference, unless a note under the table" in page
    assert "last-epoch numbers are in" in page
    assert "Synthetic AV (`synth_av`)" in page and "3 steps x 2 classes; memory 20 exemplars" in page


def table_headers(page):
    """The header row of every markdown table on the page."""
    lines = page.splitlines()
    return [cells_of(a) for a, b in zip(lines, lines[1:]) if a.startswith("| ") and b.startswith("|---")]


#: table headers that are no metric
NOT_METRICS = {
    "Method",
    "Modality",
    "Norm",
    "Dataset",
    "Protocol",
    "Source",
    "Train time (s, mean)",
    "Peak memory (MB, max)",
    "Parameters",
    "audio",
    "visual",
    "audio-visual",
}


def assert_footnoted(page, keys):
    for key in keys:
        entry = REGISTRY[key]
        assert entry.formula.strip() and entry.name.strip(), key
        assert f"**{entry.name}**: {entry.formula}" in page, key
        if entry.per_phase:
            assert f"**{REGISTRY[entry.per_phase].name}** (after each phase t): " in page, key


def test_every_metric_in_a_table_has_a_registry_formula_in_the_footnotes(rendered):
    page = rendered["page"]
    by_name = {m.name: k for k, m in REGISTRY.items()}
    shown = [h for header in table_headers(page) for h in header if h.split(" (n = ")[0] not in NOT_METRICS]
    assert shown and all(h in by_name for h in shown), [h for h in shown if h not in by_name]
    assert_footnoted(page, {by_name[h] for h in shown} | {"avg_inc_acc", "last_acc"})  # + the headline's keys


def test_readme_index(rendered):
    out = rendered["out"]
    readme = (out / "README.md").read_text()
    assert f"]({SUITE}.md)" in readme and "](visual-only.md)" in readme
    assert "Newest record: 2026-11-21T22:30:00+00:00." in readme and "`make run`" in readme
    empty = (out / "visual-only.md").read_text()
    assert "No results yet" in empty and "Kinetics-Sounds not found" in empty


def test_plots_exist_are_linked_and_safe(rendered):
    out = rendered["out"]
    linked = set()
    for page in out.glob("*.md"):
        linked |= set(re.findall(r"\(plots/([^)]+\.png)\)", page.read_text()))
    on_disk = {p.name for p in (out / "plots").glob("*.png")}
    assert linked == on_disk and len(on_disk) == 8  # A_t: S1, S2, synth_one ; R: S1 finetune, icarl, icarl †, S2, one
    for name in on_disk:
        assert re.fullmatch(r"[A-Za-z0-9._-]+", name)
        data = (out / "plots" / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000


def test_csv_rows_and_columns(rendered):
    df = pd.read_csv(rendered["out"] / "results.csv")
    assert list(df.columns) == CSV_COLUMNS
    assert len(df) == rendered["n"] == 11
    assert df["stream_hash"].nunique() == 3
    r = df[(df.method == "finetune") & (df.modality == "audio") & (df.seed == 0) & (df.stream_hash == S1)].iloc[0]
    assert r["avg_inc_acc"] == pytest.approx(200 / 3) and r["last_epoch_avg_inc_acc"] == pytest.approx(200 / 3 - 1)
    assert df["reference_protocol"].sum() == 10 and df["epochs_override"].dropna().tolist() == [2]
    assert df[df.dataset == "synth_one"]["bwt"].isna().all()


def test_rerender_is_byte_identical(rendered, tmp_path):
    out = rendered["out"]
    before = {p.name: p.read_bytes() for p in list(out.glob("*.md")) + [out / "results.csv"]}
    LB.render(rendered["results"], out, SUITES, titles=TITLES, produced_by="make run")
    LB.render(rendered["results"], tmp_path, SUITES, titles=TITLES, produced_by="make run")
    for name, data in before.items():
        assert (out / name).read_bytes() == data, name
        assert (tmp_path / name).read_bytes() == data, name
    assert not list(out.rglob("*.tmp"))


def test_safe_name():
    assert LB.safe_name("audio-visual", "x_1.0") == "audio-visual__x_1.0"
    a, b = LB.safe_name("a/b"), LB.safe_name("a b")
    assert a != b and re.fullmatch(r"[A-Za-z0-9._-]+", a) and re.fullmatch(r"[A-Za-z0-9._-]+", b)


def test_error_file_written_where_expected(rendered):
    p = record_path(rendered["results"], SUITE, "synth_av", "3x2", "finetune", "visual", 0)
    assert error_path(p).exists() and not p.exists()


def test_reported_numbers_are_a_separate_table(tmp_path):
    reported = [
        {
            "dataset": "ave",
            "protocol": "4x7",
            "method": "av_cil",
            "modality": "audio-visual",
            "avg_inc_acc": 74.04,
            "avg_forgetting": 7.63,
            "source": "authors' log",
        }
    ]
    LB.render(tmp_path / "none", tmp_path / "lb", {"audio-visual": {"reported": reported}}, titles={"ave": "AVE"})
    page = (tmp_path / "lb" / "audio-visual.md").read_text()
    section = page.split("## Reported by the references (not this harness's results)")[1].split("##")[0]
    assert "| AVE | 4x7 | av_cil | audio-visual | 74.04 |  | 7.63 |  |  | authors' log |" in section
    assert_footnoted(page, [m.key for m in M.METRICS])  # footnotes even without a result table


def test_command_line_rerenders_from_records(rendered, tmp_path, capsys):
    from benchmarks.report.__main__ import main

    main(["--results", str(rendered["results"]), "--out", str(tmp_path / "lb")])
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'lb' / 'README.md'}" in out and f"wrote {tmp_path / 'lb' / 'results.csv'}" in out
    assert (tmp_path / "lb" / f"{SUITE}.md").read_text().count("<details>") == 3


# ----------------------------------------------------------------------------- multi-label pages
ML_SUITE = "audio-multilabel"
ML_STREAM = hashlib.sha256(b"ml-stream").hexdigest()
# per method: (avg mAP, final mAP, avg thresholded mAP, final thresholded mAP); seed 1 adds 2 to every value
ML_VALUES = {"ml_a": (50.0, 40.0, 20.0, 10.0), "ml_b": (45.0, 35.0, 25.0, 15.0)}


def fake_ml_record(method, seed):
    """A multi-label record with hand-set summaries (F1s fixed at 30 / 20, forgetting 5)."""
    a, f, ab, fb = (v + 2.0 * seed for v in ML_VALUES[method])
    metrics = {
        "avg_mAP": a,
        "final_mAP": f,
        "avg_mAP_binarized": ab,
        "final_mAP_binarized": fb,
        **{f"{p}_{m}": v for m in ("micro_f1", "macro_f1", "lwlrap") for p, v in (("avg", 30.0), ("final", 20.0))},
        **{f"forgetting_{m}": 5.0 for m in ("mAP", "micro_f1", "macro_f1", "lwlrap", "mAP_binarized")},
    }
    curves = {m: [40.0, 30.0] for m in ("mAP", "micro_f1", "macro_f1", "base_macro_f1")}
    return {
        "suite": ML_SUITE,
        "cell": {
            "dataset": "synth_tags",
            "protocol": "2+1",
            "method": f"{method}-bn",
            "modality": "audio",
            "seed": seed,
        },
        "reference_protocol": True,
        "epochs_override": None,
        "config": {"method": method, "norm": "bn"},
        "stream": {"hash": ML_STREAM, "classes_per_step": [2, 1], "skipped": []},
        "results": {
            "kind": "multilabel",
            "selection": "last-epoch",
            "method": method,
            "norm": "bn",
            "metrics": metrics,
            "curves": curves,
            "ap_matrix": [[50.0, None], [40.0, 30.0, 20.0]],
            "model": {"widths": [4, 8]},
        },
        "cost": {"train_seconds": 1.0, "peak_memory_mb": 10.0, "peak_memory_kind": "rss", "parameters": 1000},
        "encoders": {"frontend": {"seconds": 1.0, "sample_rate": 16000, "n_mels": 8}},
        "created": f"2026-11-21T23:0{seed}:00+00:00",
    }


@pytest.fixture(scope="module")
def ml_page(tmp_path_factory):
    base = tmp_path_factory.mktemp("ml")
    for method in ML_VALUES:
        for seed in (0, 1):
            write_record(
                record_path(base / "results", ML_SUITE, "synth_tags", "2+1", f"{method}-bn", "audio", seed),
                fake_ml_record(method, seed),
            )
    LB.render(base / "results", base / "out")
    return (base / "out" / f"{ML_SUITE}.md").read_text()


def test_multilabel_headline_shows_both_maps_labelled_with_best_bold(ml_page):
    table = headline(ml_page, "protocol `2+1`")
    assert table[0] == [
        "Method (n = 2 seeds)",
        "Norm",
        "mAP (scores)",
        "mAP (thresholded, as the papers)",
        "micro-F1",
        "macro-F1",
    ]
    # mean of seeds 0 and 1 (values + 0 and + 2): ml_a best in mAP (scores), ml_b in the thresholded mAP; F1s tie
    assert table[1] == [
        "ml_a",
        "BN",
        "**51.0** ± 1.4 / **41.0**",
        "21.0 ± 1.4 / 11.0",
        "**30.0** ± 0.0 / **20.0**",
        "**30.0** ± 0.0 / **20.0**",
    ]
    assert table[2] == [
        "ml_b",
        "BN",
        "46.0 ± 1.4 / 36.0",
        "**26.0** ± 1.4 / **16.0**",
        "**30.0** ± 0.0 / **20.0**",
        "**30.0** ± 0.0 / **20.0**",
    ]
    legend = ml_page.split("Each cell:", 1)[1].splitlines()[0]
    assert "the number the papers' tables report" in legend and "mAP (thresholded, as the papers)" in legend


def test_multilabel_page_details_and_footnotes_from_the_registry(ml_page):
    assert "<details><summary>All metrics and costs</summary>\n\n| Method | Norm | Avg mAP (scores) |" in ml_page
    by_name = {m.name: k for k, m in REGISTRY.items()}
    shown = [h for header in table_headers(ml_page) for h in header if h.split(" (n = ")[0] not in NOT_METRICS]
    keys = {by_name[h] for h in shown if h in by_name}
    # headline columns are per-phase names (their avg_/final_ keys are footnoted), full-table ones summary names
    assert {"mAP", "mAP_binarized", "micro_f1", "macro_f1", "avg_mAP", "forgetting_mAP"} <= keys
    assert all(h in by_name for h in shown)
    assert_footnoted(ml_page, [f"{p}_{m}" for p in ("avg", "final") for m in ("mAP", "mAP_binarized")])
    assert "| ml_a | BN | 51.00 ± 1.41 (n=2) |" in ml_page
