"""Shared parts of the standard continual-learning strategies (ewc, si, mas, agem, gdumb, er, er_ace, derpp, bic,
slda): avalanche-lib 0.6.0's plugins made to work on the harness's index batches and multi-input samples
(`plugins.py`), the templates with importance batches, replay batches and checkpointable plugin state
(`templates.py`), the loss terms and closed-form steps (`losses.py`), and the frozen-feature Streaming LDA head
(`slda_model.py`).

`av_spec` registers a strategy in the audio-visual suite on the AV-CIL network and protocol (`methods/_avcil`), so
it runs on the same streams, batches, optimizer and model selection as the seed methods; `ml_spec` registers it in
the audio-multilabel suite with CNN14 BN (`methods/_cnn14`). Both mark the row `family="cl-strategy"`.
"""

from __future__ import annotations

from pathlib import Path

from methods._avcil import AVCILSpec
from methods._cnn14 import CNN14Spec

FAMILY = "cl-strategy"


def av_spec(name: str, strategy: type, folder: Path, **kwargs) -> AVCILSpec:
    return AVCILSpec(name, strategy, folder, family=FAMILY, **kwargs)


def ml_spec(name: str, strategy: type, folder: Path, norm: str = "bn") -> CNN14Spec:
    """`ml_<name>-bn`: the multi-label row of a strategy, CNN14 with the given normalisation."""
    return CNN14Spec(f"{name}-{norm}", strategy, folder, options={"norm": norm, "method": name}, family=FAMILY)
