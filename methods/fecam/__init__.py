from pathlib import Path

from methods._frozen import FrozenSpec
from methods.fecam.strategy import FeCAM, build_model

METHODS = [FrozenSpec("fecam", FeCAM, Path(__file__).parent, model_builder=build_model)]
