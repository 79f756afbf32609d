"""The AV-CIL network with AFC's local similarity classifier (LSC) in place of the linear head.

Reference (summarised in ../shared/reference/av_cil.md section 3.7): `model/layers.py:98-135`
(`LSCLinear`, `SplitLSCLinear`, `reduce_proxies`) and `AFC/train_incremental_afc.py:246-295`
(the split into an old part fc1 and a new part fc2 at every step t >= 1, a fresh scale, fc1
trained with lr 0 and weight decay 0).

`LSCHead` keeps two proxy tensors, rows ordered class-major (row c*K + k is proxy k of class c):
- `old_proxies` (the classes of earlier steps): frozen (requires_grad False; the strategy also
  puts them in an optimizer group with lr 0 and weight decay 0, as the reference does);
- `proxies` (the classes of the current step): learnable, kaiming-normal initialised.
`factor` is the learnable NCA scale; `expand` creates a fresh one initialised to 1, as the
reference's new `SplitLSCLinear` does at every step t >= 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from methods._avcil.model import AVCILNet
from methods.afc.losses import lsc_similarity


class LSCHead(nn.Module):
    def __init__(self, in_features: int, num_classes: int, proxies_per_class: int = 10):
        super().__init__()
        self.in_features, self.K = in_features, proxies_per_class
        self.old_proxies = nn.Parameter(torch.empty(0, in_features), requires_grad=False)
        self.proxies = nn.Parameter(self._fresh(num_classes))
        self.factor = nn.Parameter(torch.tensor(1.0))

    def _fresh(self, num_classes: int, device=None) -> torch.Tensor:
        w = torch.empty(num_classes * self.K, self.in_features, device=device)
        nn.init.kaiming_normal_(w, nonlinearity="linear")  # std 1/sqrt(in_features), as LSCLinear
        return w

    @property
    def num_old(self) -> int:
        return self.old_proxies.shape[0] // self.K

    @property
    def out_features(self) -> int:
        return (self.old_proxies.shape[0] + self.proxies.shape[0]) // self.K

    def all_proxies(self) -> torch.Tensor:
        return torch.cat([self.old_proxies, self.proxies]) if self.num_old else self.proxies

    def expand(self, num_classes: int) -> None:
        """Freeze every current proxy (old := old + current) and add fresh proxies for the new
        classes, with a fresh scale 1 (the reference's SplitLSCLinear of step t >= 1)."""
        if num_classes == self.out_features:
            return
        if num_classes < self.out_features:
            raise ValueError(f"cannot shrink the LSC head from {self.out_features} to {num_classes}")
        device, n_new = self.proxies.device, num_classes - self.out_features
        self.old_proxies = nn.Parameter(self.all_proxies().detach().clone(), requires_grad=False)
        self.proxies = nn.Parameter(self._fresh(n_new, device=device))
        self.factor = nn.Parameter(torch.tensor(1.0, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lsc_similarity(x, self.all_proxies(), self.K)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint of step t holds t*k frozen and k learnable classes; resize to its shapes
        # (the harness rebuilds a resumed model by expanding the step-0 model in one go).
        for name, grad in (("old_proxies", False), ("proxies", True)):
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != getattr(self, name).shape:
                setattr(
                    self, name, nn.Parameter(torch.empty(saved.shape, device=self.proxies.device), requires_grad=grad)
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class AFCNet(AVCILNet):
    """AVCILNet whose classifier is an `LSCHead`; `logits` are the pooled class similarities."""

    def __init__(
        self,
        modality: str,
        audio_dim: int,
        visual_dim: int,
        num_classes: int,
        hidden_dim: int | None = None,
        proxies_per_class: int = 10,
    ):
        super().__init__(modality, audio_dim, visual_dim, num_classes, hidden_dim)
        self.classifier = LSCHead(self.feature_dim, num_classes, proxies_per_class)

    def expand_classifier(self, num_classes: int) -> None:
        self.classifier.expand(num_classes)

    def head_from_pooled(self, audio_features: torch.Tensor, pooled_visual: torch.Tensor) -> dict[str, torch.Tensor]:
        """Audio-visual forward from f_a and v~ onwards (f_v, f, logits), as `AVCILNet.forward`
        computes it: the importance weights need gradients w.r.t. these intermediate tensors of
        the frozen teacher without building its attention graph (tested against `forward`)."""
        visual_features = F.relu(self.visual_proj(pooled_visual))
        features = audio_features + visual_features
        return {"visual_features": visual_features, "features": features, "logits": self.classifier(features)}


def build_afc_model(modality: str, store, num_classes: int, cfg: dict | None = None) -> AFCNet:
    """As `methods.common.model.build_model`, with the LSC head (`cfg["proxies_per_class"]`, default 10)."""
    cfg = cfg or {}
    audio_dim = store.views["audio"].shape[-1] if "audio" in store.views else 1
    visual_dim = store.views["visual"].shape[-1] if "visual" in store.views else 1
    return AFCNet(
        modality, audio_dim, visual_dim, num_classes, cfg.get("hidden_dim"), int(cfg.get("proxies_per_class", 10))
    )
