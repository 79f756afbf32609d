from pathlib import Path

from methods import MethodSpec
from methods.av_cil.strategy import AVCIL

# Audio-visual only, as the reference (`--modality` choices=['audio-visual']).
METHODS = [MethodSpec("av_cil", AVCIL, Path(__file__).parent, modalities=("audio-visual",))]
