from pathlib import Path

from methods._frozen import FrozenSpec
from methods.ranpac.strategy import RanPAC, build_model

METHODS = [FrozenSpec("ranpac", RanPAC, Path(__file__).parent, model_builder=build_model)]
