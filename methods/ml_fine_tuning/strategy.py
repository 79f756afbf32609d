"""Multi-label fine-tuning (lower bound): BCE over ALL seen outputs with the phase's labels.

The phase's file labels only its own classes; every other seen column is taken as negative
(target 0), which is what plain fine-tuning on the new phase's data does, and what makes it
forget: old-class outputs are pushed down on clips that may well contain them.
"""

from benchmarks.suites.multilabel import MultiLabelTemplate, masked_bce


class MLFineTuning(MultiLabelTemplate):
    def loss_fn(self, out, y, mask):
        return masked_bce(out["logits"].float(), y, self.pos_weight, mask=None)
