from pathlib import Path

from methods import MethodSpec
from methods.ssil.strategy import SSIL

METHODS = [MethodSpec("ssil", SSIL, Path(__file__).parent)]
