"""A-GEM (Chaudhry et al., ICLR 2019) as avalanche's `AGEMPlugin` (`training/plugins/agem.py`), on the harness's
memory.

Memory: class-balanced, M // seen classes random exemplars per class (store rows; avalanche keeps
`patterns_per_experience` random patterns per experience, agem.py:119-134, which is the same split when every step
has the same number of classes). Training uses the new data only. Before every iteration (from step 1) the
reference gradient g_ref is the gradient of the CE over all seen classes on `agem_sample_size` exemplars drawn at
random from the memory (agem.py:47-72); after the backward pass of the new-data loss its gradient g is projected
(`methods/_clstrategies/losses.py:agem_project`, agem.py:74-106) before the optimizer step.
"""

import torch
import torch.nn.functional as F

from benchmarks.core.template import ResidentViews, step_seed
from methods._clstrategies.losses import agem_project
from methods._clstrategies.templates import CLStoreTemplate


class AGEM(CLStoreTemplate):
    exemplar_selection = "random"

    def training_rows(self):
        return self.stream.step("train", self.step_index)  # the memory is not trained on, only projected against

    def make_train_dataloader(self, shuffle=True, **kwargs):
        super().make_train_dataloader(shuffle=shuffle, **kwargs)
        self.ref_rows = self.ref_targets = None
        if self.memory:
            rows, targets = self.memory_tensors()
            self.resident = ResidentViews(self.store, self.views, torch.cat([self.train_rows, rows]), self.device)
            self.ref_rows, self.ref_targets = rows.to(self.device), targets.to(self.device)
            self.ref_generator = torch.Generator().manual_seed(step_seed(self.seed, self.step_index, salt=4))

    def _params(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def _before_training_iteration(self, **kwargs):
        super()._before_training_iteration(**kwargs)
        self.ref_grad = None
        if self.ref_rows is None:
            return
        pick = torch.randperm(len(self.ref_rows), generator=self.ref_generator)[: self.cfg["agem_sample_size"]]
        pick = pick.to(self.device)
        self.optimizer.zero_grad()
        with self.autocast():
            out = self.model(self.resident.gather(self.ref_rows[pick]))
        F.cross_entropy(out["logits"].float(), self.ref_targets[pick]).backward()
        self.ref_grad = torch.cat(
            [p.grad.reshape(-1) if p.grad is not None else torch.zeros_like(p).reshape(-1) for p in self._params()]
        )
        self.optimizer.zero_grad()

    @torch.no_grad()
    def _after_backward(self, **kwargs):
        if self.ref_grad is not None:
            params = self._params()
            g = torch.cat(
                [p.grad.reshape(-1) if p.grad is not None else torch.zeros_like(p).reshape(-1) for p in params]
            )
            g = agem_project(g, self.ref_grad)
            start = 0
            for p in params:
                if p.grad is not None:
                    p.grad.copy_(g[start : start + p.numel()].view_as(p))
                start += p.numel()
        super()._after_backward(**kwargs)
