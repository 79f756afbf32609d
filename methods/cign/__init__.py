"""CIGN: Class-Incremental Grouping Network (Mo, Pian, Tian, ICCV 2023). See README.md."""

from pathlib import Path

from methods._avcil import AVCILSpec
from methods.cign.model import FEATURE_VIEWS, RAW_VIEWS, build_cign
from methods.cign.strategy import CIGN

_HERE = Path(__file__).parent


def cign_views(modality: str, cfg: dict) -> tuple[str, ...]:
    """Store views CIGN reads: raw frames + spectrograms with `input: raw`, else the cached features."""
    return (RAW_VIEWS if cfg.get("input") == "raw" else FEATURE_VIEWS)[modality]


METHODS = [AVCILSpec("cign", CIGN, _HERE, model_builder=build_cign, required_views=cign_views)]
