from pathlib import Path

from methods import MethodSpec
from methods.lwf.strategy import LwF

METHODS = [MethodSpec("lwf", LwF, Path(__file__).parent)]
