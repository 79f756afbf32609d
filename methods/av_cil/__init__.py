from pathlib import Path

from methods._avcil import AVCILSpec
from methods.av_cil.strategy import AVCIL

# Audio-visual only, as the reference (`--modality` choices=['audio-visual']).
METHODS = [AVCILSpec("av_cil", AVCIL, Path(__file__).parent, modalities=("audio-visual",))]
