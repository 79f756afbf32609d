"""Shared parts of the analytic baselines on the frozen features (simplecil, ranpac, fecam): the pooling and
fusion of the store's feature views into one vector per clip and the analytic model around a head (`model.py`),
the training-free template that accumulates statistics once per step (`template.py`), and their protocol
(`protocol.yaml`), which `FrozenSpec` reads before each method's own `config.yaml`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from benchmarks.core.method import MethodSpec


@dataclass(frozen=True)
class FrozenSpec(MethodSpec):
    family: str = "feature-baseline"

    protocol_file: ClassVar[Path | None] = Path(__file__).parent / "protocol.yaml"
