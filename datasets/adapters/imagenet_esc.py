"""ImageNet-ESC-19 and ImageNet-ESC-27: ImageNet classes paired with matching ESC-50 sound classes.

The pairs are those of Lin et al.'s cross-modal adaptation (`imagenet_esc.py`, CLASS_MAP) as
used by MCIL-AudioCLIP (../shared/reference/mcil_audioclip.md section 1.2): 27 (WNID, ESC-50
class) pairs; ImageNet-ESC-19 drops 8 of them. Class index = sorted WNID order (= ImageNet
index order = the reference's label ids); the name put in prompts is the ImageNet class name of
the reference code's hard-coded lists (`continual_clip/datasets.py`), which writes "pig" for
n02395406 (the reference table's "pig (hog)" is an annotation). ESC-50 names and target ids are
kept in PAIRS for documentation and in the store meta.

Layout (root = `<data_root>/imagenet19` or `<data_root>/imagenet27`), either of:
  (a) the README's: image/{train,test}/<wnid>/*.JPEG + audio/{train,test}/<wnid>/*.wav
      ("class" pairing within split groups: train images with train clips, test with test);
  (b) the released code's: image/{train,test}/<wnid>/*.JPEG + one audio/<wnid>.wav per class
      (the code pairs every image of a class with that single clip; the bank holds one clip
      per class, used for every split).
The layout is detected from the audio folder; the class folders must be exactly the set's
WNIDs (a missing or extra one is an error listing them). No image/val in the reference: 10 %
of each class's train images become val (see datasets.adapters.paired_scan). Audio is stored as 5 s
at 44.1 kHz (ESC-50's clip length and rate), images at 224 px, CLIP-normalised.

Protocols (name `<initial>+<per_step>x<later steps>`; reference config in brackets), class
orders from the reference's class_orders/imagenet{19,27}.yaml (position k = model class k):
  IN-ESC-19: 7+6x2 [imagenet19_3-6] 7,6,6;   4+3x5 [imagenet19_6-3] 4,3,3,3,3,3
  IN-ESC-27: 7+5x4 [imagenet27_5-5] 7,5,5,5,5;  6+3x7 [imagenet27_8-3] 6,3,3,3,3,3,3,3
Memory 15 exemplars per class (285 / 405): the reference keeps no exemplars; the budget exists
only for the harness's exemplar methods. Eval prompt template "a bad photo of a {}." (the
reference configs' prompt_template).
"""

from __future__ import annotations

from pathlib import Path

from datasets.adapters.paired_folder import PairedFolderAdapter
from datasets.adapters.paired_protocol import protocol_name
from datasets.base import ProtocolSpec, step_sizes

# (WNID, ImageNet-1k index, name used in the reference's prompts, ESC-50 class, ESC-50 target id, in ImageNet-ESC-19)
PAIRS: tuple[tuple[str, int, str, str, int, bool], ...] = (
    ("n01514668", 7, "cock", "rooster", 1, True),
    ("n01514859", 8, "hen", "hen", 6, True),
    ("n01592084", 19, "chickadee", "chirping_birds", 14, True),
    ("n01644373", 31, "tree frog", "frog", 4, True),
    ("n02091635", 175, "Otterhound", "dog", 0, True),
    ("n02124075", 285, "Egyptian cat", "cat", 5, True),
    ("n02190166", 308, "fly", "insects", 7, True),
    ("n02229544", 312, "cricket", "crickets", 13, True),
    ("n02395406", 341, "pig", "pig", 2, True),
    ("n02415577", 349, "big-horn sheep", "sheep", 8, True),
    ("n02690373", 404, "airliner", "airplane", 47, True),
    ("n02917067", 466, "bullet train", "train", 45, True),
    ("n02951585", 473, "can opener", "can_opening", 34, False),
    ("n03000684", 491, "chainsaw", "chainsaw", 41, True),
    ("n03028079", 497, "church", "church_bells", 46, False),
    ("n03085013", 508, "computer keyboard", "keyboard_typing", 32, True),
    ("n03196217", 530, "digital clock", "clock_alarm", 37, True),
    ("n03347037", 556, "fire screen", "crackling_fire", 12, False),
    ("n03793489", 673, "computer mouse", "mouse_click", 31, True),
    ("n04447861", 861, "toilet seat", "toilet_flush", 18, False),
    ("n04517823", 882, "vacuum cleaner", "vacuum_cleaner", 36, True),
    ("n04548280", 892, "wall clock", "clock_tick", 38, True),
    ("n04553703", 896, "washbasin", "water_drops", 15, False),
    ("n04554684", 897, "washing machine", "washing_machine", 35, True),
    ("n04557648", 898, "water bottle", "drinking_sipping", 29, False),
    ("n04560804", 899, "water jug", "pouring_water", 17, False),
    ("n09421951", 977, "sandbar", "sea_waves", 11, False),
)

# class_orders/imagenet19.yaml and imagenet27.yaml of the reference (indices into the sorted WNIDs).
CLASS_ORDERS: dict[int, tuple[int, ...]] = {
    19: (12, 2, 4, 0, 16, 11, 8, 15, 5, 9, 14, 17, 7, 6, 1, 3, 13, 10, 18),
    27: (6, 13, 9, 18, 21, 20, 25, 2, 23, 1, 14, 11, 3, 10, 8, 19, 4, 24, 5, 12, 7, 22, 17, 0, 16, 26, 15),
}
# (initial, per_step, reference config name)
PROTOCOLS: dict[int, tuple[tuple[int, int, str], ...]] = {
    19: ((7, 6, "imagenet19_3-6"), (4, 3, "imagenet19_6-3")),
    27: ((7, 5, "imagenet27_5-5"), (6, 3, "imagenet27_8-3")),
}
MEMORY_PER_CLASS = 15  # harness-only exemplar budget (the reference is exemplar-free)
REFERENCE_REPO = "https://github.com/chenyukun924/MCIL-AudioCLIP"


def pairs(variant: int) -> tuple[tuple[str, int, str, str, int, bool], ...]:
    """The set's pairs in class-index (sorted WNID) order."""
    chosen = PAIRS if variant == 27 else tuple(p for p in PAIRS if p[5])
    return tuple(sorted(chosen, key=lambda p: p[0]))


class ImageNetESC(PairedFolderAdapter):
    """ImageNet-ESC-19 / -27 (see the module docstring)."""

    user_protocol = False
    prompt_template = "a bad photo of a {}."

    def __init__(self, variant: int = 19, **options):
        if variant not in (19, 27):
            raise ValueError(f"ImageNet-ESC variant must be 19 or 27, got {variant}")
        self.variant = variant
        self.name, self.title, self.folder = f"imagenet_esc{variant}", f"ImageNet-ESC-{variant}", f"imagenet{variant}"
        chosen = pairs(variant)
        self.CLASSES = tuple(p[0] for p in chosen)
        self.PROMPT_NAMES = tuple(p[2] for p in chosen)
        self.esc50 = tuple((p[3], p[4]) for p in chosen)
        super().__init__(**options)

    def protocols(self) -> list[ProtocolSpec]:
        n = len(self.CLASSES)
        out = []
        for initial, per_step, _reference in PROTOCOLS[self.variant]:
            sizes = step_sizes(n, per_step, initial, source=f"{self.title} protocol")
            out.append(ProtocolSpec(protocol_name(sizes), sizes, MEMORY_PER_CLASS * n, CLASS_ORDERS[self.variant]))
        return out

    def layout_help(self, root: Path) -> str:
        return (
            f"  {root}/image/{{train,test}}/<wnid>/*.JPEG for the "
            f"{len(self.CLASSES)} WNIDs {self.CLASSES[0]} ... {self.CLASSES[-1]} "
            "(ImageNet train images for train, ImageNet val images for test)\n"
            f"  and either {root}/audio/{{train,test}}/<wnid>/*.wav "
            "(ESC-50 clips of the paired sound class; README layout)\n"
            f"  or one {root}/audio/<wnid>.wav per class (the released code's layout).\n"
            f"  Pairs and layouts: {REFERENCE_REPO} (README) and "
            "datasets/adapters/imagenet_esc.py (PAIRS). Nothing is downloaded here.\n"
            f"  Then: python run_all.py --datasets {self.name}"
        )

    def plan(self, scan, bad):
        plan = super().plan(scan, bad)
        plan.image_meta["esc50"] = [
            {"wnid": w, "imagenet": n, "esc50_class": e, "esc50_target": t}
            for w, n, (e, t) in zip(self.CLASSES, self.PROMPT_NAMES, self.esc50)
        ]
        return plan


ADAPTERS = [ImageNetESC(19), ImageNetESC(27)]
