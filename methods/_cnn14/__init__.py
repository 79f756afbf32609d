"""Shared parts of the multi-label audio methods (ml_fine_tuning, ml_joint, ml_indl): CNN14 (`model.py`), the
loss terms (`losses.py`) and the reference's optimiser, schedule and model (`protocol.yaml`).

Config resolution for a multi-label cell (later wins): `protocol.yaml` (`defaults`, then
`datasets.<dataset>`), the method's `config.yaml` (same layout), the variant's options (the
normalisation), then the command line (`--epochs`, `--precision`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from benchmarks.core.method import MethodSpec
from methods._cnn14.model import NORMS, build_cnn14

SUITE = "audio-multilabel"


def logmel_view(modality: str, cfg: dict) -> tuple[str, ...]:
    return ("logmel",)


@dataclass(frozen=True)
class CNN14Spec(MethodSpec):
    modalities: tuple[str, ...] = ("audio",)
    suites: tuple[str, ...] = (SUITE,)
    model_builder: Callable | None = build_cnn14
    required_views: Callable = logmel_view

    protocol_file: ClassVar[Path | None] = Path(__file__).parent / "protocol.yaml"


def variants(
    name: str,
    strategy: type,
    folder: Path,
    options: dict | None = None,
    norms: tuple[str, ...] = NORMS,
    family: str = "seed",
) -> list[CNN14Spec]:
    """One leaderboard row per normalisation: `<name>-bn`, `<name>-gn`, `<name>-cn` (`norms`), each with the
    config `options` on top of the folder's config.yaml (`method: <name>` names the row's method column)."""
    return [
        CNN14Spec(
            f"{name}-{n}", strategy, folder, options={**(options or {}), "norm": n, "method": name}, family=family
        )
        for n in norms
    ]
