"""The AV-CIL network (Pian et al., ICCV 2023), shared by the AV-CIL-family methods.

Reference: weiguoPian/AV-CIL_ICCV2023 `model/audio_visual_model_incremental.py`
(../shared/reference/av_cil.md section 3.1). Dimensions are read from the data instead of
the reference's hard-coded 768 / 8 x 196.

- audio:        f_a = ReLU(W_a a)                       -> classifier
- visual:       f_v = ReLU(W_v mean_{t,k} V_{t,k})      -> classifier
- audio-visual: audio-guided channel-wise attention over the visual token grid
      a' = tanh(W_aa a),  v'_{t,k} = tanh(W_av V_{t,k})
      alpha_{t,.,d} = softmax_k(v'_{t,k,d} a'_d)          (spatial, over the P tokens)
      u_{t,d} = sum_k alpha_{t,k,d} v'_{t,k,d}
      beta_{.,d} = softmax_t(u_{t,d} a'_d)                (temporal, over the T slots)
      v~_d = sum_t beta_{t,d} sum_k alpha_{t,k,d} V_{t,k,d}   (pooled from the RAW tokens)
      f = ReLU(W_a a) + ReLU(W_v v~)                      -> classifier
The classifier is a linear layer that grows as classes arrive, keeping old rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from datasets.base import MODALITIES


class AVCILNet(nn.Module):
    def __init__(self, modality: str, audio_dim: int, visual_dim: int, num_classes: int, hidden_dim: int | None = None):
        super().__init__()
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        self.modality = modality
        hidden = hidden_dim or visual_dim  # the reference uses 768 for every width
        self.feature_dim = hidden
        if modality in ("audio", "audio-visual"):
            self.audio_proj = nn.Linear(audio_dim, hidden)
        if modality in ("visual", "audio-visual"):
            self.visual_proj = nn.Linear(visual_dim, hidden)
        if modality == "audio-visual":
            self.attn_audio_proj = nn.Linear(audio_dim, visual_dim)
            self.attn_visual_proj = nn.Linear(visual_dim, visual_dim)
        self.classifier = nn.Linear(hidden, num_classes)

    @property
    def num_classes(self) -> int:
        return self.classifier.out_features

    def expand_classifier(self, num_classes: int) -> None:
        """Grow to `num_classes` outputs; old rows and biases are copied, new rows default-initialised."""
        old = self.classifier
        if num_classes == old.out_features:
            return
        if num_classes < old.out_features:
            raise ValueError(f"cannot shrink the classifier from {old.out_features} to {num_classes}")
        new = nn.Linear(old.in_features, num_classes).to(old.weight.device)
        with torch.no_grad():
            new.weight[: old.out_features] = old.weight
            new.bias[: old.out_features] = old.bias
        self.classifier = new

    def attention(self, audio: torch.Tensor, visual: torch.Tensor):
        """Spatial (B,T,P,D) and temporal (B,T,D) attention weights, audio-guided and channel-wise."""
        a = torch.tanh(self.attn_audio_proj(audio))  # (B, D)
        v = torch.tanh(self.attn_visual_proj(visual))  # (B, T, P, D)
        spatial = torch.softmax(v * a[:, None, None, :], dim=2)
        attended = (spatial * v).sum(2)  # (B, T, D)
        temporal = torch.softmax(attended * a[:, None, :], dim=1)
        return spatial, temporal

    def forward(self, views: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.modality == "audio":
            f = out["audio_features"] = F.relu(self.audio_proj(views["audio"]))
        elif self.modality == "visual":
            visual = views["visual"]
            pooled = visual.reshape(visual.shape[0], -1, visual.shape[-1]).mean(1)
            f = out["visual_features"] = F.relu(self.visual_proj(pooled))
        else:
            audio, visual = views["audio"], views["visual"]
            spatial, temporal = self.attention(audio, visual)
            pooled = (temporal * (spatial * visual).sum(2)).sum(1)  # from the raw tokens
            out["spatial_attention"], out["temporal_attention"], out["pooled_visual"] = spatial, temporal, pooled
            out["audio_features"] = F.relu(self.audio_proj(audio))
            out["visual_features"] = F.relu(self.visual_proj(pooled))
            f = out["audio_features"] + out["visual_features"]
        out["features"] = f
        out["logits"] = self.classifier(f)
        return out


def build_model(modality: str, store, num_classes: int, cfg: dict | None = None) -> AVCILNet:
    """The network for a store's views: audio (D_a,), visual (T, P, D_v). `cfg["hidden_dim"]`
    overrides the fused width (default: the visual token dim, as the reference's 768)."""
    hidden_dim = (cfg or {}).get("hidden_dim")
    audio_dim = store.views["audio"].shape[-1] if "audio" in store.views else 1
    visual_dim = store.views["visual"].shape[-1] if "visual" in store.views else 1
    return AVCILNet(modality, audio_dim, visual_dim, num_classes, hidden_dim)
