"""ml_indl: independent learning with output and feature distillation (Mulimani & Mesaros). See README.md.

Rows: `ml_indl-{bn,gn,cn}`, the reference's loss (its reductions: KL averaged over batch x old classes, one
cosine over the whole flattened minibatch); `ml_indl-persample-bn`, the same method with the per-sample
reductions (KL per clip averaged over the batch, cosine per clip averaged), the textbook form of both terms,
which this harness used by default before. It is kept so that the effect of the reference's reductions (a
KL term |C_old| times weaker, a batch-level cosine) stays measurable; BN only, the reference's network.
"""

from pathlib import Path

from methods._cnn14 import variants
from methods.ml_indl.strategy import MLIndL

_HERE = Path(__file__).parent

#: the per-sample reductions (config keys of config.yaml)
PER_SAMPLE = {"kd_reduction": "batchmean", "fd_mode": "per_sample"}

METHODS = variants("ml_indl", MLIndL, _HERE) + variants(
    "ml_indl-persample", MLIndL, _HERE, options=PER_SAMPLE, norms=("bn",)
)
