"""The method contract: config keys checked before anything trains, one place that builds a strategy."""

from __future__ import annotations

import pytest
import torch

import run_all
from benchmarks.core.method import MethodSpec, check_settings, keys_read
from benchmarks.core.streams import build_stream
from benchmarks.suites.single_label import StoreTemplate
from datasets.errors import ConfigError
from methods import registry
from methods._avcil import AVCILSpec


class ReadsAKey(StoreTemplate):
    def loss_fn(self, out, y):
        return super().loss_fn(out, y) * self.cfg["my_weight"]


def test_keys_read_come_from_the_strategy_mro_and_the_model_builder():
    keys = keys_read(registry()["lwf"])
    assert {"kd_temperature", "kd_weight"} <= keys  # LwF's own strategy
    assert {"batch_size", "epochs", "eval_batch_size", "lr", "weight_decay"} <= keys  # the templates it stands on
    assert "model_selection" not in keys  # read with a default (cfg.get): optional


def test_a_key_the_strategy_reads_but_the_config_lacks_fails_before_training(tmp_path):
    spec = AVCILSpec("reads_a_key", ReadsAKey, tmp_path)
    cfg = {**spec.config("toy", "audio", {"epochs": 1}), "memory": 12}
    with pytest.raises(ConfigError, match=r"reads config key\(s\) \['my_weight'\].*config.yaml"):
        spec.check_config(cfg, "toy")
    (tmp_path / "config.yaml").write_text("defaults:\n  my_weight: 0.5\n")
    spec.check_config({**spec.config("toy", "audio", {"epochs": 1}), "memory": 12}, "toy")


def test_set_keys_must_belong_to_a_selected_method():
    specs = [registry()["lwf"], registry()["fine_tuning"]]
    check_settings({"kd_temperature": 3.0}, specs, ["synth_av"])
    with pytest.raises(ConfigError, match=r"--set kd_temperatur:.*valid keys: .*kd_temperature"):
        check_settings({"kd_temperatur": 3.0}, specs, ["synth_av"])
    with pytest.raises(ConfigError, match="audioclip_ckpt"):  # a real key, but of a method not selected
        check_settings({"audioclip_ckpt": "/w.pt"}, specs, ["synth_av"])


def test_run_all_rejects_an_unknown_set_key_before_running(tmp_path, toy_registry, capsys):
    argv = [
        "--data-root",
        str(tmp_path),
        "--results-dir",
        str(tmp_path / "r"),
        "--no-leaderboard",
        "--no-progress",
        "--datasets",
        "toy",
        "--methods",
        "lwf",
        "--epochs",
        "1",
        "--set",
        "kd_wieght=2",
    ]
    assert run_all.main(argv) == 2
    err = capsys.readouterr().err
    assert "--set kd_wieght" in err and "kd_weight" in err
    assert not (tmp_path / "r").exists()


def test_a_config_file_that_is_not_a_mapping_names_the_file(tmp_path):
    (tmp_path / "config.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="config.yaml: expected a mapping"):
        AVCILSpec("bad", StoreTemplate, tmp_path).config("toy", "audio")


def test_build_is_the_one_constructor_and_checks_the_modality(toy_store, toy_protocol):
    spec = registry()["av_cil"]
    stream = build_stream(toy_store, toy_protocol)
    cfg = {**spec.config("toy", "audio-visual", {"epochs": 1}), "memory": 12, "batch_size": 8, "eval_batch_size": 8}
    strategy = spec.build(
        modality="audio-visual",
        store=toy_store,
        stream=stream,
        cfg=cfg,
        device=torch.device("cpu"),
        seed=0,
        progress=False,
    )
    assert strategy.views == ["audio", "visual"] and strategy.cfg is cfg and strategy.step_index == -1
    with pytest.raises(ConfigError, match="does not support modality audio"):
        spec.build(modality="audio", store=toy_store, stream=stream, cfg=cfg, device=torch.device("cpu"), seed=0)


def test_every_registered_spec_is_a_method_spec_with_a_readme_and_a_suite():
    from benchmarks.suites import SUITES

    for name, spec in registry().items():
        assert isinstance(spec, MethodSpec), name
        assert (spec.folder / "README.md").is_file(), name
        assert set(spec.suites) <= set(SUITES), name
