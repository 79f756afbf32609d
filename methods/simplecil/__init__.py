from pathlib import Path

from methods._frozen import FrozenSpec
from methods.simplecil.strategy import SimpleCIL, build_model

METHODS = [FrozenSpec("simplecil", SimpleCIL, Path(__file__).parent, model_builder=build_model)]
