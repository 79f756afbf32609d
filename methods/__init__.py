"""Methods, discovered from the sub-packages of this package.

A method folder `methods/<name>/` holds `__init__.py` (defining `METHODS = [MethodSpec(...)]`),
its strategy, `config.yaml` and a README. Adding a method is adding a folder; `common/`
holds the shared model, losses and exemplar code.

Config resolution for a cell (later wins):
1. `methods/common/protocol.yaml`: the training protocol shared by the AV-CIL family
   (optimizer, batch sizes), `defaults` then `datasets.<dataset>`;
2. the method's `config.yaml`: `defaults` then `datasets.<dataset>`;
3. the variant's `options` (e.g. iCaRL's classifier);
4. command-line overrides (e.g. `--epochs`; `--set KEY=VALUE` only where the config has KEY).
A value given as a mapping by modality (`epochs: {audio: 300, visual: 200, audio-visual: 150}`)
resolves to the cell's modality.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import yaml

from methods.common.model import MODALITIES, build_model

COMMON_PROTOCOL = Path(__file__).parent / "common" / "protocol.yaml"
SETTINGS_KEY = "settings"  # overrides[SETTINGS_KEY]: run_all --set values, applied only to keys a method's config has
MODALITY_VIEWS = {"audio": ("audio",), "visual": ("visual",), "audio-visual": ("audio", "visual")}


def feature_views(modality: str, cfg: dict) -> tuple[str, ...]:
    """The store views a method reads in a modality: by default the cached feature views."""
    return MODALITY_VIEWS[modality]


@dataclass(frozen=True)
class MethodSpec:
    name: str  # leaderboard row name, e.g. "icarl-nme"
    strategy: type  # a benchmarks.avalanche_layer.StoreTemplate subclass
    folder: Path  # holds config.yaml and README.md
    modalities: tuple[str, ...] = MODALITIES
    suites: tuple[str, ...] = ("audio-visual",)
    options: dict = field(default_factory=dict)
    #: model_builder(modality, store, num_classes, cfg) -> nn.Module with `num_classes`,
    #: `feature_dim`, `expand_classifier(n)` and forward(views) -> {"logits", "features", ...}
    model_builder: Callable = build_model
    #: required_views(modality, cfg) -> the store views the strategy gathers; a cell whose dataset
    #: lacks one is skipped with a note (e.g. a raw-media-only dataset for a feature-based method)
    required_views: Callable = feature_views

    #: the shared training-protocol file read before the folder's config.yaml
    protocol_file: ClassVar[Path] = COMMON_PROTOCOL

    def config(self, dataset: str, modality: str, overrides: dict | None = None) -> dict:
        cfg: dict = {}
        for path in (self.protocol_file, self.folder / "config.yaml"):
            layer = _read_yaml(path)
            cfg.update(layer.get("defaults") or {})
            cfg.update((layer.get("datasets") or {}).get(dataset) or {})
        cfg.update(self.options)
        overrides = dict(overrides or {})
        settings = overrides.pop(SETTINGS_KEY, None) or {}
        cfg.update({k: v for k, v in overrides.items() if v is not None})
        cfg.update({k: v for k, v in settings.items() if k in cfg})  # --set: only keys this method has
        return {k: (v[modality] if isinstance(v, dict) and modality in v else v) for k, v in cfg.items()}


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        return {}
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with 'defaults' and 'datasets'")
    return data


def discover(attr: str = "METHODS") -> dict[str, MethodSpec]:
    """Specs listed in `<attr>` by the method folders (`METHODS`: single-label, `ML_METHODS`: multi-label)."""
    found: dict[str, MethodSpec] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.ispkg or info.name in ("common", "cnn14_common") or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for spec in getattr(module, attr, []):
            if spec.name in found:
                raise RuntimeError(f"method name {spec.name!r} registered twice ({module.__name__})")
            found[spec.name] = spec
    return found


def registry() -> dict[str, MethodSpec]:
    return discover("METHODS")


def get_method(name: str) -> MethodSpec:
    methods = registry()
    if name not in methods:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(methods))} (see `python run_all.py --list`)")
    return methods[name]
