from pathlib import Path

from methods._clstrategies import av_spec, ml_spec
from methods.derpp.strategy import DERPP, MLDERPP

_HERE = Path(__file__).parent
METHODS = [av_spec("derpp", DERPP, _HERE), ml_spec("ml_derpp", MLDERPP, _HERE)]
