from pathlib import Path

from methods.cnn14_common import variants
from methods.ml_indl.strategy import MLIndL

ML_METHODS = variants("ml_indl", MLIndL, Path(__file__).parent)
