"""Vanilla fine-tuning: CE over all seen-class logits, on new-class data only, no memory."""

from benchmarks.suites.single_label import StoreTemplate


class FineTuning(StoreTemplate):
    """The template's defaults are exactly this method: new-class rows, CE over all seen logits."""
