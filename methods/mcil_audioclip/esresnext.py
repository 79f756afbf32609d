"""ESResNeXt-fbsp: AudioCLIP's audio tower, ported to plain PyTorch.

Reference: AndreyGuzhov/AudioCLIP `model/esresnet/{base,fbsp,attention}.py` and
`utils/transforms.py` (commit 611d974), as used by `model/audioclip.py` (the `audio` head)
and by chenyukun924/MCIL-AudioCLIP `continual_clip/models.py` (`audio_encoder`);
../shared/reference/mcil_audioclip.md sections 3.1, 3.3 and 7.2.

Forward, for a waveform x in int16 scale, (B, L) or (B, C, L):
1. rescale [-32768, 32767] -> [-1, 1] affinely, x' = (x + 32768) * 2 / 65535 - 1
   (the reference's `scale()`; close to x / 32768);
2. frame each channel: zero-pad centrally to (n_frames - 1) * hop + win samples,
   n_frames = 1 + ceil((L - win) / hop) (1 if L <= win), multiply by the window
   (Blackman-Harris, periodic), zero-pad each frame centrally to n_fft;
3. LinearFBSP: a learnable complex filterbank applied to every frame (no torch.stft):
   out_features = round(n_fft / 2) + 1 one-sided bins, with per-bin parameters
   m (window exponent, init 0), fb (bandwidth, init 1), fc (centre frequency, init 0..K-1):
       t_n   = pi * linspace(-1, 1, n_fft)_n + 1e-8
       w_kn  = sinc(fb_k t_n / (m_k + 1e-8)) ** m_k          (complex power of a real base)
       W_kn  = sqrt(fb_k) * w_kn * exp(-i fc_k t_n)          (/ sqrt(n_fft) if normalized)
   the gradients of m, fb and fc are divided by their inf-norm (+1e-8);
4. power |X|^2 and the 3-band split: the first 3 * (K // 3) bins are cut into 3 contiguous
   bands of K // 3 bins (341 for n_fft 2048), which become the 3 input "channels" of the CNN;
   bins <= 0 are set to 1e-18, then 10 * log10;
5. every audio channel goes separately through a ResNeXt (stem conv 7x7/2 + maxpool,
   4 Bottleneck stages) with an Attention2d gate after each stage and after the global
   average pool; the pooled features of the audio channels are summed;
6. `fc`: 2048 -> num_classes (1024 in AudioCLIP).

Parameter and buffer names equal the reference's (the empty `fbsp.bias` included), so the `audio.*`
entries of `AudioCLIP-Full-Training.pt` (prefix stripped) load with `load_state_dict(strict=True)`;
`tests/methods/test_mcil_towers.py` checks the full key list, shapes and order against a manifest
derived from the reference class (`tests/methods/fixtures/audioclip_state_dict_layout.json`).

Deviations from the reference, none of which changes a loaded model's outputs beyond
floating-point rounding:
- no ignite base class, no loss functions (`loss_fn`, the global `ttf_weights` dict);
- the window is computed by `torch.signal.windows.general_cosine` (in float64, cast to
  float32, as the reference casts scipy's float64 window) instead of scipy;
- LinearFBSP handles real frames only (the reference's complex-input branch is unused by
  the FBSP front end); the complex power drops the reference's `0 * log|w|^2` phase term,
  which is identically 0 except where |w| = 0 (NaN in the reference);
- the gradient normalisation of m, fb, fc is an autograd function applied in forward
  instead of tensor hooks (hooks are lost when parameters are re-created, e.g. `to_empty`);
  it normalises each forward's gradient, the hooks normalise the accumulated one;
- framing uses `Tensor.unfold` instead of an index matrix (same frames).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

BLACKMAN_HARRIS = (0.35875, 0.48829, 0.14128, 0.01168)
_EPS = 1e-8


def blackman_harris(length: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The periodic 4-term Blackman-Harris window (scipy `get_window('blackmanharris', n, fftbins=True)`),
    computed in float64 and cast, as the reference casts scipy's float64 window."""
    w = torch.signal.windows.general_cosine(length, a=list(BLACKMAN_HARRIS), sym=False, dtype=torch.float64)
    return w.to(dtype)


def make_window(name: str, length: int) -> torch.Tensor:
    if name == "blackmanharris":
        return blackman_harris(length)
    if name == "boxcar":  # the reference's default when no window is given
        return torch.ones(length)
    if name == "hann":
        return torch.hann_window(length, periodic=True, dtype=torch.float64).float()
    raise ValueError(f"unsupported window {name!r}; use 'blackmanharris', 'hann' or 'boxcar'")


class _InfNormGrad(torch.autograd.Function):
    """Identity whose backward divides the gradient by its inf-norm + 1e-8 (the reference's hooks)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad / (grad.abs().max() + _EPS)


class LinearFBSP(nn.Module):
    """Learnable Fourier-basis filterbank (ESResNeXt-fbsp): real frames (..., n_in) -> (..., K, 2) (re, im).

    Parameters `m`, `fb`, `fc` have shape (K,). The FBSP front end disables the reference's bias
    (`LinearFBSP(..., bias=False)` in `fbsp.py` `_ESResNetFBSP._inject_members`), but the reference
    still registers it, as `Parameter(None)`: an empty (0,) tensor that every AudioCLIP checkpoint holds
    (`audio.fbsp.bias` in AudioCLIP-Full-Training.pt, `fbsp.bias` in ESRNXFBSP.pt). It is registered here
    the same way, so the state dict equals the reference's; like the reference's forward (which adds the
    bias only when it has 2K entries), nothing uses it."""

    def __init__(self, out_features: int, normalized: bool = False):
        super().__init__()
        self.out_features = out_features
        self.normalized = normalized
        self.m = nn.Parameter(torch.zeros(out_features))
        self.fb = nn.Parameter(torch.ones(out_features))
        self.fc = nn.Parameter(torch.arange(out_features, dtype=torch.float32))
        self.bias = nn.Parameter(torch.empty(0))  # the reference's disabled bias: Parameter(None), shape (0,)

    def weights(
        self, in_features: int, dtype: torch.dtype | None = None, device=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(real, imaginary) filterbank matrices, each (K, in_features)."""
        m, fb, fc = (_InfNormGrad.apply(p) for p in (self.m, self.fb, self.fc))
        dtype = dtype or m.dtype
        t = math.pi * torch.linspace(-1.0, 1.0, in_features, dtype=dtype, device=device or m.device)[None, :] + _EPS
        m, fb, fc = m[:, None], fb[:, None], fc[:, None]
        arg = fb * t / (m + _EPS)
        zero = arg == 0
        win = torch.where(zero, torch.ones_like(arg), torch.sin(arg) / torch.where(zero, torch.ones_like(arg), arg))
        # complex power of the real window: |w|^m * exp(i m arg(w)), arg(w) in {0, pi}
        mag = (win**2) ** 0.5
        amp = (mag**2) ** (0.5 * m)
        phase = m * torch.where(win < 0, torch.full_like(win, math.pi), torch.zeros_like(win))
        win_re, win_im = amp * torch.cos(phase), amp * torch.sin(phase)
        ker_re, ker_im = torch.cos(fc * t), -torch.sin(fc * t)
        scale = fb.sqrt()
        w_re = scale * (win_re * ker_re - win_im * ker_im)
        w_im = scale * (win_re * ker_im + win_im * ker_re)
        if self.normalized:
            w_re, w_im = w_re / in_features**0.5, w_im / in_features**0.5
        return w_re, w_im

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_re, w_im = self.weights(x.shape[-1], x.dtype, x.device)
        return torch.stack((F.linear(x, w_re), F.linear(x, w_im)), dim=-1)

    def extra_repr(self) -> str:
        return f"out_features={self.out_features}, bias=False, normalized={self.normalized}"


class Attention2d(nn.Module):
    """Attention gate: adaptive max-pool to the gated map's size, depthwise conv, pointwise conv,
    BatchNorm, sigmoid (reference `model/esresnet/attention.py`)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_kernels: int,
        kernel_size: tuple[int, int],
        padding_size: tuple[int, int],
    ):
        super().__init__()
        self.conv_depth = nn.Conv2d(
            in_channels, in_channels * num_kernels, kernel_size=kernel_size, padding=padding_size, groups=in_channels
        )
        self.conv_point = nn.Conv2d(in_channels * num_kernels, out_channels, kernel_size=(1, 1))
        self.bn = nn.BatchNorm2d(out_channels)
        self.activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        x = F.adaptive_max_pool2d(x, size)
        return self.activation(self.bn(self.conv_point(self.conv_depth(x))))


class Bottleneck(nn.Module):
    """torchvision-style (v1.5, stride on the 3x3) grouped bottleneck; names as torchvision's."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
    ):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        if width < 1:
            raise ValueError(
                f"bottleneck width {width} < 1 (planes={planes}, base_width={base_width}, groups={groups})"
            )
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


# (kernel, padding) of the attention gates att1..att5, as in the reference's ResNetWithAttention
_ATTENTION_KERNELS = (((3, 1), (1, 0)), ((1, 5), (0, 2)), ((3, 1), (1, 0)), ((1, 5), (0, 2)), ((3, 5), (1, 2)))


class ESResNeXtFBSP(nn.Module):
    """ESResNeXt-fbsp audio encoder: waveform (B, L) or (B, C, L) in int16 scale -> (B, num_classes).

    Defaults are AudioCLIP's audio head (`model/audioclip.py`): n_fft 2048, hop 561, win 1654,
    Blackman-Harris, normalized FBSP, no spectrogram resize, attention on, ResNeXt-50 32x4d
    (layers 3-4-6-3, groups 32, width 4 per group), fc 2048 -> 1024. `stem_width` (conv1 output,
    64) and `base_planes` (stage planes base_planes * (1, 2, 4, 8), 64) scale the network down.
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        groups: int = 32,
        width_per_group: int = 4,
        stem_width: int = 64,
        base_planes: int = 64,
        num_classes: int = 1024,
        n_fft: int = 2048,
        hop_length: int | None = 561,
        win_length: int | None = 1654,
        window: str = "blackmanharris",
        normalized: bool = True,
        onesided: bool = True,
        spec_height: int = -1,
        spec_width: int = -1,
        apply_attention: bool = True,
        num_bands: int = 3,
    ):
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"layers must have 4 entries, got {layers}")
        self.n_fft = n_fft
        self.win_length = win_length or n_fft
        self.hop_length = hop_length or n_fft // 4
        if self.win_length > n_fft:
            raise ValueError(f"win_length {self.win_length} > n_fft {n_fft}")
        self.normalized, self.onesided = normalized, onesided
        self.spec_height, self.spec_width = spec_height, spec_width
        self.apply_attention = apply_attention
        self.num_classes = num_classes
        self.log10_eps = 1e-18
        self.groups, self.base_width = groups, width_per_group

        # module registration order follows the reference, so state_dict() lists keys in its order
        self.register_buffer("window", make_window(window, self.win_length))
        self.conv1 = nn.Conv2d(num_bands, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._inplanes = stem_width
        for i, (blocks, stride) in enumerate(zip(layers, (1, 2, 2, 2))):
            in_ch = self._inplanes
            planes = base_planes * 2**i
            self.add_module(f"layer{i + 1}", self._make_layer(planes, blocks, stride))
            if apply_attention:
                (k, p) = _ATTENTION_KERNELS[i]
                self.add_module(f"att{i + 1}", Attention2d(in_ch, self._inplanes, 1, k, p))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        feat = self._inplanes
        if apply_attention:
            k, p = _ATTENTION_KERNELS[4]
            self.att5 = Attention2d(feat, feat, 1, k, p)
        self.fc = nn.Linear(feat, num_classes)
        self.feature_dim = feat
        n_bins = int(round(n_fft / 2)) + 1 if onesided else n_fft
        self.fbsp = LinearFBSP(n_bins, normalized=normalized)
        self._init_weights()

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        mods = [Bottleneck(self._inplanes, planes, stride, downsample, self.groups, self.base_width)]
        self._inplanes = planes * Bottleneck.expansion
        mods += [Bottleneck(self._inplanes, planes, 1, None, self.groups, self.base_width) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def _init_weights(self) -> None:
        # the reference's ResNetWithAttention init (run before fc and fbsp are (re)created):
        # convs kaiming-normal fan_out, norms weight 1 / bias 0; fc and conv biases keep torch's defaults
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(mod, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(mod.weight, 1)
                nn.init.constant_(mod.bias, 0)

    def attention_blocks(self) -> list[Attention2d]:
        return [getattr(self, f"att{i}") for i in range(1, 6)] if self.apply_attention else []

    # ---- front end -------------------------------------------------------------------------------
    def frames(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L) -> windowed frames (N, T, n_fft), as the reference's `frame_signal` + n_fft padding."""
        length, win, hop = x.shape[-1], self.win_length, self.hop_length
        n_frames = 1 if length <= win else 1 + int(math.ceil((length - win) / hop))
        pad = (n_frames - 1) * hop + win - length
        if pad > 0:
            x = F.pad(x, (pad // 2, pad - pad // 2))
        frames = x.unfold(-1, win, hop) * self.window.to(x.dtype)
        if self.n_fft > win:
            extra = self.n_fft - win
            frames = F.pad(frames, (extra // 2, extra - extra // 2))
        return frames

    def spectrogram(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L) rescaled waveforms -> FBSP spectrogram (N, K, T, 2)."""
        with torch.no_grad():
            frames = self.frames(x)
        return self.fbsp(frames).transpose(-2, -3)

    def log_power_bands(self, x: torch.Tensor) -> torch.Tensor:
        """Waveforms in int16 scale (B, L) / (B, C, L) -> dB band images (B, C, num_bands, K // num_bands, T)."""
        x = x.to(self.fbsp.m.dtype)
        if x.dim() == 2:
            x = x[:, None]
        if x.dim() != 3:
            raise ValueError(f"expected a waveform batch (B, L) or (B, C, L), got shape {tuple(x.shape)}")
        b, c, length = x.shape
        x = (x - -32768.0) * 2.0 / 65535.0 + -1.0  # the reference's scale(x, -32768, 32767, -1, 1)
        spec = self.spectrogram(x.reshape(b * c, length))  # (B*C, K, T, 2)
        bands = self.conv1.in_channels
        per_band = spec.shape[-3] // bands
        spec = spec[:, : bands * per_band].reshape(b, c * bands, per_band, *spec.shape[-2:])
        power = spec[..., 0] ** 2 + spec[..., 1] ** 2  # (B, C*bands, per_band, T)
        height = per_band if self.spec_height < 1 else self.spec_height
        width = power.shape[-1] if self.spec_width < 1 else self.spec_width
        if (height, width) != tuple(power.shape[-2:]):
            power = F.interpolate(power, size=(height, width), mode="bilinear", align_corners=True)
        power = torch.where(power > 0.0, power, torch.full_like(power, self.log10_eps))
        power = power.reshape(b, c, bands, *power.shape[-2:])
        return torch.log10(power).mul(10.0)

    # ---- CNN -------------------------------------------------------------------------------------
    def _cnn_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            layer = getattr(self, f"layer{i}")
            if self.apply_attention:
                gate_in = x
                x = layer(x)
                x = x * getattr(self, f"att{i}")(gate_in, x.shape[-2:])
            else:
                x = layer(x)
        pooled = self.avgpool(x)
        if self.apply_attention:
            pooled = pooled * self.att5(x, pooled.shape[-2:])
        return torch.flatten(pooled, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features before `fc` (B, feature_dim), summed over audio channels."""
        x_db = self.log_power_bands(x)
        # channels run separately (BatchNorm statistics per channel pass, as the reference)
        return torch.stack([self._cnn_features(x_db[:, ch]) for ch in range(x_db.shape[1])], dim=-1).sum(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    def fbsp_norm_loss(self) -> torch.Tensor:
        """The reference's `loss_ttf`: MSE of the filterbank rows' L2 norms to 1 (normalized) or sqrt(n_fft)."""
        w_re, w_im = self.fbsp.weights(self.n_fft)
        norms = torch.sqrt((w_re**2 + w_im**2).sum(-1))
        return F.mse_loss(norms, torch.full_like(norms, 1.0 if self.normalized else self.n_fft**0.5))


@dataclass(frozen=True)
class ESResNeXtConfig:
    """Constructor arguments of `ESResNeXtFBSP`."""

    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    groups: int = 32
    width_per_group: int = 4
    stem_width: int = 64
    base_planes: int = 64
    num_classes: int = 1024
    n_fft: int = 2048
    hop_length: int = 561
    win_length: int = 1654
    window: str = "blackmanharris"
    normalized: bool = True
    apply_attention: bool = True

    def build(self, **overrides) -> ESResNeXtFBSP:
        kwargs = {**self.__dict__, **overrides}
        return ESResNeXtFBSP(**kwargs)


#: `full`: AudioCLIP's audio head (5 s at 44.1 kHz -> 392 frames, 3 bands of 341 bins).
#: `tiny`: the same code scaled down for tests and smoke runs on 1 s at 16 kHz (124 frames,
#: 3 bands of 43 bins); stages of 64/128/256/512 output channels, 4 groups of width 16.
ESRESNEXT_PRESETS: dict[str, ESResNeXtConfig] = {
    "full": ESResNeXtConfig(),
    "tiny": ESResNeXtConfig(
        layers=(1, 1, 1, 1),
        groups=4,
        width_per_group=16,
        stem_width=16,
        base_planes=16,
        num_classes=64,
        n_fft=256,
        hop_length=128,
        win_length=256,
    ),
}


def esresnext(preset: str = "full", **overrides) -> ESResNeXtFBSP:
    if preset not in ESRESNEXT_PRESETS:
        raise KeyError(f"unknown ESResNeXt preset {preset!r}; known: {sorted(ESRESNEXT_PRESETS)}")
    return ESRESNEXT_PRESETS[preset].build(**overrides)
