"""ER-ACE (Caccia et al., ICLR 2022) as avalanche's offline `ER_ACE` (`training/supervised/er_ace.py`).

At the start of every step the class-balanced memory (M // seen classes random exemplars per class, store rows)
takes the new classes in (er_ace.py:155-171: `storage_policy.update` before training); from step 1 every
minibatch of new data is joined by a memory minibatch, and the loss is the asymmetric CE of
`methods/_clstrategies/losses.py:ace_loss`: a softmax over the classes present in the incoming batch for the new
data, plain CE over all seen classes for the replayed exemplars. Step 0: plain CE.
"""

import torch.nn.functional as F

from methods._clstrategies.losses import ace_loss
from methods._clstrategies.templates import CLStoreTemplate


class ERACE(CLStoreTemplate):
    exemplar_selection = None  # the memory is refreshed before training, in training_rows

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.cfg.get("exemplar_batching") != "separate":
            raise ValueError("er_ace needs `exemplar_batching: separate` (a new-data batch joined by a memory batch)")

    @property
    def separate_exemplar_batches(self) -> bool:
        return self.step_index > 0  # avalanche replays from the second experience on (er_ace.py:159-162)

    def training_rows(self):
        self.select_memory()  # the new classes enter the memory before training (their quota: M // seen)
        return self.stream.step("train", self.step_index)

    def loss_fn(self, out, y):
        if not self.n_replay:
            return F.cross_entropy(out["logits"].float(), y)
        z_in, z_buf = self.split_batch(out["logits"])
        y_in, y_buf = self.split_batch(y)
        return ace_loss(z_in, y_in, z_buf, y_buf)
