"""MCIL-AudioCLIP (Chen et al., ICASSP 2025), in two fidelity modes. See README.md."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks.core.method import raw_media_resources
from methods._avcil import AVCILSpec
from methods.mcil_audioclip.strategy import MCILStrategy

_HERE = Path(__file__).parent
MODES = ("paper", "code")


def mcil_views(modality: str, cfg: dict) -> tuple[str, ...]:
    """Raw images from the store; the audio comes from the store's clip bank (datasets.pairing)."""
    return ("clip_image",)


def no_model(modality, store, num_classes, cfg):  # the strategy builds the model: it needs the class order
    return None


@dataclass(frozen=True)
class MCILSpec(AVCILSpec):
    def config(self, dataset: str, modality: str, overrides: dict | None = None) -> dict:
        cfg = super().config(dataset, modality, overrides)
        mode = cfg["mode"]
        return {
            k: (v[mode] if isinstance(v, dict) and set(v) <= set(MODES) and mode in v else v) for k, v in cfg.items()
        }


METHODS = [
    MCILSpec(
        name,
        MCILStrategy,
        _HERE,
        modalities=("audio-visual",),
        options={"mode": mode},
        model_builder=no_model,
        required_views=mcil_views,
        resources=raw_media_resources,
    )
    for name, mode in (("mcil_audioclip", "paper"), ("mcil_audioclip-code", "code"))
]
