from pathlib import Path

from methods._clstrategies import av_spec, ml_spec
from methods.mas.strategy import MAS, MLMAS

_HERE = Path(__file__).parent
METHODS = [av_spec("mas", MAS, _HERE), ml_spec("ml_mas", MLMAS, _HERE)]
