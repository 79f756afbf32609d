"""The small shared layers: device choice, the YAML reader and discovery, atomic writes."""

from __future__ import annotations

import types

import pytest
import torch

from datasets.base import discover
from datasets.errors import ConfigError, DatasetError
from datasets.io import atomic_write_text, pick_device, read_yaml


def test_a_cuda_device_on_a_machine_without_cuda_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="--device cuda:1: CUDA is not available.*--device cpu"):
        pick_device("cuda:1")


def test_read_yaml_names_the_file_and_the_fix(tmp_path):
    bad = tmp_path / "protocol.yaml"
    bad.write_text("initial: [1, 2\n")
    with pytest.raises(DatasetError, match=r"protocol.yaml: not valid YAML .*; see the README"):
        read_yaml(bad, "see the README")
    listed = tmp_path / "dataset.yaml"
    listed.write_text("- a\n")
    with pytest.raises(ConfigError, match=r"dataset.yaml: expected a mapping \(audio_root\), got list; fix it"):
        read_yaml(listed, "fix it", mapping="audio_root", error=ConfigError)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert read_yaml(empty, "", mapping="x") == {} and read_yaml(empty, "") is None


def test_discover_refuses_a_name_registered_twice(tmp_path, monkeypatch):
    pkg = tmp_path / "plugins_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from types import SimpleNamespace as N\nITEMS = [N(name='x'), N(name='y')]\n")
    (pkg / "_private.py").write_text("from types import SimpleNamespace as N\nITEMS = [N(name='x')]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import plugins_pkg

    assert sorted(discover(plugins_pkg, "ITEMS", "thing")) == ["x", "y"]  # _private is not walked
    (pkg / "b.py").write_text("from types import SimpleNamespace as N\nITEMS = [N(name='y')]\n")
    with pytest.raises(RuntimeError, match="thing name 'y' registered twice \\(plugins_pkg.b\\)"):
        discover(plugins_pkg, "ITEMS", "thing")
    assert isinstance(plugins_pkg, types.ModuleType)


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    atomic_write_text(tmp_path / "sub" / "f.json", "{}")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["f.json"]
