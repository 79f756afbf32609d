from pathlib import Path

from methods._avcil import AVCILSpec
from methods.av_cil.strategy import AVCIL

_HERE = Path(__file__).parent

# Audio-visual only, as the reference (`--modality` choices=['audio-visual']).
METHODS = [
    AVCILSpec("av_cil", AVCIL, _HERE, modalities=("audio-visual",)),
    # harness variant: of the epochs tied at the best val accuracy keep the last, not the reference's first (README,
    # "Variant av_cil-lastbest": on a small val split the first tied epoch is undertrained and teaches the next step)
    AVCILSpec("av_cil-lastbest", AVCIL, _HERE, modalities=("audio-visual",), options={"selection_ties": "last"}),
]
