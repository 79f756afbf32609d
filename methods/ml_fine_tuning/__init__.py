from pathlib import Path

from methods.cnn14_common import variants
from methods.ml_fine_tuning.strategy import MLFineTuning

ML_METHODS = variants("ml_fine_tuning", MLFineTuning, Path(__file__).parent)
