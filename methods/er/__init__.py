from pathlib import Path

from methods._clstrategies import av_spec, ml_spec
from methods.er.strategy import ER, MLER

_HERE = Path(__file__).parent
METHODS = [av_spec("er", ER, _HERE), ml_spec("ml_er", MLER, _HERE)]
