"""The leaderboard renders hand-made records correctly and deterministically.

Fake results dir (suite "audio-visual"):
- synth_av / 3x2, stream S1: methods finetune, icarl-nme x modalities audio, audio-visual x seeds 0, 1
  (8 records), plus icarl-nme / audio-visual seed 2 with --epochs 2 (reference_protocol false).
- synth_av / 3x2, stream S2 (another class order): finetune / audio seed 0: never averaged with S1.
- synth_one / 1x4: a single step, so every forgetting metric is None -> "n/a".
- one error record (finetune / visual seed 0).
"""
from __future__ import annotations

import hashlib
import re

import pandas as pd
import pytest

from benchmarks.report import pages as LB
from benchmarks.metrics import accuracy as M
from benchmarks.core.records import error_path, record_path, write_error, write_record

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
SHIFT = {("finetune", "audio"): 0.0, ("finetune", "audio-visual"): 5.0, ("icarl-nme", "audio"): 2.0, ("icarl-nme", "audio-visual"): 4.0}


def _result(R, counts):
    A = M.pooled_accuracy(R, counts)
    return {"R": R, "A": A, "test_counts": counts, "metrics": M.summarize(R, A)}


def fake_record(dataset, protocol, method, modality, seed, R, *, stream=S1, counts=COUNTS, override=None, minute=0,
                train_seconds=10.0, memory_mb=100.0, per_step=2):
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
        "stream": {"hash": stream, "classes_per_step": [per_step] * len(R), "memory": 20, "class_names": [],
                   "counts": {"train": [50] * len(R), "val": [5] * len(R), "test": counts}},
        "results": {"selection": "best-val", **best, "last_epoch": last, "best_val_epoch": [1] * len(R), "val_acc": [50.0] * len(R)},
        "cost": {"train_seconds": train_seconds, "wall_seconds": train_seconds + 1, "peak_memory_mb": memory_mb,
                 "peak_memory_kind": "rss", "parameters": 123456},
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
            rec = fake_record("synth_av", "3x2", method, modality, seed, [[v + c for v in row] for row in R],
                              minute=n, train_seconds=10.0 * (seed + 1), memory_mb=100.0 + 200.0 * seed)
            write_record(record_path(results_dir, SUITE, "synth_av", "3x2", method, modality, seed), rec)
            n += 1
    over = fake_record("synth_av", "3x2", "icarl-nme", "audio-visual", 2, BASE_R[0], override=2, minute=n)
    write_record(record_path(results_dir, SUITE, "synth_av", "3x2", "icarl-nme", "audio-visual", 2), over)
    # Stream S2 is older than S1 (minute 0 vs up to 9), so its table comes second.
    other = fake_record("synth_av", "3x2", "finetune", "audio", 0, [[99.0], [99.0, 99.0], [99.0, 99.0, 99.0]], stream=S2, minute=0)
    # The results layout has one file per cell; a second stream of the same cell lives in another results dir in
    # practice, so here it is written under seed 7 to keep both.
    other["cell"]["seed"] = 7
    write_record(record_path(results_dir, SUITE, "synth_av", "3x2", "finetune", "audio", 7), other)
    single = fake_record("synth_one", "1x4", "finetune", "audio", 0, [[60.0]], stream=S3, counts=[8], minute=30, per_step=4)
    write_record(record_path(results_dir, SUITE, "synth_one", "1x4", "finetune", "audio", 0), single)
    cell = {"dataset": "synth_av", "protocol": "3x2", "method": "finetune", "modality": "visual", "seed": 0}
    write_error(record_path(results_dir, SUITE, **cell), cell, "Traceback (most recent call last):\n  ...\nRuntimeError: out of memory")
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
    return {"results": results, "out": out, "n": n, "written": written, "page": (out / f"{SUITE}.md").read_text()}


def _row(page, method, modality, stream=S1):
    """The table row of (method, modality) in the given stream's section of synth_av."""
    section = page.split(f"Stream `{stream[:12]}`;", 1)[1].split("![", 1)[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 2 and cells[0] == method and cells[1] == modality:
            return cells
    raise AssertionError(f"no row {method} / {modality}")


def test_table_values_are_hand_computed_means_and_stds(rendered):
    cells = _row(rendered["page"], "finetune", "audio")
    assert cells[2:7] == ["61.67 ± 7.07 (n=2)", "50.00 ± 7.07 (n=2)", "45.00 ± 0.00 (n=2)", "50.00 ± 0.00 (n=2)", "-50.00 ± 0.00 (n=2)"]
    assert cells[7:] == ["15.0", "300 (rss)", "123,456"]
    # finetune / audio-visual is shifted by +5: accuracies move, forgetting and BWT do not.
    assert _row(rendered["page"], "finetune", "audio-visual")[2:4] == ["66.67 ± 7.07 (n=2)", "55.00 ± 7.07 (n=2)"]


def test_rows_sorted_by_method_then_modality(rendered):
    section = rendered["page"].split(f"Stream `{S1[:12]}`;", 1)[1].split("![", 1)[0]
    rows = [tuple(c.strip() for c in line.strip("|").split("|")[:2]) for line in section.splitlines() if line.startswith("| ") and "Method" not in line]
    assert rows == [("finetune", "audio"), ("finetune", "audio-visual"), ("icarl-nme", "audio"), ("icarl-nme", "audio-visual"),
                    (f"icarl-nme {LB.DAGGER}", "audio-visual")]


def test_override_marked_and_not_averaged(rendered):
    page = rendered["page"]
    # the reference icarl-nme / audio-visual row has its 2 seeds only; the --epochs run is its own row (n=1)
    assert _row(page, "icarl-nme", "audio-visual")[2].endswith("(n=2)")
    assert _row(page, f"icarl-nme {LB.DAGGER}", "audio-visual")[2] == "66.67 ± 0.00 (n=1)"
    assert f"{LB.DAGGER} epochs overridden with --epochs 2: not the reference protocol" in page


def test_streams_never_averaged(rendered):
    page = rendered["page"]
    assert "2 different class streams" in page and "never averaged" in page
    assert page.index(f"### Stream `{S1[:12]}`") < page.index(f"### Stream `{S2[:12]}`")  # newest stream first
    assert _row(page, "finetune", "audio", stream=S2)[2] == "99.00 ± 0.00 (n=1)"
    assert _row(page, "finetune", "audio")[2].endswith("(n=2)")


def test_na_for_undefined_metrics(rendered):
    section = rendered["page"].split("`synth_one`", 1)[1].split("![", 1)[0]
    row = [c.strip() for c in next(l for l in section.splitlines() if l.startswith("| finetune")).strip("|").split("|")]
    assert row[2:7] == ["60.00 ± 0.00 (n=1)", "60.00 ± 0.00 (n=1)", "n/a", "n/a", "n/a"]


def test_notes_sections_and_footnotes(rendered):
    page = rendered["page"]
    assert "## Missing datasets" in page and "AVE not found under data/raw/AVE" in page
    assert "## Failed cells" in page and "synth_av / 3x2 / finetune / visual / seed 0" in page and "RuntimeError: out of memory" in page
    for m, formula in M.FORMULAS.items():
        assert f"**{M.METRIC_NAMES[m]}**: {formula}" in page
    assert "RANDOM ENCODERS" in page
    assert "best-validation checkpoint of each step, as in the reference, unless a note under the table" in page and "last-epoch numbers are in" in page
    assert "Synthetic AV (`synth_av`)" in page and "3 steps x 2 classes; memory 20 exemplars" in page


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
    assert linked == on_disk and len(on_disk) == 8  # A_t: S1, S2, synth_one ; R: S1 finetune, icarl, icarl †, S2, synth_one
    for name in on_disk:
        assert re.fullmatch(r"[A-Za-z0-9._-]+", name)
        data = (out / "plots" / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000


def test_csv_rows_and_columns(rendered):
    df = pd.read_csv(rendered["out"] / "results.csv")
    assert list(df.columns) == LB.CSV_COLUMNS
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
    from benchmarks.report.pages import render

    reported = [{"dataset": "ave", "protocol": "4x7", "method": "av_cil", "modality": "audio-visual", "avg_inc_acc": 74.04,
                 "avg_forgetting": 7.63, "source": "authors' log"}]
    render(tmp_path / "none", tmp_path / "lb", {"audio-visual": {"reported": reported}}, titles={"ave": "AVE"})
    page = (tmp_path / "lb" / "audio-visual.md").read_text()
    section = page.split("## Reported by the references (not this harness's results)")[1].split("##")[0]
    assert "| AVE | 4x7 | av_cil | audio-visual | 74.04 |  | 7.63 |  |  | authors' log |" in section
