from pathlib import Path

from methods._clstrategies import av_spec
from methods.er_ace.strategy import ERACE

METHODS = [av_spec("er_ace", ERACE, Path(__file__).parent)]
