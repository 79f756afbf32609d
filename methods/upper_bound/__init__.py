from pathlib import Path

from methods._avcil import AVCILSpec
from methods.upper_bound.strategy import UpperBound

METHODS = [AVCILSpec("upper_bound", UpperBound, Path(__file__).parent, family="upper-bound")]
