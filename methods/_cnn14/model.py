"""CNN14 (PANNs layout) with a growing linear head and BN / GN / CN normalisation.

Layout of the reference's `models/cnn14_pann_lin{,_GN,_CN}.py` (mulimani/CIL-ML-Audio;
../shared/reference/multilabel_audio.md section 4), which is PANNs' Cnn14 (Kong et al. 2020)
without its fc1/embedding dropout:

    input (B, T, M) log-mel -> (B, 1, T, M) -> bn0: BatchNorm2d(M) over the mel bins
    6 x ConvBlock(conv3x3 no bias -> norm -> ReLU -> conv3x3 -> norm -> ReLU -> avg-pool 2x2)
        each followed by dropout 0.2; widths 64, 128, 256, 512, 1024, 2048
        (an axis of length 1 is not pooled further: only inputs under 64 x 64 reach that)
    z = output of block 6 (after its dropout): (B, 2048, 15, 1) for 1001 x 64 input
    mean over frequency, then max over time + mean over time -> (B, 2048)
    fc: Linear(2048, C); grows by the new classes of each phase, old rows copied

Normalisation of the blocks (`norm`; bn0 always stays BatchNorm, as in the reference):
- "bn": BatchNorm2d (running statistics, momentum 0.1);
- "gn": GroupNorm(32, C) with affine parameters; no running statistics, train = eval;
- "cn": Continual Normalization (Pham et al., ICLR 2022): GroupNorm(32, C) without affine, then
  BatchNorm2d(C) (running statistics, affine).
The group count is min(32, C): 32 on every block of the real widths; the scaled-down widths used
on the embedded dataset (4 ... 128) get 4, 8, 16, then 32 groups.

Initialisation (PANNs `init_layer`/`init_bn`): Xavier-uniform convs, norm weight 1 and bias 0;
the linear head keeps PyTorch's default initialisation (the reference's `_lin` models do).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from datasets.errors import WeightsError
from datasets.weights import load_report, read_state_dict, require_file, short_list

REFERENCE_WIDTHS = (64, 128, 256, 512, 1024, 2048)
log = logging.getLogger(__name__)
PANNS_FIX = (
    "pass PANNs' Cnn14 checkpoint (e.g. Cnn14_mAP=0.431.pth, downloaded by hand), or set pretrained: null "
    "to train from scratch"
)
NORMS = ("bn", "gn", "cn")


def groups_for(channels: int, groups: int = 32) -> int:
    g = min(groups, channels)
    if channels % g:
        raise ValueError(f"GroupNorm: {channels} channels are not divisible into {g} groups")
    return g


class ContinualNorm(nn.Module):
    """CN(x) = BN(GN_{no affine}(x)): group-normalise each sample, then batch-normalise."""

    def __init__(self, channels: int, groups: int = 32, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.gn = nn.GroupNorm(groups_for(channels, groups), channels, eps=eps, affine=False)
        self.bn = nn.BatchNorm2d(channels, eps=eps, momentum=momentum)

    def forward(self, x):
        return self.bn(self.gn(x))


def make_norm(kind: str, channels: int, groups: int = 32) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(groups_for(channels, groups), channels, affine=True)
    if kind == "cn":
        return ContinualNorm(channels, groups)
    raise ValueError(f"unknown normalisation {kind!r}; use one of {NORMS}")


class ConvBlock(nn.Module):
    """conv-norm-ReLU twice, then 2x2 average pooling. Names conv1/bn1/conv2/bn2 as in PANNs
    (and the reference's GN/CN variants), so PANNs weights and the CKA layer list apply as they are."""

    def __init__(self, cin: int, cout: int, norm: str = "bn", groups: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = make_norm(norm, cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = make_norm(norm, cout, groups)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        # 2x2 average pooling (PANNs, the reference); an axis already reduced to length 1 is not
        # pooled, which only happens on inputs smaller than 64 x 64 (the scaled embedded dataset)
        return F.avg_pool2d(x, kernel_size=tuple(2 if n > 1 else 1 for n in x.shape[-2:]))


class CNN14(nn.Module):
    def __init__(
        self,
        num_classes: int,
        widths=REFERENCE_WIDTHS,
        norm: str = "bn",
        groups: int = 32,
        n_mels: int = 64,
        dropout: float = 0.2,
        view: str = "logmel",
    ):
        super().__init__()
        if len(widths) != 6:
            raise ValueError(f"CNN14 has 6 conv blocks; got widths {list(widths)}")
        self.widths, self.norm_kind, self.groups, self.n_mels, self.dropout, self.view = (
            tuple(widths),
            norm,
            groups,
            n_mels,
            dropout,
            view,
        )
        self.bn0 = nn.BatchNorm2d(n_mels)
        chans = (1,) + tuple(widths)
        for i in range(6):
            setattr(self, f"conv_block{i + 1}", ConvBlock(chans[i], chans[i + 1], norm, groups))
        self.feature_dim = widths[-1]
        self.fc = nn.Linear(self.feature_dim, num_classes)
        self._init()

    def _init(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def num_classes(self) -> int:
        return self.fc.out_features

    def blocks(self):
        return [getattr(self, f"conv_block{i + 1}") for i in range(6)]

    def config(self) -> dict:
        """What `CNN14(**config)` needs to rebuild this model (saved with phase checkpoints)."""
        return {
            "num_classes": self.num_classes,
            "widths": list(self.widths),
            "norm": self.norm_kind,
            "groups": self.groups,
            "n_mels": self.n_mels,
            "dropout": self.dropout,
            "view": self.view,
        }

    def expand_classifier(self, n: int) -> None:
        """Grow the head to n outputs: old rows copied, new rows PyTorch's default init (reference
        `change_output_dim`)."""
        old = self.fc
        if n == old.out_features:
            return
        if n < old.out_features:
            raise ValueError(f"cannot shrink the classifier from {old.out_features} to {n}")
        new = nn.Linear(old.in_features, n).to(old.weight.device, old.weight.dtype)
        with torch.no_grad():
            new.weight[: old.out_features] = old.weight
            new.bias[: old.out_features] = old.bias
        self.fc = new

    def forward(self, x):
        if isinstance(x, dict):
            x = x[self.view]
        x = x.unsqueeze(1) if x.dim() == 3 else x  # (B, 1, T, M)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
        for block in self.blocks():
            x = F.dropout(block(x), p=self.dropout, training=self.training)
        z = x
        x = x.mean(dim=3)
        features = x.max(dim=2).values + x.mean(dim=2)
        return {"logits": self.fc(features), "features": features, "z": z}


def load_pretrained(model: CNN14, path: str) -> dict:
    """Load PANNs (or any CNN14) weights from a user path through the one weights reader (weights_only).

    Tensors whose name and shape match are loaded; the rest is reported: `missing` (in the
    model, not in the file: e.g. the new head `fc.*`, GN/CN parameters), `unexpected` (in the
    file only: e.g. PANNs' spectrogram extractor, fc1, fc_audioset) and `shape_mismatch`. A file of
    which no tensor fits is refused: training would silently start from random weights.
    """
    state = read_state_dict(require_file(path, "PANNs CNN14", PANNS_FIX), "PANNs CNN14")
    own = model.state_dict()
    loadable = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    mismatch = sorted(k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape))
    missing, unexpected = sorted(set(own) - set(loadable) - set(mismatch)), sorted(set(state) - set(own))
    if not loadable:
        raise WeightsError(
            f"{path}: no tensor of it fits CNN14 (unexpected {short_list(unexpected)}; missing "
            f"{short_list(missing)}; shape mismatches {short_list(mismatch)}); {PANNS_FIX}"
        )
    model.load_state_dict(loadable, strict=False)
    return load_report(Path(path), len(loadable), missing, unexpected, shape_mismatch=mismatch)


def build_cnn14(modality: str, store, num_classes: int, cfg: dict) -> CNN14:
    """model_builder for the multi-label methods: widths, norm and optional weights from the config."""
    view = "logmel"
    n_mels = store.views[view].shape[-1] if store is not None else cfg.get("n_mels", 64)
    model = CNN14(
        num_classes,
        widths=tuple(cfg.get("widths", REFERENCE_WIDTHS)),
        norm=cfg.get("norm", "bn"),
        groups=int(cfg.get("gn_groups", 32)),
        n_mels=n_mels,
        dropout=float(cfg.get("dropout", 0.2)),
        view=view,
    )
    model.load_report = None
    if cfg.get("pretrained"):
        model.load_report = load_pretrained(model, cfg["pretrained"])
        r = model.load_report
        log.info(
            "  pretrained weights %s: %d tensors loaded; missing %d %s; unexpected %d %s; shape mismatch %s",
            r["file"],
            r["loaded"],
            len(r["missing"]),
            r["missing"][:6],
            len(r["unexpected"]),
            r["unexpected"][:6],
            r["shape_mismatch"][:6],
        )
    return model
