from pathlib import Path

from methods._cnn14 import variants
from methods.ml_joint.strategy import MLJoint

METHODS = variants("ml_joint", MLJoint, Path(__file__).parent, family="upper-bound")
