from pathlib import Path

from methods._clstrategies import av_spec
from methods.agem.strategy import AGEM

METHODS = [av_spec("agem", AGEM, Path(__file__).parent)]
