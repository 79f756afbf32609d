"""Shared parts of the AV-CIL-family methods (fine_tuning, upper_bound, lwf, icarl, ssil, afc, av_cil, cign,
mcil_audioclip): the AV-CIL network (`model.py`), the loss terms (`losses.py`) and the training protocol of the
reference scripts (`protocol.yaml`), which `AVCILSpec` reads before each method's own `config.yaml`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from benchmarks.core.method import MethodSpec
from methods._avcil.model import build_model


@dataclass(frozen=True)
class AVCILSpec(MethodSpec):
    model_builder: Callable | None = build_model

    protocol_file: ClassVar[Path | None] = Path(__file__).parent / "protocol.yaml"
