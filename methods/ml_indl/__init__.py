from pathlib import Path

from methods._cnn14 import variants
from methods.ml_indl.strategy import MLIndL

METHODS = variants("ml_indl", MLIndL, Path(__file__).parent)
