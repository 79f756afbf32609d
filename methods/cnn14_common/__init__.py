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

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

from methods import MethodSpec
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

    protocol_file: ClassVar[Path] = ML_PROTOCOL


def variants(name: str, strategy: type, folder: Path) -> list[MLMethodSpec]:
    """One leaderboard row per normalisation: `<name>-bn`, `<name>-gn`, `<name>-cn`."""
    return [MLMethodSpec(f"{name}-{n}", strategy, folder, options={"norm": n, "method": name}) for n in NORMS]


def ml_registry() -> dict[str, MLMethodSpec]:
    from methods import discover

    return discover("ML_METHODS")
