from pathlib import Path

from methods._clstrategies import av_spec, ml_spec
from methods.ewc.strategy import EWC, MLEWC

_HERE = Path(__file__).parent
METHODS = [av_spec("ewc", EWC, _HERE), ml_spec("ml_ewc", MLEWC, _HERE)]
