"""Dataset adapters, discovered from the modules of this package.

A module of `datasets.adapters` that defines `ADAPTERS = [SomeAdapter(), ...]` registers them; adding a dataset is
adding one module. (This package shadows the Hugging Face `datasets` library on purpose:
the harness does not use it.)
"""

from __future__ import annotations

from datasets import adapters
from datasets.base import DatasetAdapter, discover
from datasets.errors import ConfigError

# Adapters added at run time (`register`), e.g. a user's paired image+audio folder from
# `run_all.py --paired-folder`: they have no module of their own to be discovered from.
_RUNTIME: dict[str, DatasetAdapter] = {}


def registry() -> dict[str, DatasetAdapter]:
    found = discover(adapters, "ADAPTERS", "dataset")
    for name, adapter in _RUNTIME.items():
        if name in found:
            raise RuntimeError(f"dataset name {name!r} is both a module adapter and a run-time registration")
        found[name] = adapter
    return found


def register(adapter: DatasetAdapter) -> DatasetAdapter:
    """Add (or replace) a run-time adapter under `adapter.name`; a module adapter's name is refused."""
    _RUNTIME.pop(adapter.name, None)
    if adapter.name in registry():
        raise ConfigError(
            f"dataset name {adapter.name!r} is taken by a built-in "
            "dataset; register the folder under another name (PATH=NAME)"
        )
    _RUNTIME[adapter.name] = adapter
    return adapter


def get_adapter(name: str) -> DatasetAdapter:
    adapters = registry()
    if name not in adapters:
        raise ConfigError(
            f"unknown dataset {name!r}; known: {', '.join(sorted(adapters))} (see `python run_all.py --list`)"
        )
    return adapters[name]
