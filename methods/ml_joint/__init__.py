from pathlib import Path

from methods.cnn14_common import variants
from methods.ml_joint.strategy import MLJoint

ML_METHODS = variants("ml_joint", MLJoint, Path(__file__).parent)
