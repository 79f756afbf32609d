from pathlib import Path

from methods._clstrategies import av_spec
from methods.bic.strategy import BiC

METHODS = [av_spec("bic", BiC, Path(__file__).parent)]
