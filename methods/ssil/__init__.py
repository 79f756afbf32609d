from pathlib import Path

from methods._avcil import AVCILSpec
from methods.ssil.strategy import SSIL

METHODS = [AVCILSpec("ssil", SSIL, Path(__file__).parent)]
