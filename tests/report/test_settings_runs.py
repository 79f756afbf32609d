"""Runs with command-line settings (--set, --epochs) are filed apart from the default run, keep their settings, and
render as their own rows, marked with them; the headline groups its rows by method family."""

from __future__ import annotations

import json

import torch

import run_all
from benchmarks.core.records import (
    error_path,
    iter_records,
    record_path,
    run_settings,
    settings_folder,
    settings_label,
    write_record,
)
from benchmarks.report import pages as LB
from benchmarks.report.rows import KINDS, SINGLE
from benchmarks.report.tables import DAGGER, headline_table
from benchmarks.run import cell as runner
from benchmarks.suites import get_suite
from methods import registry
from tests.report.test_pages import BASE_R, fake_record


# ----------------------------------------------------------------------------- records: settings and paths
def test_run_settings_are_what_the_command_line_changed():
    own = {"lr": 1e-3, "epochs": 30, "precision": "fp32", "batch_size": 64}
    resolved = {**own, "lr": 0.01, "precision": "fp32", "random_encoders": True}
    # lr changed; precision given but equal; random_encoders only permits random encoders (not a setting)
    assert run_settings(own, resolved) == {"lr": 0.01}
    assert run_settings(own, {**own, "precision": "bf16"}) == {"precision": "bf16"}
    assert run_settings(own, own) == {}
    # --epochs is always a setting, even at the method's own value (the record marks it: not the reference protocol)
    assert run_settings(own, own, epochs=30) == {"epochs": 30}
    assert list(run_settings(own, {**own, "lr": 0.5, "batch_size": 8}, epochs=2)) == ["batch_size", "epochs", "lr"]


def test_settings_get_their_own_folder_and_the_default_path_is_unchanged(tmp_path):
    where = (tmp_path, "audio-visual", "synth_av", "5x4", "lwf", "audio", 0)
    default = tmp_path / "audio-visual/synth_av/5x4/lwf/audio/seed0.json"
    assert record_path(*where) == default == record_path(*where, {})
    lr = record_path(*where, {"lr": 0.01})
    assert lr.parent.parent == default.parent and lr.name == "seed0.json" and lr != default
    assert lr.parent.name.startswith("set-lr=0.01-")
    assert record_path(*where, {"lr": 0.01}) == lr  # stable: a re-run finds its record
    assert record_path(*where, {"lr": 0.02}) != lr
    assert error_path(lr) == lr.parent / "seed0.error.json"
    # two settings whose readable parts agree (characters replaced, long values cut) still get different folders
    a, b = settings_folder({"ckpt": "/w/a b.pt"}), settings_folder({"ckpt": "/w/a-b.pt"})
    assert a != b and a.rsplit("-", 1)[0] == b.rsplit("-", 1)[0]
    long = settings_folder({"ckpt": "/x" * 100})
    assert len(long) < 80 and all(c.isalnum() or c in "._=,-" for c in long)
    assert settings_folder({}) == "" and settings_label({"b": [1, 2], "a": "bf16"}) == "a=bf16, b=[1, 2]"


# ----------------------------------------------------------------------------- the cell runner files them apart
def toy_context(tmp_path, overrides):
    return runner.GridContext(
        get_suite("audio-visual"), tmp_path / "data", tmp_path / "results", torch.device("cpu"), False, overrides
    )


def test_resolve_files_a_set_run_apart_only_for_methods_it_changes(tmp_path, toy_registry):
    specs = registry()
    cell = runner.Cell("audio-visual", "toy", "3x2", "lwf", "audio", 0)
    base = toy_context(tmp_path, {"epochs": 1})
    run = runner.resolve(cell, specs["lwf"], base)
    assert run.options["settings"] == {"epochs": 1} and run.cfg["epochs"] == 1
    over = toy_context(tmp_path, {"epochs": 1, "settings": {"kd_temperature": 3.0}})
    apart = runner.resolve(cell, specs["lwf"], over)
    assert apart.options["settings"] == {"epochs": 1, "kd_temperature": 3.0} and apart.cfg["kd_temperature"] == 3.0
    assert apart.path != run.path and apart.path.parent.parent == run.path.parent.parent
    assert apart.key != run.key
    # fine_tuning has no kd_temperature: the same command leaves its record where its --epochs run is
    ft = runner.Cell("audio-visual", "toy", "3x2", "fine_tuning", "audio", 0)
    assert runner.resolve(ft, specs["fine_tuning"], over).path == runner.resolve(ft, specs["fine_tuning"], base).path
    # a failure is filed where the cell's record would be, so the next success removes it
    runner.fail_cell(cell, over, "boom")
    assert json.loads(error_path(apart.path).read_text())["error"] == "boom"
    assert not error_path(run.path).exists()
    runner.fail_cell(cell, over, "boom", specs["lwf"])
    assert error_path(apart.path).exists()


def test_a_set_run_keeps_the_default_record_and_both_render(tmp_path, toy_registry, capsys):
    """Three runs of one cell: --epochs 1, then --epochs 1 --set lr=0.01, then --epochs 1 again: both records stay,
    the third run finds its record, and the page has one row per settings."""
    common = ["--data-root", str(tmp_path / "data"), "--results-dir", str(tmp_path / "results")]
    common += ["--leaderboard-dir", str(tmp_path / "lb"), "--no-progress", "--datasets", "toy"]
    common += ["--methods", "fine_tuning", "--modalities", "audio", "--seeds", "0", "--epochs", "1"]
    assert run_all.main(common) == 0
    assert run_all.main([*common, "--set", "lr=0.01"]) == 0
    capsys.readouterr()
    assert run_all.main(common) == 0
    assert "0 ran, 1 already recorded" in capsys.readouterr().out
    recs = sorted(iter_records(tmp_path / "results"), key=lambda r: r["config"]["lr"])
    assert [r["config"]["lr"] for r in recs] == [1e-3, 0.01]
    assert [r["settings"] for r in recs] == [{"epochs": 1}, {"epochs": 1, "lr": 0.01}]
    page = (tmp_path / "lb" / "audio-visual.md").read_text()
    assert f"| fine_tuning {DAGGER} (epochs=1) | audio |" in page
    assert f"| fine_tuning {DAGGER} (epochs=1, lr=0.01) | audio |" in page


# ----------------------------------------------------------------------------- the report: rows and marks
def write(results, method, modality, seed, shift, **extra):
    rec = fake_record("synth_av", "3x2", method, modality, seed, [[v + shift for v in row] for row in BASE_R[seed]])
    rec.update(extra)
    settings = extra.get("settings") or {}
    write_record(record_path(results, "audio-visual", "synth_av", "3x2", method, modality, seed, settings), rec)


def test_settings_rows_are_apart_marked_and_never_bold(tmp_path):
    results = tmp_path / "results"
    for seed in (0, 1):
        write(results, "lwf", "audio", seed, 0.0)
        write(results, "lwf", "audio", seed, 30.0, settings={"lr": 0.01})  # better, but not the default config
    write(results, "lwf", "audio", 0, 20.0, settings={"lr": 0.1})
    LB.render(results, tmp_path / "out")
    page = (tmp_path / "out" / "audio-visual.md").read_text()
    head = page.split("| Method", 1)[1].split("Each cell:", 1)[0]
    assert "| lwf | **61.7** ± 7.1 / **50.0** (n=2) |" in head
    assert f"| lwf {DAGGER} (lr=0.01) | 91.7 ± 7.1 / 80.0 (n=2) |" in head  # its 2 seeds only, not bold
    assert f"| lwf {DAGGER} (lr=0.1) | 86.7 ± 0.0 / 75.0 (n=1) |" in head
    assert "Settings used: `lr=0.01`; `lr=0.1`." in page
    csv = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert csv[0].split(",").count("settings") == 1 and sum(",lr=0.01," in line for line in csv) == 2
    # the matrix figures are per run as well: default, lr=0.01, lr=0.1
    assert len(list((tmp_path / "out" / "plots").glob("*__R__*.png"))) == 3


def test_old_records_take_their_settings_from_the_epochs_override(tmp_path):
    results = tmp_path / "results"
    write(results, "lwf", "audio", 0, 0.0, epochs_override=2, reference_protocol=False)
    rows = LB.load_rows(results, "audio-visual", KINDS[SINGLE])
    assert [r["settings"] for r in rows] == ["epochs=2"]


# ----------------------------------------------------------------------------- the headline by method family
def family_rows(tmp_path, *, with_family=True):
    """Seed method lwf (+0); strategies ewc (+5), er (+2); baselines ranpac (-4); upper bound upper_bound (+30)."""
    results = tmp_path / "results"
    methods = {"lwf": ("seed", 0.0), "upper_bound": ("upper-bound", 30.0), "ewc": ("cl-strategy", 5.0)}
    methods |= {"er": ("cl-strategy", 2.0), "ranpac": ("feature-baseline", -4.0)}
    for method, (family, shift) in methods.items():
        for seed in (0, 1):
            for modality in ("audio", "audio-visual"):
                extra = {"family": family} if with_family else {}
                write(results, method, modality, seed, shift + (10.0 if modality == "audio-visual" else 0.0), **extra)
    family = {"family": "cl-strategy"} if with_family else {}
    write(results, "ewc", "audio", 0, 40.0, settings={"lr": 1.0}, **family)  # never the family's best
    return results


def test_headline_groups_rows_by_family_and_compares_the_bests(tmp_path):
    results = family_rows(tmp_path)
    lines, _ = headline_table(LB.load_rows(results, "audio-visual", KINDS[SINGLE]), KINDS[SINGLE])
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| Method")]
    labels = [line.split(" | ")[0].lstrip("| ") for line in rows]
    assert labels == [
        "**Seed methods**",
        "lwf",
        "**Continual-learning strategies**",
        "er",
        "ewc",
        f"ewc {DAGGER} (lr=1.0)",
        "**Pretrained-feature baselines**",
        "ranpac",
        "**Joint-training upper bounds**",
        "upper_bound",
        "**Best of continual-learning strategies − best seed method**",
        "**Best of pretrained-feature baselines − best seed method**",
    ]
    # best seed method = lwf (upper_bound is its own family, not compared): 61.7 / 50.0 audio, 71.7 / 60.0 audio-visual
    assert rows[10].endswith("| +5.0 / +5.0 (ewc vs lwf) | +5.0 / +5.0 (ewc vs lwf) |")
    assert rows[11].endswith("| -4.0 / -4.0 (ranpac vs lwf) | -4.0 / -4.0 (ranpac vs lwf) |")
    assert rows[9].startswith("| upper_bound | **91.7** ± 7.1 / **80.0** (n=2) |")  # still the best overall (bold)
    assert "Rows are grouped by method family, seed methods first." in lines[-1]


def test_family_falls_back_to_the_registry_then_to_seed(tmp_path):
    results = family_rows(tmp_path, with_family=False)
    rows = LB.load_rows(results, "audio-visual", KINDS[SINGLE], {"ewc": "cl-strategy"})
    fam = {r["method"]: r["family"] for r in rows}
    assert fam == {"lwf": "seed", "upper_bound": "seed", "ewc": "cl-strategy", "er": "seed", "ranpac": "seed"}
    families = {"ewc": "cl-strategy", "ranpac": "feature-baseline", "upper_bound": "upper-bound"}
    LB.render(results, tmp_path / "out", families=families)
    page = (tmp_path / "out" / "audio-visual.md").read_text()
    # er has no family in its record nor in `families`: a seed method, and now the best one
    assert "| **Pretrained-feature baselines** |" in page and "| -6.0 / -6.0 (ranpac vs er) |" in page
    # one family only (records from before families): no group rows, no comparison lines
    LB.render(results, tmp_path / "plain")
    plain = (tmp_path / "plain" / "audio-visual.md").read_text()
    assert "**Seed methods**" not in plain and "best seed method" not in plain
