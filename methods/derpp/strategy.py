"""DER++ (Buzzega et al., NeurIPS 2020) as avalanche's `DER` strategy (`training/supervised/der.py`, beta > 0).

Memory: class-balanced, M // seen classes random exemplars per class (store rows), chosen after each step with the
logits the selected model gives them then (der.py:59-146 `ClassBalancedBufferWithLogits`: logits recorded after
the experience); old classes keep their recorded logits when their lists are cut to the new quota. From step 1 every
minibatch of new data is joined by a memory minibatch; loss (`methods/_clstrategies/losses.py:derpp_loss`)
= CE(new data) + alpha * MSE(logits, recorded logits) + beta * CE(exemplars). The logit term runs over the columns
recorded for each exemplar (the classes seen when it was stored): avalanche compares the grown head's output with
narrower recorded logits, which breaks on a class-incremental head.

Multi-label: the same on the phase's records, with BCE for both label terms.
"""

import torch

from benchmarks.suites.multilabel import masked_bce
from methods._clstrategies.losses import derpp_loss, stored_logit_mse
from methods._clstrategies.templates import CLStoreTemplate, MLReplayTemplate


class DERPP(CLStoreTemplate):
    exemplar_selection = "random"

    def __init__(self, **kwargs):
        self.recorded: dict[int, torch.Tensor] = {}  # class -> recorded logits of its exemplars, as memory[class]
        super().__init__(**kwargs)
        if not self.separate_exemplar_batches:
            raise ValueError("derpp needs `exemplar_batching: separate` (a new-data batch joined by a memory batch)")

    def select_memory(self) -> None:
        super().select_memory()
        for c in list(self.recorded):
            self.recorded[c] = self.recorded[c][: len(self.memory[c])]
        new = range(*self.step_bounds)
        rows = torch.cat([self.memory[c] for c in new])
        logits = self.features_of(rows, key="logits", normalize=False).cpu()
        start = 0
        for c in new:
            self.recorded[c] = logits[start : start + len(self.memory[c])]
            start += len(self.memory[c])

    def make_train_dataloader(self, shuffle=True, **kwargs):
        super().make_train_dataloader(shuffle=shuffle, **kwargs)
        # store row -> recorded logits (NaN beyond the width recorded), for the replayed rows of a minibatch
        self.logit_table = None
        if self.recorded:
            classes = sorted(self.recorded)
            width = max(r.shape[1] for r in self.recorded.values())
            table = torch.full((sum(len(self.recorded[c]) for c in classes), width), float("nan"))
            start = 0
            for c in classes:
                rec = self.recorded[c]
                table[start : start + len(rec), : rec.shape[1]] = rec
                start += len(rec)
            rows = torch.cat([self.memory[c] for c in classes])
            self.logit_lookup = torch.full((len(self.store),), -1, dtype=torch.long)
            self.logit_lookup[rows] = torch.arange(len(rows))
            self.logit_lookup, self.logit_table = self.logit_lookup.to(self.device), table.to(self.device)

    def loss_fn(self, out, y):
        if not self.n_replay:
            return torch.nn.functional.cross_entropy(out["logits"].float(), y)
        z_cur, z_buf = self.split_batch(out["logits"])
        y_cur, y_buf = self.split_batch(y)
        stored = self.logit_table[self.logit_lookup[self.split_batch(self.mb_rows)[1]]]
        return derpp_loss(z_cur, y_cur, z_buf, stored, y_buf, self.cfg["derpp_alpha"], self.cfg["derpp_beta"])

    def extra_state(self) -> dict:
        classes = sorted(self.recorded)
        return {**super().extra_state(), "recorded": {str(c): self.recorded[c] for c in classes}}

    def load_extra_state(self, extra: dict) -> None:
        super().load_extra_state(extra)
        self.recorded = {int(c): v for c, v in extra.get("recorded", {}).items()}


class MLDERPP(MLReplayTemplate):
    stores_logits = True

    def memory_budget(self) -> int:
        return self.cfg["memory_records"]

    def replay_batch_size(self) -> int:
        return self.cfg["exemplar_batch_size"]

    def make_train_dataloader(self, shuffle=True, **kwargs):
        super().make_train_dataloader(shuffle=shuffle, **kwargs)
        if len(self.mem_rows):
            lookup = torch.full((len(self.store),), -1, dtype=torch.long)
            lookup[self.mem_rows] = torch.arange(len(self.mem_rows))
            self.logit_lookup, self.logit_table = lookup.to(self.device), self.mem_logits.to(self.device)

    def loss_fn(self, out, y, mask):
        logits = out["logits"].float()
        if not self.n_replay:
            return masked_bce(logits, y, self.pos_weight, mask=None)
        z_cur, z_buf = self.split_batch(logits)
        y_cur, y_buf = self.split_batch(y)
        stored = self.logit_table[self.logit_lookup[self.split_batch(self.mb_rows)[1]]]
        return (
            masked_bce(z_cur, y_cur, self.pos_weight, mask=None)
            + self.cfg["derpp_alpha"] * stored_logit_mse(z_buf, stored)
            + self.cfg["derpp_beta"] * masked_bce(z_buf, y_buf, self.pos_weight, mask=None)
        )
