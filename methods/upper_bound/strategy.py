"""Upper bound: at every step a fresh model is trained from scratch on all seen classes' data."""

from benchmarks.suites.single_label import StoreTemplate


class UpperBound(StoreTemplate):
    def training_rows(self):
        return self.stream.seen("train", self.step_index)

    def model_adaptation(self, model=None):
        # A new model every step (reference: fine_tuning/train_incremental_fine_tuning.py with
        # --upper_bound True re-creates IncreAudioVisualNet); no teacher is kept.
        self.model = self.model_factory(self.seen_classes)
        return self.model.to(self.device)
