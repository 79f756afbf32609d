"""CIGN: Class-Incremental Grouping Network (Mo, Pian, Tian, ICCV 2023). See README.md."""

from pathlib import Path

from benchmarks.core.method import FEATURE_CELL, RAW_MEDIA_CELL, CellResources
from methods._avcil import AVCILSpec
from methods.cign.model import FEATURE_VIEWS, RAW_VIEWS, build_cign
from methods.cign.strategy import CIGN

_HERE = Path(__file__).parent


def cign_views(modality: str, cfg: dict) -> tuple[str, ...]:
    """Store views CIGN reads: raw frames + spectrograms with `input: raw`, else the cached features."""
    return (RAW_VIEWS if cfg.get("input") == "raw" else FEATURE_VIEWS)[modality]


def cign_resources(modality: str, cfg: dict) -> CellResources:
    """Raw mode trains its encoders on frames and spectrograms: a whole GPU; on features it packs like the rest."""
    return RAW_MEDIA_CELL if cfg.get("input") == "raw" else FEATURE_CELL


#: the reference code's coupling of the class tokens (stoneMo/CIGN: unmasked self-attention over data and all class
#: tokens, one assignment softmax over all groups), with everything else as `cign`; README "What the rows measure"
REFERENCE_COUPLING = {"attention": "full", "assign_scope": "all"}

METHODS = [
    AVCILSpec("cign", CIGN, _HERE, model_builder=build_cign, required_views=cign_views, resources=cign_resources),
    AVCILSpec(
        "cign-refcoupling",
        CIGN,
        _HERE,
        options=REFERENCE_COUPLING,
        model_builder=build_cign,
        required_views=cign_views,
        resources=cign_resources,
    ),
]
