"""The references' reported numbers: `harness_differs` is shown next to the number, and every reported method whose
default harness row trains with a different loss than the reference carries it (with the switch back)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchmarks.report import REPORTED
from benchmarks.report import pages as LB
from benchmarks.report.rows import KINDS, SINGLE
from benchmarks.report.tables import DIFFERS, reported_table

METHODS = Path(__file__).resolve().parents[2] / "methods"

#: reported method -> (its method folder, the `--set` that reproduces the reference's loss)
DIFFERING = {
    "icarl-fc": ("icarl", "distillation=reference"),
    "icarl-nme": ("icarl", "distillation=reference"),
    "afc-nme": ("afc", "nca_margin_mode=reference"),
    "afc-lsc": ("afc", "nca_margin_mode=reference"),
}


def entry(method, **extra):
    return {"dataset": "ave", "protocol": "4x7", "method": method, "modality": "audio-visual", "avg_inc_acc": 65.88,
            "source": "authors' log", **extra}  # fmt: skip


def test_harness_differs_is_a_marker_and_a_note_under_the_table():
    note = "the harness's default row uses the single-sigmoid distillation; `--set distillation=reference` reproduces"
    lines, _ = reported_table([entry("icarl-fc", harness_differs=note), entry("av_cil")], KINDS[SINGLE], {"ave": "AVE"})
    rows = [x for x in lines if x.startswith("| AVE")]
    assert rows[0].startswith("| AVE | 4x7 | av_cil | audio-visual | 65.88 |")  # no marker without the field
    assert rows[1].startswith(f"| AVE | 4x7 | icarl-fc {DIFFERS} | audio-visual | 65.88 |")
    assert lines[-2:] == ["", f"- {DIFFERS} **icarl-fc**: {note}"]


def test_no_note_without_harness_differs_and_one_note_per_method():
    lines, _ = reported_table([entry("av_cil")], KINDS[SINGLE], {})
    assert not any(DIFFERS in x for x in lines) and lines[-1].startswith("| ave |")
    same = [entry("icarl-fc", harness_differs="x y"), {**entry("icarl-fc", harness_differs="x\n  y"), "dataset": "k"}]
    lines, _ = reported_table(same, KINDS[SINGLE], {})
    assert sum(x.startswith(f"- {DIFFERS}") for x in lines) == 1 and lines[-1] == f"- {DIFFERS} **icarl-fc**: x y"
    with pytest.raises(ValueError, match="disagree"):
        reported_table([entry("icarl-fc", harness_differs="a"), entry("icarl-fc", harness_differs="b")],
                       KINDS[SINGLE], {})  # fmt: skip


def test_harness_differs_rendered_on_the_page(tmp_path):
    reported = [entry("icarl-fc", harness_differs="single sigmoid; `--set distillation=reference`")]
    LB.render(tmp_path / "none", tmp_path / "lb", {"audio-visual": {"reported": reported}}, titles={"ave": "AVE"})
    page = (tmp_path / "lb" / "audio-visual.md").read_text()
    section = page.split("## Reported by the references (not this harness's results)")[1].split("##")[0]
    assert f"| AVE | 4x7 | icarl-fc {DIFFERS} | audio-visual | 65.88 |" in section
    assert f"- {DIFFERS} **icarl-fc**: single sigmoid; `--set distillation=reference`" in section


def test_every_reported_method_with_a_fixed_loss_says_so_and_names_a_real_switch():
    reported = yaml.safe_load(REPORTED.read_text())
    entries = [e for suite in reported.values() for e in suite]
    assert any(e["method"] in DIFFERING for e in entries)  # today: the authors' icarl-fc log
    for e in entries:
        if e["method"] not in DIFFERING:
            assert "harness_differs" not in e, e["method"]
            continue
        folder, switch = DIFFERING[e["method"]]
        assert f"--set {switch}" in " ".join(e["harness_differs"].split()), e["method"]
        key, value = switch.split("=")
        config = yaml.safe_load((METHODS / folder / "config.yaml").read_text())["defaults"]
        assert key in config and config[key] != value  # the switch exists and is not the default
