from pathlib import Path

from methods._avcil import AVCILSpec
from methods.icarl.strategy import ICaRL

_HERE = Path(__file__).parent
METHODS = [
    AVCILSpec("icarl-nme", ICaRL, _HERE, options={"classifier": "nme"}),
    AVCILSpec("icarl-fc", ICaRL, _HERE, options={"classifier": "fc"}),
]
