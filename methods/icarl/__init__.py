from pathlib import Path

from methods import MethodSpec
from methods.icarl.strategy import ICaRL

_HERE = Path(__file__).parent
METHODS = [
    MethodSpec("icarl-nme", ICaRL, _HERE, options={"classifier": "nme"}),
    MethodSpec("icarl-fc", ICaRL, _HERE, options={"classifier": "fc"}),
]
