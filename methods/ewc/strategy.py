"""Online EWC (Schwarz et al., ICML 2018; Kirkpatrick et al., PNAS 2017) through avalanche's `EWCPlugin`
(`mode="online"`), on the AV-CIL network (audio-visual suite) and CNN14 (multi-label suite).

Loss at step t >= 1: the template's task loss + lambda * sum_k F*_k (theta_k - theta*_k)^2, with theta* the previous
step's selected parameters and F* <- gamma F* + F_t the decayed sum of diagonal Fishers (new classifier rows have
F* = 0). The plugin and its fixes for the harness: methods/_clstrategies/plugins.py (`StoreEWC`).
"""

from methods._clstrategies.plugins import StoreEWC
from methods._clstrategies.templates import CLMultiLabelTemplate, CLStoreTemplate


def ewc_plugin(cfg: dict) -> StoreEWC:
    return StoreEWC(cfg["ewc_lambda"], decay_factor=cfg["ewc_decay"], fisher=cfg["fisher"])


class EWC(CLStoreTemplate):
    def __init__(self, **kwargs):
        super().__init__(plugins=[ewc_plugin(kwargs["config"])], **kwargs)


class MLEWC(CLMultiLabelTemplate):
    def __init__(self, **kwargs):
        super().__init__(plugins=[ewc_plugin(kwargs["config"])], **kwargs)
