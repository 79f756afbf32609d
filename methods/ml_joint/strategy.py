"""Joint training (upper bound): at phase t, the clips of every train phase file 0..t.

A clip's known labels are the union of what its phase files label; the other entries (an old
class in a new-phase clip, which the reference's files do not label) are left out of the loss
(masked BCE), never taken as negatives. pos_weight: the reference's scalar, zeros / ones over
the known entries of the joint label matrix.
"""

from benchmarks.suites.multilabel import MultiLabelTemplate


class MLJoint(MultiLabelTemplate):
    train_set_mode = "joint"  # the template's default loss is the masked BCE
