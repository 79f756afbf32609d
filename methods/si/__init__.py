from pathlib import Path

from methods._clstrategies import av_spec, ml_spec
from methods.si.strategy import MLSI, SI

_HERE = Path(__file__).parent
METHODS = [av_spec("si", SI, _HERE), ml_spec("ml_si", MLSI, _HERE)]
