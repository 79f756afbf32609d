from pathlib import Path

from methods import MethodSpec
from methods.upper_bound.strategy import UpperBound

METHODS = [MethodSpec("upper_bound", UpperBound, Path(__file__).parent)]
