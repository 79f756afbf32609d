"""Deep Streaming LDA (Hayes & Kanan, CVPRW 2020) as avalanche's `StreamingLDA` (`training/supervised/deep_slda.py`),
on the frozen store features (pooling: methods/_clstrategies/slda_model.py).

No backpropagation and no optimizer: one streaming pass over each step's training data in its shuffled order
(`train_epochs` is 1 whatever `epochs` says: a second pass would count every sample twice), each minibatch folded
into the class means and the shared covariance by the batched form of avalanche's per-sample `fit`
(`methods/_clstrategies/losses.py:slda_update`); prediction: argmax of x W + b with W = Lambda M^T,
Lambda = pinv((1 - eps) Sigma + eps I).
"""

from methods._clstrategies.templates import CLStoreTemplate


class SLDA(CLStoreTemplate):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.cfg.get("drop_last", True):
            raise ValueError("slda streams every training sample once: set `drop_last: false` in its config")

    def train_dataset_adaptation(self, **kwargs):
        super().train_dataset_adaptation(**kwargs)
        self.train_epochs = 1  # a single streaming pass (deep_slda.py: the reference runs train_epochs=1)

    def make_optimizer(self, **kwargs):
        """No optimizer (deep_slda.py `make_optimizer`: empty)."""

    def training_epoch(self, **kwargs):
        self.model.eval()
        self.epoch_loss, self.epoch_batches = 0.0, 0
        for batch in self.dataloader:
            self.mbatch = batch
            self._unpack_minibatch()
            self._before_training_iteration(**kwargs)
            self.model.fit(self.model.pooled(self.mb_x), self.mb_y)
            self.loss = self._make_empty_loss()
            self._after_training_iteration(**kwargs)
