"""Shared pieces of the multi-label audio methods (ml_fine_tuning, ml_joint, ml_indl).

The multi-label methods register as `ML_METHODS = [MLMethodSpec(...)]` (not `METHODS`), so the
single-label registry (`methods.registry()`, the audio-visual suite) never sees them; the
`audio-multilabel` suite reads them with `ml_registry()`.

Config resolution for a multi-label cell (later wins): `methods/cnn14_common/protocol.yaml`
(the reference's optimiser, schedule and model; `defaults`, then `datasets.<dataset>`), the
method's `config.yaml` (same layout), the variant's options (the normalisation), then the
command line (`--epochs`, `--precision`).
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from methods import MethodSpec, _read_yaml
from methods.cnn14_common.model import NORMS, build_cnn14

ML_PROTOCOL = Path(__file__).parent / "protocol.yaml"
SUITE = "audio-multilabel"


def logmel_view(modality: str, cfg: dict) -> tuple[str, ...]:
    return ("logmel",)


@dataclass(frozen=True)
class MLMethodSpec(MethodSpec):
    modalities: tuple[str, ...] = ("audio",)
    suites: tuple[str, ...] = (SUITE,)
    model_builder: Callable = build_cnn14
    required_views: Callable = logmel_view

    def config(self, dataset: str, modality: str, overrides: dict | None = None) -> dict:
        cfg: dict = {}
        for path in (ML_PROTOCOL, self.folder / "config.yaml"):
            layer = _read_yaml(path)
            cfg.update(layer.get("defaults") or {})
            cfg.update((layer.get("datasets") or {}).get(dataset) or {})
        cfg.update(self.options)
        cfg.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return {k: (v[modality] if isinstance(v, dict) and modality in v else v) for k, v in cfg.items()}


def variants(name: str, strategy: type, folder: Path) -> list[MLMethodSpec]:
    """One leaderboard row per normalisation: `<name>-bn`, `<name>-gn`, `<name>-cn`."""
    return [MLMethodSpec(f"{name}-{n}", strategy, folder, options={"norm": n, "method": name}) for n in NORMS]


def ml_registry() -> dict[str, MLMethodSpec]:
    import methods

    found: dict[str, MLMethodSpec] = {}
    for info in sorted(pkgutil.iter_modules(methods.__path__), key=lambda m: m.name):
        if not info.ispkg or info.name in ("common", "cnn14_common") or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"methods.{info.name}")
        for spec in getattr(module, "ML_METHODS", []):
            if spec.name in found:
                raise RuntimeError(f"method name {spec.name!r} registered twice ({module.__name__})")
            found[spec.name] = spec
    return found
