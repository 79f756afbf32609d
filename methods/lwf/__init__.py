from pathlib import Path

from methods._avcil import AVCILSpec
from methods.lwf.strategy import LwF

METHODS = [AVCILSpec("lwf", LwF, Path(__file__).parent)]
