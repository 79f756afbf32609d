"""The CIGN network (Mo, Pian, Tian, ICCV 2023), written for this harness.

Shape of the network (see README.md for the source of every piece):

    modality tokens  audio: 1 token per clip          visual: N tokens per clip
                     (feature vector, or ResNet-18    (token grid T x P of the feature store,
                      over the log spectrogram)        or the 7x7 map of a ResNet-18 on the frame)
    class tokens     Z = [Z_0; Z_1; ...; Z_s], one learnable (k_j x D) block per step j,
                     shared by the audio and the visual branch
    per branch m     [X_m; Z] -> `depth` pre-LN transformer blocks -> split X'_m, Z'_m
                     G_m = Grouping(X'_m, Z'_m)         (B, C, D): one grouped feature per class
                     z_m = w_m^T G_m + b_m              (B, C): class-agnostic head, p_m = sigmoid(z_m)
    token classifier u = W_cls Z + b_cls                (C, C): every token must name its own class
    prediction       audio argmax p_a, visual argmax p_v, audio-visual argmax p_a * p_v

Grouping (GroupViT-style, one stage): LN on both inputs; a token-mixing MLP along the
class-token axis (C -> H -> C); LN; a post-norm cross-attention block (groups attend to
the modality tokens); an assignment attention whose softmax runs over the GROUP axis
(each modality token is given to the classes): hard (Gumbel straight-through one-hot in
training, argmax one-hot in eval) or soft; each group averages its assigned tokens
(weights / (sum + 1)); projection, residual, channel MLP.

Growth (`expand_classifier`): a new token block (trunc-normal, std 0.02) is appended and
every older block is frozen; the token classifier keeps its old rows; the token-mixing MLP
of every grouping block gets zero input columns and fresh output rows for the new tokens,
so the old groups' projected tokens are unchanged by the growth itself.

Continual grouping, structural part (designed; `attention: continual`, `assign_scope: step`):
class tokens attend to the modality tokens and to themselves only (modality tokens to
modality tokens only), and the assignment softmax runs within each step's block of groups.
With the zero-column growth, adding classes then leaves every old-class output unchanged.
`attention: full` / `assign_scope: all` give the reference's fully coupled version.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from datasets.base import MODALITIES
from datasets.base import MODALITY_VIEWS as FEATURE_VIEWS
from datasets.weights import check_keys, checkpoint_sha256, read_state_dict, require_file

RESNET18_FIX = (
    "give a local torchvision ResNet-18 ImageNet state dict (nothing is downloaded), or set "
    "visual_weights: null for random init"
)

#: store views each input mode reads, per modality (FEATURE_VIEWS: the cached features)
RAW_VIEWS = {"audio": ("spectrogram",), "visual": ("image",), "audio-visual": ("spectrogram", "image")}


def _branches(modality: str) -> tuple[str, ...]:
    return FEATURE_VIEWS[modality]


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------- transformer parts


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability p (training only)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int | None = None):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out or dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head attention; self-attention with a fused qkv, or cross-attention (query, context)."""

    def __init__(self, dim: int, heads: int, cross: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads, self.cross = heads, cross
        if cross:
            self.q, self.kv = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, context=None, mask=None):
        B, N, D = x.shape
        h = self.heads
        if self.cross:
            q = self.q(x).reshape(B, N, h, D // h).transpose(1, 2)
            k, v = self.kv(context).reshape(B, context.shape[1], 2, h, D // h).permute(2, 0, 3, 1, 4)
        else:
            q, k, v = self.qkv(x).reshape(B, N, 3, h, D // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    """Pre-LN ViT block: x + DP(MHSA(LN x)); x + DP(MLP(LN x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, int(dim * mlp_ratio))
        self.drop = DropPath(drop_path)

    def forward(self, x, mask=None):
        x = x + self.drop(self.attn(self.norm1(x), mask=mask))
        return x + self.drop(self.mlp(self.norm2(x)))


class CrossAttnBlock(nn.Module):
    """Post-norm cross-attention block: q + MHA(q, x); + MLP(LN .); then LN."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.attn = Attention(dim, heads, cross=True)
        self.norm2, self.mlp, self.norm_post = nn.LayerNorm(dim), Mlp(dim, int(dim * mlp_ratio)), nn.LayerNorm(dim)

    def forward(self, query, context):
        x = query + self.attn(query, context)
        x = x + self.mlp(self.norm2(x))
        return self.norm_post(x)


# ----------------------------------------------------------------------------- assignment and grouping


def assign(
    logits: torch.Tensor, mode: str, training: bool, tau: float = 1.0, dim: int = 1, blocks: list[int] | None = None
) -> torch.Tensor:
    """Assignment of modality tokens to groups from logits (B, C, N), normalised over `dim` (groups).

    soft: softmax. hard: in training, Gumbel-softmax (temperature tau) with a straight-through
    one-hot; in eval, the argmax one-hot (straight-through as well, so it stays differentiable).
    blocks: sizes of consecutive group blocks normalised separately (one block per step); None = one block.
    """
    if blocks is not None and len(blocks) > 1:
        return torch.cat(
            [assign(part, mode, training, tau, dim) for part in logits.split(list(blocks), dim=dim)], dim=dim
        )
    if mode == "soft":
        return torch.softmax(logits, dim=dim)
    if mode != "hard":
        raise ValueError(f"assignment must be 'hard' or 'soft', got {mode!r}")
    if training:
        return F.gumbel_softmax(logits, tau=tau, hard=True, dim=dim)
    soft = torch.softmax(logits, dim=dim)
    hard = torch.zeros_like(soft).scatter_(dim, soft.argmax(dim, keepdim=True), 1.0)
    return hard - soft.detach() + soft


class AssignAttention(nn.Module):
    """One-head assignment of the N modality tokens to the C groups, then a per-group average."""

    def __init__(self, dim: int, mode: str = "hard", tau: float = 1.0, eps: float = 1.0):
        super().__init__()
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))
        self.scale, self.mode, self.tau, self.eps = dim**-0.5, mode, tau, eps

    def forward(self, groups, x, blocks=None):
        logits = self.q(groups) @ self.k(x).transpose(1, 2) * self.scale  # (B, C, N)
        a = assign(logits.float(), self.mode, self.training, self.tau, dim=1, blocks=blocks).to(x.dtype)
        pooled = (a / (a.sum(-1, keepdim=True) + self.eps)) @ self.v(x)  # each group: mean of its tokens
        return self.proj(pooled), logits, a


class GroupingBlock(nn.Module):
    """GroupViT-style grouping of modality tokens x (B, N, D) into the class tokens (B, C, D)."""

    def __init__(
        self,
        dim: int,
        num_groups: int,
        heads: int,
        mlp_ratio: float,
        mix_hidden: int,
        mode: str = "hard",
        tau: float = 1.0,
        eps: float = 1.0,
    ):
        super().__init__()
        self.norm_tokens, self.norm_x = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mix = Mlp(num_groups, mix_hidden, num_groups)  # along the class-token axis
        self.norm_post_tokens = nn.LayerNorm(dim)
        self.pre_assign = CrossAttnBlock(dim, heads, mlp_ratio)
        self.assign = AssignAttention(dim, mode, tau, eps)
        self.norm_new, self.mlp_channels = nn.LayerNorm(dim), Mlp(dim, int(dim * mlp_ratio))

    @property
    def num_groups(self) -> int:
        return self.mix.fc1.in_features

    def project_groups(self, groups):
        """Token-mixing MLP over the class-token axis, then LN: (B, C, D) -> (B, C, D)."""
        return self.norm_post_tokens(self.mix(groups.transpose(1, 2)).transpose(1, 2))

    def forward(self, x, groups, blocks=None):
        groups, x = self.norm_tokens(groups), self.norm_x(x)
        projected = self.pre_assign(self.project_groups(groups), x)
        new, logits, a = self.assign(projected, x, blocks)
        new = new + projected
        new = new + self.mlp_channels(self.norm_new(new))
        return new, logits, a

    def expand(self, num_groups: int) -> None:
        """Grow the token-mixing MLP to `num_groups`: old weights copied; the new input columns
        are zero (the old groups' outputs do not change) and the new output rows are fresh."""
        old1, old2 = self.mix.fc1, self.mix.fc2
        c = old1.in_features
        if num_groups == c:
            return
        if num_groups < c:
            raise ValueError(f"cannot shrink the grouping from {c} to {num_groups} groups")
        fc1, fc2 = nn.Linear(num_groups, old1.out_features), nn.Linear(old2.in_features, num_groups)
        fc1, fc2 = fc1.to(old1.weight.device, old1.weight.dtype), fc2.to(old2.weight.device, old2.weight.dtype)
        with torch.no_grad():
            fc1.weight.zero_()
            fc1.weight[:, :c] = old1.weight
            fc1.bias.copy_(old1.bias)
            nn.init.trunc_normal_(fc2.weight, std=0.02)
            fc2.weight[:c] = old2.weight
            fc2.bias.zero_()
            fc2.bias[:c] = old2.bias
        self.mix.fc1, self.mix.fc2 = fc1, fc2


def continual_mask(n: int, c: int, device=None) -> torch.Tensor:
    """Boolean self-attention mask (True = may attend) over [N modality tokens; C class tokens]:
    modality tokens attend to modality tokens only; each class token to the modality tokens and
    itself. A class token's output then depends on the data and on itself only, so tokens added
    later change neither the old class tokens' outputs nor the modality tokens."""
    mask = torch.zeros(n + c, n + c, dtype=torch.bool, device=device)
    mask[:, :n] = True
    idx = torch.arange(n, n + c, device=device)
    mask[idx, idx] = True
    return mask


class ModalityBranch(nn.Module):
    """[X_m; Z] -> transformer -> grouping -> per-class logits z_m (class-agnostic head)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        drop_path: float,
        num_groups: int,
        mix_hidden: int,
        mode: str,
        tau: float,
        eps: float,
        attention: str = "full",
    ):
        super().__init__()
        if attention not in ("full", "continual"):
            raise ValueError(f"attention must be 'full' or 'continual', got {attention!r}")
        self.attention = attention
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, drop_path) for _ in range(depth))
        self.grouping = GroupingBlock(dim, num_groups, heads, mlp_ratio, mix_hidden, mode, tau, eps)
        self.head = nn.Linear(dim, 1)

    def forward(self, tokens, class_tokens, blocks=None):
        B, N, _ = tokens.shape
        z = torch.cat([tokens, class_tokens.unsqueeze(0).expand(B, -1, -1)], dim=1)
        mask = continual_mask(N, class_tokens.shape[0], z.device) if self.attention == "continual" else None
        for blk in self.blocks:
            z = blk(z, mask)
        x, g = z[:, :N], z[:, N:]
        groups, assign_logits, a = self.grouping(x, g, blocks)
        return {
            "logits": self.head(groups).squeeze(-1),
            "groups": groups,
            "assign_logits": assign_logits,
            "assign": a,
            "tokens": x,
            "class_tokens": g,
        }


# ----------------------------------------------------------------------------- input encoders


class FeatureTokens(nn.Module):
    """Cached features -> tokens: audio (B, Da) -> 1 token; visual (B, T, P, Dv) -> T*P tokens
    (or P tokens, averaged over T, with pool_time). Linear to D, then L2-normalised (as the
    reference normalises its encoder tokens)."""

    def __init__(self, in_dim: int, dim: int, normalize: bool, pool_time: bool = False):
        super().__init__()
        self.proj, self.normalize, self.pool_time = nn.Linear(in_dim, dim), normalize, pool_time

    def forward(self, x):
        if x.ndim == 2:
            x = x[:, None, :]
        elif x.ndim == 4:
            x = x.mean(1) if self.pool_time else x.reshape(x.shape[0], -1, x.shape[-1])
        t = self.proj(x)
        return F.normalize(t, dim=-1) if self.normalize else t


def _resnet18_body(in_channels: int = 3) -> nn.Sequential:
    from torchvision.models import resnet18

    net = resnet18(weights=None)  # never downloads
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    return net


def load_resnet18_weights(net: nn.Module, path: str | Path) -> str:
    """Load a torchvision ResNet-18 state dict (e.g. resnet18-f37072fd.pth) from a local file through the one
    weights reader (weights_only); the classifier `fc.*` may be absent or is ignored. Returns its sha256."""
    what = "visual_weights (torchvision ResNet-18)"
    path = require_file(path, what, RESNET18_FIX)
    state = read_state_dict(path, what)
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    own = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    check_keys(own, state, path, what, RESNET18_FIX)
    net.load_state_dict(state, strict=False)
    return checkpoint_sha256(path)


class RawVisualEncoder(nn.Module):
    """ResNet-18 (conv1..layer4) on the frame -> 1x1 conv to D -> L2-normalised tokens (h*w of them)."""

    def __init__(self, dim: int, weights: str | None = None):
        super().__init__()
        net = _resnet18_body(3)
        self.init = "random (no visual_weights given)"
        if weights:
            self.init = f"ImageNet ResNet-18 from {weights} (sha256 {load_resnet18_weights(net, weights)})"
        self.body = nn.Sequential(
            net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
        )
        self.proj = nn.Conv2d(512, dim, kernel_size=1)

    def forward(self, image):
        f = self.proj(self.body(image))
        return F.normalize(f.flatten(2).transpose(1, 2), dim=-1)


class RawAudioEncoder(nn.Module):
    """ResNet-18 with a 1-channel conv1, from scratch, on the log spectrogram / spec_std ->
    global max pool -> Linear(512, D) -> L2-normalised: one token."""

    def __init__(self, dim: int, spec_std: float = 12.0):
        super().__init__()
        net = _resnet18_body(1)
        self.body = nn.Sequential(
            net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
        )
        self.fc = nn.Linear(512, dim)
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)
        self.spec_std = spec_std

    def forward(self, spec):
        f = self.body((spec / self.spec_std).unsqueeze(1))
        f = torch.amax(f, dim=(2, 3))
        return F.normalize(self.fc(f), dim=-1)[:, None, :]


# ----------------------------------------------------------------------------- the network


class CIGNNet(nn.Module):
    def __init__(
        self,
        modality: str,
        input_mode: str,
        num_classes: int,
        *,
        dim: int = 512,
        depth: int = 3,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.1,
        mix_hidden: int | None = None,
        assignment: str = "hard",
        gumbel_tau: float = 1.0,
        assign_eps: float = 1.0,
        attention: str = "full",
        assign_scope: str = "all",
        normalize_tokens: bool = True,
        freeze_old_tokens: bool = True,
        audio_dim: int = 0,
        visual_dim: int = 0,
        visual_pool_time: bool = False,
        visual_weights: str | None = None,
        spec_std: float = 12.0,
        flip: bool = True,
    ):
        super().__init__()
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        if input_mode not in ("features", "raw"):
            raise ValueError(f"input must be 'features' or 'raw', got {input_mode!r}")
        self.modality, self.input_mode, self.branches = modality, input_mode, _branches(modality)
        if assign_scope not in ("all", "step"):
            raise ValueError(f"assign_scope must be 'all' or 'step', got {assign_scope!r}")
        self.feature_dim, self.freeze_old_tokens, self.assign_scope = dim, freeze_old_tokens, assign_scope
        self.views = (FEATURE_VIEWS if input_mode == "features" else RAW_VIEWS)[modality]
        self.init_info = {"input": input_mode}
        self.tokens = nn.ParameterList([self._new_tokens(num_classes, dim)])
        self.token_classifier = nn.Linear(dim, num_classes)
        encoders = {}
        for m in self.branches:
            if input_mode == "features":
                encoders[m] = FeatureTokens(
                    audio_dim if m == "audio" else visual_dim, dim, normalize_tokens, m == "visual" and visual_pool_time
                )
            elif m == "audio":
                encoders[m] = RawAudioEncoder(dim, spec_std)
                self.init_info["audio_encoder"] = (
                    "ResNet-18 (1-channel conv1), random init (reference: trained from scratch)"
                )
            else:
                encoders[m] = RawVisualEncoder(dim, visual_weights)
                self.init_info["visual_encoder"] = encoders[m].init
        self.encoders = nn.ModuleDict(encoders)
        # train-time random horizontal flip of the frames (raw mode); applied by `augment`, not in forward
        self.flip = bool(flip) and input_mode == "raw" and "visual" in self.branches
        self.branch = nn.ModuleDict(
            {
                m: ModalityBranch(
                    dim,
                    depth,
                    heads,
                    mlp_ratio,
                    drop_path,
                    num_classes,
                    mix_hidden or max(1, dim // 2),
                    assignment,
                    gumbel_tau,
                    assign_eps,
                    attention,
                )
                for m in self.branches
            }
        )
        # Linear: trunc-normal std 0.02, LayerNorm: 1/0 (reference); the ResNets keep torchvision's
        # conv/BN init (or the loaded weights): they hold no Linear/LayerNorm besides the audio fc.
        self.token_classifier.apply(_init_linear)
        self.branch.apply(_init_linear)
        self.encoders.apply(_init_linear)

    @staticmethod
    def _new_tokens(n: int, dim: int) -> nn.Parameter:
        return nn.Parameter(nn.init.trunc_normal_(torch.empty(n, dim), std=0.02))

    @property
    def num_classes(self) -> int:
        return sum(t.shape[0] for t in self.tokens)

    @property
    def step_sizes(self) -> list[int]:
        return [t.shape[0] for t in self.tokens]

    @property
    def assign_blocks(self) -> list[int] | None:
        """Group blocks of the assignment softmax: one per step ('step'), or all groups together ('all')."""
        return self.step_sizes if self.assign_scope == "step" else None

    def class_tokens(self) -> torch.Tensor:
        return torch.cat(list(self.tokens), dim=0)

    def expand_classifier(self, num_classes: int) -> None:
        """Append a token block for the new classes; freeze the older blocks; grow the token
        classifier (old rows kept) and every grouping block's token-mixing MLP."""
        c = self.num_classes
        if num_classes == c:
            return
        if num_classes < c:
            raise ValueError(f"cannot shrink CIGN from {c} to {num_classes} class tokens")
        ref = self.tokens[0]
        if self.freeze_old_tokens:
            for t in self.tokens:
                t.requires_grad_(False)
        self.tokens.append(self._new_tokens(num_classes - c, ref.shape[1]).to(ref.device))
        old = self.token_classifier
        new = nn.Linear(old.in_features, num_classes).to(old.weight.device)
        _init_linear(new)
        with torch.no_grad():
            new.weight[:c] = old.weight
            new.bias[:c] = old.bias
        self.token_classifier = new
        for m in self.branches:
            self.branch[m].grouping.expand(num_classes)

    def augment(self, views: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Train-time augmentation of a batch's views: each frame flipped horizontally with probability 1/2 (raw
        mode, `flip`). The strategy calls it once per training batch, before the student and the teacher run, so
        that both see the same frames (a flip inside `forward` would reach the train-mode student only)."""
        if not self.flip:
            return views
        image = views["image"]
        mask = torch.rand(image.shape[0], device=image.device) < 0.5
        return {**views, "image": torch.where(mask[:, None, None, None], image.flip(-1), image)}

    def forward(self, views: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z = self.class_tokens()
        out: dict[str, torch.Tensor] = {"token_logits": self.token_classifier(z)}
        feats = []
        for m, view in zip(self.branches, self.views):
            r = self.branch[m](self.encoders[m](views[view]), z, self.assign_blocks)
            for k, v in r.items():
                out[f"{m}_{k}"] = v
            feats.append(r["tokens"].mean(1))
        if self.modality == "audio-visual":  # argmax of log p_a + log p_v = argmax of p_a * p_v
            out["logits"] = F.logsigmoid(out["audio_logits"].float()) + F.logsigmoid(out["visual_logits"].float())
        else:
            out["logits"] = out[f"{self.branches[0]}_logits"]
        out["features"] = torch.stack(feats).mean(0)
        return out


def pick_input_mode(modality: str, store_views, requested: str = "auto") -> str:
    """'features' or 'raw' for a store: the requested mode if the store has its views; 'auto' prefers features."""
    have = set(store_views)
    ok = {mode: set(views[modality]) <= have for mode, views in (("features", FEATURE_VIEWS), ("raw", RAW_VIEWS))}
    if requested == "auto":
        for mode in ("features", "raw"):
            if ok[mode]:
                return mode
        raise ValueError(
            f"CIGN {modality}: the store has views {sorted(have)}; it needs {list(FEATURE_VIEWS[modality])} "
            f"(input: features) or {list(RAW_VIEWS[modality])} (input: raw)"
        )
    if requested not in ok:
        raise ValueError(f"CIGN: input must be auto, features or raw, got {requested!r}")
    if not ok[requested]:
        views = (FEATURE_VIEWS if requested == "features" else RAW_VIEWS)[modality]
        raise ValueError(
            f"CIGN {modality} with input: {requested} needs store views {list(views)}; the store has {sorted(have)}"
        )
    return requested


def build_cign(modality: str, store, num_classes: int, cfg: dict | None = None) -> CIGNNet:
    """The CIGN network for a store's views (the MethodSpec model_builder)."""
    cfg = cfg or {}
    mode = pick_input_mode(modality, store.views, cfg.get("input", "auto"))
    kw = {}
    if mode == "features":
        if "audio" in store.views:
            kw["audio_dim"] = store.views["audio"].shape[-1]
        if "visual" in store.views:
            kw["visual_dim"] = store.views["visual"].shape[-1]
        kw["visual_pool_time"] = cfg.get("visual_tokens", "all") == "mean_t"
    else:
        kw["visual_weights"] = cfg.get("visual_weights")
        if modality != "audio" and not kw["visual_weights"] and not cfg.get("random_encoders"):
            # Offline-first: the reference's ImageNet ResNet-18 comes only from a user path; a random
            # visual encoder must be asked for explicitly, and is then recorded in the cell's config.
            raise ValueError(
                "CIGN raw mode: no ImageNet ResNet-18 weights (config visual_weights: a local torchvision state dict); "
                "give them, or pass --random-encoders to run with a random visual encoder"
            )
        kw["spec_std"] = float(cfg.get("spec_std", 12.0))
        kw["flip"] = bool(cfg.get("flip", True))
    net = CIGNNet(
        modality,
        mode,
        num_classes,
        dim=int(cfg.get("dim", 512)),
        depth=int(cfg.get("depth", 3)),
        heads=int(cfg.get("heads", 8)),
        mlp_ratio=float(cfg.get("mlp_ratio", 4.0)),
        drop_path=float(cfg.get("drop_path", 0.1)),
        mix_hidden=cfg.get("mix_hidden"),
        assignment=cfg.get("assignment", "hard"),
        gumbel_tau=float(cfg.get("gumbel_tau", 1.0)),
        assign_eps=float(cfg.get("assign_eps", 1.0)),
        attention=cfg.get("attention", "full"),
        assign_scope=cfg.get("assign_scope", "all"),
        normalize_tokens=bool(cfg.get("normalize_tokens", True)),
        freeze_old_tokens=bool(cfg.get("freeze_old_tokens", True)),
        **kw,
    )
    return net
