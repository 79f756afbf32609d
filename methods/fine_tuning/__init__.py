from pathlib import Path

from methods._avcil import AVCILSpec
from methods.fine_tuning.strategy import FineTuning

METHODS = [AVCILSpec("fine_tuning", FineTuning, Path(__file__).parent)]
