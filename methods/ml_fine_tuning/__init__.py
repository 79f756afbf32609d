from pathlib import Path

from methods._cnn14 import variants
from methods.ml_fine_tuning.strategy import MLFineTuning

METHODS = variants("ml_fine_tuning", MLFineTuning, Path(__file__).parent)
