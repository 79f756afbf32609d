from pathlib import Path

from methods._avcil import AVCILSpec
from methods.slca.strategy import SLCA

METHODS = [AVCILSpec("slca", SLCA, Path(__file__).parent, family="feature-baseline")]
