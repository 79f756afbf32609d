"""miniARIC (`classroom_data`): classroom activity images, each with its own audio clip.

A subset of ARIC (Activity Recognition In Classroom, UESTC IVIPC lab) as used by MCIL-AudioCLIP
(../shared/reference/mcil_audioclip.md section 1.1). 33 classes, alphabetical (= the
reference's sorted folder listing and its hard-coded name list); the names go into prompts
verbatim, underscores kept, as the reference does.

Layout (root = `<data_root>/classroom_data`):

    root/image/{train,test}/<class>/*.jpg      one labelled person/activity per image
    root/audio/*.wav                           flat: no split, no class folders

Pairing is by file name ("fixed" pairing, the image store's `audio_clip` view): image
`A_B_rest.jpg` pairs with `audio/wav_rest.wav`, i.e. "wav_" + name.split("_", 2)[-1] with the
extension replaced by `.wav` (the reference's rule). A missing partner is a DatasetError naming
the image and the expected audio file; with skip_bad such images are left out and listed. Two
images may share a clip (the same moment, another person): the bank holds one row per
(clip, class, split group), so every clip row carries its image's label.

ARIC clips are 10 s spanning the moment before and after the frame, so the frame sits at the
clip's middle; the store keeps the centre 5 s (clip_seconds) around it at 44.1 kHz, the length
AudioCLIP's audio head was trained on. No val folder in the reference: 10 % of each class's
train images become val (datasets.adapters.paired_scan).

Protocols, class order from the reference's class_orders/classroom_data.yaml:
  13+10x2 [config classroom33_3-6-MoE-Adapters: its name says 3 tasks of 6, the file has 13, 10, 10]
  13+5x4  [config classroom33_5-5-MoE-Adapters: 13, 5, 5, 5, 5]
Memory 15 exemplars per class (495), for the harness's exemplar methods only (the reference
keeps none). Eval prompt template "a photo of a person who is {} in a classroom.".
"""

from __future__ import annotations

from pathlib import Path

from datasets.adapters.paired_folder import PairedFolderAdapter
from datasets.adapters.paired_protocol import protocol_name
from datasets.adapters.paired_scan import Item, Scan, files, listing
from datasets.base import ProtocolSpec, step_sizes
from datasets.errors import DatasetError

CLASSES: tuple[str, ...] = (
    "analyzing",
    "blackboard_wiping",
    "blackboard_writing",
    "discussing",
    "drinking",
    "eating",
    "gathering_up_bag",
    "handsup",
    "listening",
    "listening_to_music",
    "picking_up_computers",
    "reading",
    "relaxing",
    "reviewing",
    "scratching_head",
    "setting_equipment",
    "sleeping",
    "speaking",
    "standing",
    "student_demonstrating",
    "taking_bag",
    "taking_bottle",
    "taking_off",
    "taking_photos",
    "talking",
    "teaching",
    "unknown",
    "using_computers",
    "using_pad",
    "using_phone",
    "walking",
    "writing",
    "yawning",
)
CLASS_ORDER: tuple[int, ...] = (
    26,
    8,
    11,
    29,
    28,
    27,
    14,
    31,
    24,
    18,
    16,
    25,
    32,
    30,
    12,
    0,
    21,
    6,
    4,
    23,
    9,
    3,
    15,
    20,
    2,
    1,
    22,
    19,
    5,
    13,
    7,
    17,
    10,
)
# (initial, per_step, reference config name)
PROTOCOLS: tuple[tuple[int, int, str], ...] = (
    (13, 10, "classroom33_3-6-MoE-Adapters"),
    (13, 5, "classroom33_5-5-MoE-Adapters"),
)
MEMORY_PER_CLASS = 15
ARIC_PAGE = "https://ivipclab.github.io/publication_ARIC/ARIC/"


def audio_partner(image_name: str) -> str:
    """`A_B_rest.jpg` -> `wav_rest.wav` (the reference's pairing rule)."""
    rest = image_name.split("_", 2)[-1]
    return "wav_" + Path(rest).stem + ".wav"


class MiniARIC(PairedFolderAdapter):
    """miniARIC (see the module docstring)."""

    name, title, folder = "mini_aric", "miniARIC", "classroom_data"
    CLASSES = CLASSES
    PROMPT_NAMES = CLASSES  # verbatim, underscores kept (reference)
    user_protocol = False
    prompt_template = "a photo of a person who is {} in a classroom."

    def protocols(self) -> list[ProtocolSpec]:
        n = len(CLASSES)
        sizes = [step_sizes(n, k, i, source=f"{self.title} protocol") for i, k, _reference in PROTOCOLS]
        return [ProtocolSpec(protocol_name(s), s, MEMORY_PER_CLASS * n, CLASS_ORDER) for s in sizes]

    def missing_parts(self, data_root: Path) -> list[str]:
        missing = super().missing_parts(data_root)
        audio = self.root(data_root) / "audio"
        if audio.is_dir() and not files(audio, (".wav",)) and not any("audio" in m for m in missing):
            missing.append(f"{audio}/wav_*.wav (no .wav file in the audio folder)")
        return missing

    def layout_help(self, root: Path) -> str:
        return (
            f"  {root}/image/{{train,test}}/<class>/*.jpg for the 33 classes {CLASSES[0]} ... {CLASSES[-1]}\n"
            f"  {root}/audio/wav_<rest>.wav, one per image A_B_<rest>.jpg (flat folder)\n"
            f"  miniARIC comes from the ARIC authors ({ARIC_PAGE}); nothing is downloaded here.\n"
            f"  Then: python run_all.py --datasets {self.name}"
        )

    def scan_audio(self, root: Path, class_names: list[str], images: list[Item]) -> Scan:
        audio = root / "audio"
        wavs = {p.name: p for p in files(audio, (".wav",))}
        clips: list[Item] = []
        index: dict[tuple[str, int, str], int] = {}
        kept, image_clip, missing = [], [], []
        for it in images:
            want = audio_partner(it.path.name)
            p = wavs.get(want)
            if p is None:
                missing.append((it, audio / want))
                continue
            group = "test" if it.split == "test" else "train"  # the bank has no val: val images are carved from train
            key = (want, it.label, group)
            if key not in index:
                index[key] = len(clips)
                rel = p.relative_to(root).as_posix()
                clips.append(Item(rel, rel, p, it.label, group))
            kept.append(it)
            image_clip.append(index[key])
        if missing and not self.skip_bad:
            it, want = missing[0]
            raise DatasetError(
                f"{it.path}: its audio partner {want} does not exist (rule: image A_B_rest.jpg -> "
                "audio/wav_rest.wav); put the clip there, or delete the image, or run with --skip-bad "
                f"to leave such images out\n  {len(missing)} image(s) without audio:\n"
                + listing(f"{i.path} -> {w}" for i, w in missing)
            )
        # A clip shared by images of several classes or split groups gets one row per (class, group): unique ids.
        seen: dict[str, int] = {}
        for c in clips:
            seen[c.rel] = seen.get(c.rel, 0) + 1
        clips = [c if seen[c.rel] == 1 else c._replace(id=f"{c.rel}#{class_names[c.label]}/{c.split}") for c in clips]
        skipped = [
            {"file": it.rel, "reason": f"its audio partner {w.relative_to(root).as_posix()} is missing"}
            for it, w in missing
        ]
        used = {c.rel for c in clips}
        return Scan(
            root,
            class_names,
            kept,
            clips,
            "fixed",
            image_clip,
            skipped,
            audio_layout="flat: image A_B_rest.jpg <-> audio/wav_rest.wav",
            notes={"unpaired_audio_files": sum(1 for p in wavs.values() if p.relative_to(root).as_posix() not in used)},
        )


ADAPTERS = [MiniARIC()]
