"""Synaptic Intelligence (Zenke et al., ICML 2017) with avalanche's `SynapticIntelligencePlugin` formulas, run on
the device (methods/_clstrategies/plugins.py `SynapticIntelligence`, which says what differs from the stock plugin).

Loss: the template's task loss + lambda/2 * sum_k Omega_k (theta_k - theta*_k)^2 (zero at step 0).
"""

from methods._clstrategies.plugins import SynapticIntelligence
from methods._clstrategies.templates import CLMultiLabelTemplate, CLStoreTemplate


def si_plugin(cfg: dict) -> SynapticIntelligence:
    return SynapticIntelligence(cfg["si_lambda"], eps=cfg["si_eps"], clip=cfg["si_clip"])


class SI(CLStoreTemplate):
    def __init__(self, **kwargs):
        super().__init__(plugins=[si_plugin(kwargs["config"])], **kwargs)


class MLSI(CLMultiLabelTemplate):
    def __init__(self, **kwargs):
        super().__init__(plugins=[si_plugin(kwargs["config"])], **kwargs)
