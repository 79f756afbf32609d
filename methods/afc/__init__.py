from pathlib import Path

from methods import MethodSpec
from methods.afc.model import build_afc_model
from methods.afc.strategy import AFC

_HERE = Path(__file__).parent
METHODS = [
    MethodSpec("afc-nme", AFC, _HERE, options={"classifier": "nme"}, model_builder=build_afc_model),
    MethodSpec("afc-lsc", AFC, _HERE, options={"classifier": "lsc"}, model_builder=build_afc_model),
]
