from pathlib import Path

from methods._clstrategies import av_spec
from methods.gdumb.strategy import GDumb

METHODS = [av_spec("gdumb", GDumb, Path(__file__).parent)]
