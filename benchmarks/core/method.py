"""The method contract: what a method folder registers, how its config resolves, how it is built.

A method folder `methods/<name>/` lists `METHODS = [<spec>, ...]` in its `__init__.py`; each spec is
one leaderboard row. `MethodSpec.suites` says which suites run it. The family specs
(`methods._avcil.AVCILSpec`, `methods._cnn14.CNN14Spec`) fill in the shared protocol file, model
builder and views.

Config resolution for a cell (later wins):
1. the family's protocol file (`protocol_file`), `defaults` then `datasets.<dataset>`;
2. the method's `config.yaml`, `defaults` then `datasets.<dataset>`;
3. the spec's `options` (e.g. iCaRL's classifier);
4. command-line overrides (`--epochs`, `--precision`, ...; `--set KEY=VALUE` only where the config has KEY).
A value given as a mapping by modality (`epochs: {audio: 300, visual: 200, audio-visual: 150}`)
resolves to the cell's modality.

Checked before training: every `--set` key exists in some selected method's config
(`check_settings`), and every key the strategy and model builder read with `cfg["key"]` is in
the resolved config (`check_config`).
"""

from __future__ import annotations

import ast
import functools
import inspect
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from datasets.base import MODALITIES, MODALITY_VIEWS
from datasets.errors import ConfigError
from datasets.io import read_yaml

FAMILIES = ("seed", "cl-strategy", "feature-baseline", "upper-bound")  # MethodSpec.family, in leaderboard order
SETTINGS_KEY = "settings"  # overrides[SETTINGS_KEY]: run_all --set values, applied only to keys a method's config has


def feature_views(modality: str, cfg: dict) -> tuple[str, ...]:
    """The store views a method reads in a modality: by default the cached feature views."""
    return MODALITY_VIEWS[modality]


@dataclass(frozen=True)
class CellResources:
    """What one cell asks a launcher for: a fraction of one GPU (Ray's `num_gpus`; ignored on a CPU-only
    machine or run) and CPU cores (also its torch threads when a launcher packs cells)."""

    gpus: float
    cpus: float


#: a cell on cached features: small models on store rows, so four share one GPU
FEATURE_CELL = CellResources(gpus=0.25, cpus=1)
#: a cell that decodes or encodes raw media (images, waveforms) through large towers: a whole GPU
RAW_MEDIA_CELL = CellResources(gpus=1.0, cpus=2)


def feature_resources(modality: str, cfg: dict) -> CellResources:
    """A cell's needs by default: a feature-level cell."""
    return FEATURE_CELL


def raw_media_resources(modality: str, cfg: dict) -> CellResources:
    """A raw-media row's needs (MCIL-AudioCLIP's towers over images and waveforms): a whole GPU."""
    return RAW_MEDIA_CELL


@dataclass(frozen=True)
class MethodSpec:
    name: str  # leaderboard row name, e.g. "icarl-nme"
    strategy: type  # a HarnessTemplate subclass (benchmarks.suites.single_label / .multilabel)
    folder: Path  # holds config.yaml and README.md
    modalities: tuple[str, ...] = MODALITIES
    suites: tuple[str, ...] = ("audio-visual",)
    options: dict = field(default_factory=dict)
    #: the leaderboard group of the row: "seed" (the CIL methods the benchmark was built around),
    #: "cl-strategy" (standard continual-learning strategies) or "feature-baseline" (analytic
    #: baselines on the frozen features) or "upper-bound" (joint training on all data so far, no CL method);
    #: the report groups the headline rows by it
    family: str = "seed"
    #: model_builder(modality, store, num_classes, cfg) -> nn.Module with `num_classes`,
    #: `feature_dim`, `expand_classifier(n)` and forward(views) -> {"logits", "features", ...}
    model_builder: Callable | None = None
    #: required_views(modality, cfg) -> the store views the strategy gathers; a cell whose dataset
    #: lacks one is skipped with a note (e.g. a raw-media-only dataset for a feature-based method)
    required_views: Callable = feature_views
    #: resources(modality, cfg) -> CellResources: what one cell of this row asks a packing launcher
    #: (Ray) for; the dataset enters through cfg. `--gpus-per-cell` / `--cpus-per-cell` override it
    resources: Callable = feature_resources

    #: the family's shared training-protocol file, read before the folder's config.yaml
    protocol_file: ClassVar[Path | None] = None

    # ------------------------------------------------------------------ config
    def base_config(self, dataset: str) -> dict:
        """The file layers and options for a dataset, before overrides and modality resolution."""
        cfg: dict = {}
        for path in (self.protocol_file, self.folder / "config.yaml"):
            layer = read_config_file(path) if path is not None else {}
            cfg.update(layer.get("defaults") or {})
            cfg.update((layer.get("datasets") or {}).get(dataset) or {})
        cfg.update(self.options)
        return cfg

    def config(self, dataset: str, modality: str, overrides: dict | None = None) -> dict:
        cfg = self.base_config(dataset)
        overrides = dict(overrides or {})
        settings = overrides.pop(SETTINGS_KEY, None) or {}
        cfg.update({k: v for k, v in overrides.items() if v is not None})
        cfg.update({k: v for k, v in settings.items() if k in cfg})  # --set: only keys this method has
        return {k: (v[modality] if isinstance(v, dict) and modality in v else v) for k, v in cfg.items()}

    def check_config(self, cfg: dict, dataset: str) -> None:
        """Fail before training when the strategy or model builder reads a key the config lacks."""
        lacking = sorted(keys_read(self) - set(cfg))
        if lacking:
            raise ConfigError(
                f"method {self.name} reads config key(s) {lacking}, which its config for dataset {dataset} lacks: "
                "add them to "
                f"{self.folder / 'config.yaml'} (under `defaults` or `datasets: {{{dataset}: ...}}`)"
                + (" or pass --epochs" if lacking == ["epochs"] else "")
            )

    # ------------------------------------------------------------------ construction
    def build(self, *, modality: str, store, stream, cfg: dict, device, seed: int, progress: bool = True):
        """The strategy of one cell (the one place a strategy is constructed)."""
        if modality not in self.modalities:
            raise ConfigError(
                f"method {self.name} does not support modality {modality} (supports {', '.join(self.modalities)})"
            )
        return self.strategy(
            model_factory=lambda n: self.model_builder(modality, store, n, cfg),
            store=store,
            stream=stream,
            modality=modality,
            config=cfg,
            device=device,
            seed=seed,
            progress=progress,
            views=self.required_views(modality, cfg),
        )


def read_config_file(path: Path) -> dict:
    if not path.is_file():
        return {}
    return read_yaml(
        path, "make it a mapping with 'defaults' and 'datasets'", mapping="defaults, datasets", error=ConfigError
    )


def check_settings(settings: dict, specs: Iterable[MethodSpec], datasets: Iterable[str]) -> None:
    """An unknown `--set` key, or one that no selected method has, is an error listing the valid keys."""
    specs, datasets = list(specs), list(datasets)
    valid = set().union(*(spec.base_config(d) for spec in specs for d in datasets)) if specs and datasets else set()
    unknown = sorted(set(settings) - valid)
    if unknown:
        names = ", ".join(sorted(s.name for s in specs)) or "none"
        raise ConfigError(
            f"--set {', '.join(unknown)}: no selected method ({names}) has such a config key; valid keys: "
            f"{', '.join(sorted(valid)) or 'none'}"
        )


# ---------------------------------------------------------------------- keys a method reads
REPOSITORY = Path(__file__).resolve().parents[2]


def _project_code(obj) -> bool:
    """Code of this repository (a method folder, the templates), not avalanche's or torch's."""
    module = sys.modules.get(getattr(obj, "__module__", ""))
    source = getattr(module, "__file__", None)
    return source is not None and Path(source).resolve().is_relative_to(REPOSITORY)


@functools.cache
def _subscripted_keys(module_name: str) -> frozenset[str]:
    """Constant keys read as `cfg["key"]`, `self.cfg["key"]` or `config["key"]` anywhere in a module (a read
    with a default, `cfg.get(...)`, is optional and not listed)."""
    tree = ast.parse(inspect.getsource(sys.modules[module_name]))
    keys = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            target = node.value
            name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
            if name in ("cfg", "config") and isinstance(node.ctx, ast.Load):
                keys.add(node.slice.value)
    return frozenset(keys)


def keys_read(spec: MethodSpec) -> set[str]:
    """The config keys a spec's strategy classes (every project class in its MRO) and model builder read."""
    modules = {cls.__module__ for cls in spec.strategy.__mro__ if _project_code(cls)}
    if spec.model_builder is not None and _project_code(spec.model_builder):
        modules.add(spec.model_builder.__module__)
    return set().union(*(_subscripted_keys(m) for m in modules))
