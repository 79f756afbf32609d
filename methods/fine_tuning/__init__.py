from pathlib import Path

from methods import MethodSpec
from methods.fine_tuning.strategy import FineTuning

METHODS = [MethodSpec("fine_tuning", FineTuning, Path(__file__).parent)]
