from pathlib import Path

from methods._clstrategies import av_spec
from methods._clstrategies.slda_model import build_slda
from methods.slda.strategy import SLDA

METHODS = [av_spec("slda", SLDA, Path(__file__).parent, model_builder=build_slda)]
