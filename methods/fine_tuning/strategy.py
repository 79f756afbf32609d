"""Vanilla fine-tuning: CE over all seen-class logits, on new-class data only, no memory."""
from benchmarks.avalanche_layer import StoreTemplate


class FineTuning(StoreTemplate):
    """The template's defaults are exactly this method: new-class rows, CE over all seen logits."""
