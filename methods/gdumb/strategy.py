"""GDumb (Prabhu et al., ECCV 2020) as avalanche's `GDumbPlugin` (`training/plugins/gdumb.py`).

At every step: the class-balanced memory (M // seen classes random exemplars per class, store rows; avalanche's
`ClassBalancedBuffer(adaptive_size=True)`, gdumb.py:30-32, updated before training, lines 46-48) takes the new
classes in, the model is reset to the initial weights (gdumb.py:35-41: a copy of the model the strategy was built
with, its classifier grown to the seen classes) and trained from scratch on the memory alone, CE over all seen
classes.
"""

import copy

from methods._clstrategies.templates import CLStoreTemplate


class GDumb(CLStoreTemplate):
    exemplar_selection = None  # the memory is refreshed before training, in training_rows

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.initial_model = copy.deepcopy(self.model)

    def training_rows(self):
        self.select_memory()
        return self.memory_tensors()

    def model_adaptation(self, model=None):
        self.model = copy.deepcopy(self.initial_model)
        self.model.expand_classifier(self.seen_classes)
        return self.model.to(self.device)
