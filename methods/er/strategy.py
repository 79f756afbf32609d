"""Experience Replay (Chaudhry et al., 2019 "On tiny episodic memories") as avalanche's `ReplayPlugin` with a
`ClassBalancedBuffer`: a class-balanced memory of `memory` random training exemplars (M // seen classes per class,
store rows), and every minibatch of new data joined by a minibatch of `exemplar_batch_size` exemplars
(avalanche `ReplayDataLoader`); loss = CE over all seen classes on the joined batch.

Single-label: the template does all of it (`exemplar_selection = "random"`, `exemplar_batching: separate`).
Multi-label: the phase's records are replayed (methods/_clstrategies/templates.py `MLReplayTemplate`) with
fine-tuning's BCE over all seen outputs.
"""

from methods._clstrategies.templates import CLStoreTemplate, MLReplayTemplate


class ER(CLStoreTemplate):
    exemplar_selection = "random"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if not self.separate_exemplar_batches:
            raise ValueError("er needs `exemplar_batching: separate` (a new-data batch joined by a memory batch)")


class MLER(MLReplayTemplate):
    def memory_budget(self) -> int:
        return self.cfg["memory_records"]

    def replay_batch_size(self) -> int:
        return self.cfg["exemplar_batch_size"]
