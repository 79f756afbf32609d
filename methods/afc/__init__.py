from pathlib import Path

from methods._avcil import AVCILSpec
from methods.afc.model import build_afc_model
from methods.afc.strategy import AFC

_HERE = Path(__file__).parent
METHODS = [
    AVCILSpec("afc-nme", AFC, _HERE, options={"classifier": "nme"}, model_builder=build_afc_model),
    AVCILSpec("afc-lsc", AFC, _HERE, options={"classifier": "lsc"}, model_builder=build_afc_model),
]
