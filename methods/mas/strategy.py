"""Memory Aware Synapses (Aljundi et al., ECCV 2018) through avalanche's `MASPlugin` (FACIL's implementation).

Loss at step t >= 1: the template's task loss + lambda * sum_k Omega_k (theta_k - theta*_k)^2, Omega the
alpha-weighted running average of |d ||f(x)||^2 / d theta| over the steps (methods/_clstrategies/plugins.py
`StoreMAS`: importances from the harness's batches, in eval mode).
"""

from methods._clstrategies.plugins import StoreMAS
from methods._clstrategies.templates import CLMultiLabelTemplate, CLStoreTemplate


def mas_plugin(cfg: dict) -> StoreMAS:
    return StoreMAS(lambda_reg=cfg["mas_lambda"], alpha=cfg["mas_alpha"])


class MAS(CLStoreTemplate):
    def __init__(self, **kwargs):
        super().__init__(plugins=[mas_plugin(kwargs["config"])], **kwargs)


class MLMAS(CLMultiLabelTemplate):
    def __init__(self, **kwargs):
        super().__init__(plugins=[mas_plugin(kwargs["config"])], **kwargs)
