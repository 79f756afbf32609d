"""The MCIL-AudioCLIP network: CLIP image/text towers with MoE adapters (MIFE), a frozen audio
tower with a projection, and the adaptive fusion (AAVFM). See README.md for every choice.

Forward pieces (the strategy composes them):
- `image_features(images, route_tasks)`: v = norm(E_img(x)), MoE routed per sample;
- `audio_features(waves)`: a = norm(P(E_aud(audio_input_scale * w))), the audio tower frozen
  (no gradient; its BatchNorm in train mode only in `code` mode, as the release);
- `text_prototypes(classes, pool)`: per class, the text tower over the pool's templates with the
  class's own task router, averaged (`normalized`: each template embedding L2-normalised
  before the mean and the mean re-normalised; `unnormalized`: the release's raw mean for the
  training prototypes, `models.py:335-336`, and, as the release scores test images against
  L2-normalised text features, `models.py:209-210`, the normalised mean for the `eval` pool);
- `logits(f, protos)`: scale * f protos^T, scale = exp(logit_scale) (`exp`) or the raw
  ln(1/0.07) init value (float32) the release multiplies by (`raw`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from methods.mcil_audioclip.fusion import AdaptiveFusion
from methods.mcil_audioclip.moe import MoEAdapter, moe_modules, set_routing
from methods.mcil_audioclip.towers import build_towers
from methods.mcil_audioclip.weights import load_preset_weights

#: CLIP's logit_scale parameter at its init, ln(1/0.07) in float32 (2.6592600), which the release multiplies by
#: un-exponentiated (continual_clip/models.py:217, 346-347); the differential found the former rounded 2.6593
RAW_LOGIT_SCALE = torch.tensor(math.log(1 / 0.07), dtype=torch.float32).item()


class MCILAudioCLIP(nn.Module):
    def __init__(
        self,
        cfg: dict,
        class_names: list[str],
        task_of_class: list[int],
        num_tasks: int,
        pools: dict[str, list[str]],
        audio_samples: int = 16000,
    ):
        super().__init__()
        self.cfg = cfg
        n_routers = num_tasks if cfg["routers"] == "per-task" else 1
        n_experts = num_tasks if cfg["experts"] == "per-task" else int(cfg["experts"])
        n_experts = max(n_experts, int(cfg["top_k"]))

        def factory(d_model: int) -> MoEAdapter:
            return MoEAdapter(
                d_model,
                n_experts,
                int(cfg["top_k"]),
                n_routers,
                int(cfg["adapter_dim"]),
                float(cfg["adapter_scale"]),
                float(cfg["adapter_dropout"]),
                float(cfg["router_init_std"]),
            )

        self.towers = build_towers(cfg["towers"], factory)
        self.weights_report = load_preset_weights(self.towers, cfg)
        if self.weights_report.get("random_towers"):
            calibrate_random_batchnorm(
                self.towers, float(cfg["audio_input_scale"]), audio_samples, which=self.weights_report["random_towers"]
            )
        d = self.towers.embed_dim
        self.audio_proj = nn.Linear(self.towers.audio_dim, d)
        if cfg["audio_projection"] == "learnable" and self.towers.audio_dim == d:
            with torch.no_grad():  # AudioCLIP's audio head already lives in the joint space: start from it
                self.audio_proj.weight.copy_(torch.eye(d))
                self.audio_proj.bias.zero_()
        self.fusion = AdaptiveFusion(d, float(cfg["fusion_tau"]), cfg["fusion_gate"])
        self.class_names, self.task_of_class = list(class_names), torch.tensor(task_of_class, dtype=torch.long)
        self.n_experts, self.n_routers, self.num_tasks = n_experts, n_routers, num_tasks
        # Tokens of every (class, template) of each pool, built once with the bundled BPE tokenizer.
        self.pools = {k: list(v) for k, v in pools.items()}
        for name, templates in self.pools.items():
            texts = [t.format(c) for c in self.class_names for t in templates]
            self.register_buffer(
                f"tokens_{name}",
                self.towers.tokenizer(texts).view(len(self.class_names), len(templates), -1),
                persistent=False,
            )
        self.set_trainable()

    # -- bookkeeping the shared template expects ------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def feature_dim(self) -> int:
        return self.towers.embed_dim

    def expand_classifier(self, n: int) -> None:
        """No classifier to grow: classes are text prototypes."""

    def set_trainable(self, task: int | None = None) -> None:
        """Only the MoE adapters (experts, routers), the fusion module and a learnable audio
        projection train; every tower weight is frozen (reference 3.6). Routers of other tasks
        get their gradient zeroed by a hook, so router t changes only during task t."""
        for p in self.parameters():
            p.requires_grad_(False)
        for m in moe_modules(self):
            for p in m.parameters():
                p.requires_grad_(True)
        for p in self.fusion.parameters():
            p.requires_grad_(True)
        for p in self.audio_proj.parameters():
            p.requires_grad_(self.cfg["audio_projection"] == "learnable")
        self.current_task = task

    def router_grad_mask(self, task: int):
        keep = torch.zeros(self.n_routers, 1, 1)
        keep[task if self.n_routers > 1 else 0] = 1.0
        return keep

    def train(self, mode: bool = True):
        super().train(mode)
        # Frozen towers keep their BatchNorm statistics, except the release's audio tower, whose
        # BN runs in train mode under no_grad (`audio_bn: train`, code mode; reference 3.3).
        for module in self.towers.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        self.towers.audio.train(mode and self.cfg["audio_bn"] == "train")
        return self

    # -- forward pieces ----------------------------------------------------------------
    def image_features(
        self, images: torch.Tensor, route_tasks: torch.Tensor | None, adapters: bool = True
    ) -> torch.Tensor:
        size = self.towers.image_size
        if images.shape[-1] != size:  # e.g. scaled-down towers on a 224-px store: resize, antialiased
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        set_routing(self.towers, route_tasks, enabled=adapters)
        try:
            return F.normalize(self.towers.encode_image(images).float(), dim=1)
        finally:
            set_routing(self.towers, None, enabled=True)

    @torch.no_grad()
    def audio_embedding(self, waves: torch.Tensor) -> torch.Tensor:
        """The frozen audio tower's output (no gradient ever reaches the tower)."""
        return self.towers.encode_audio(waves * float(self.cfg["audio_input_scale"])).float()

    @property
    def audio_is_static(self) -> bool:
        """True when the audio tower's output depends on the clip alone (frozen, BN in eval), so a
        step's clip embeddings can be computed once and reused every epoch."""
        return self.cfg["audio_bn"] != "train"

    def audio_features(self, waves: torch.Tensor | None = None, embedding: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.audio_embedding(waves) if embedding is None else embedding
        return F.normalize(self.audio_proj(emb), dim=1)

    def text_embeddings(self, classes: torch.Tensor, pool: str, with_grad: bool = False) -> torch.Tensor:
        """(len(classes), templates, D) raw text-tower outputs, each class through its task's router."""
        tokens = getattr(self, f"tokens_{pool}")[classes.cpu()].to(self.tokens_device())
        c, m, length = tokens.shape
        route = self.task_of_class[classes.cpu()].repeat_interleave(m).to(tokens.device)
        if self.n_routers == 1:
            route = torch.zeros_like(route)
        set_routing(self.towers, route)
        try:
            with torch.set_grad_enabled(with_grad and torch.is_grad_enabled()):
                return self.towers.encode_text(tokens.view(c * m, length)).float().view(c, m, -1)
        finally:
            set_routing(self.towers, None)

    def text_prototypes(self, classes: torch.Tensor, pool: str, with_grad: bool) -> torch.Tensor:
        """(len(classes), D) class prototypes from the templates of `pool` (`train`, `eval`)."""
        emb = self.text_embeddings(classes, pool, with_grad)
        if self.cfg["text_prototypes"] == "normalized":
            return F.normalize(F.normalize(emb, dim=2).mean(1), dim=1)
        mean = emb.mean(1)  # the release trains on the raw template mean, not normalised (models.py:335-336)
        if pool == "eval":  # ... and scores test images against L2-normalised text features (models.py:209-210)
            return F.normalize(mean, dim=1)
        return mean

    def tokens_device(self) -> torch.device:
        return next(self.towers.parameters()).device

    def logit_scale(self) -> torch.Tensor | float:
        if self.cfg["logit_scale"] == "raw":
            return RAW_LOGIT_SCALE
        return self.towers.clip.logit_scale.detach().exp().clamp(1.0, 100.0)

    def logits(self, f: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
        return self.logit_scale() * f @ protos.t()


@torch.no_grad()
def calibrate_random_batchnorm(
    towers, audio_input_scale: float, audio_samples: int, batches: int = 4, seed: int = 0, which=("clip", "audio")
) -> None:
    """Random towers only (`which`: "clip" for the image tower, "audio"): set the frozen BatchNorm
    statistics from seeded noise (N(0, 1) images, white-noise audio at 0.1 RMS), so activations stay
    normalised through the frozen random stack.
    Without it a random RN/ESResNeXt keeps BN's init statistics (mean 0, var 1), its activations
    grow stage by stage, and the small adapter outputs vanish next to them (on SynthAV the tiny RN
    tower then did not learn at all). Data-free and deterministic; pretrained towers are untouched."""
    g = torch.Generator().manual_seed(seed)
    for name, tower, make in (
        ("clip", towers.clip.visual, lambda: torch.randn(32, 3, towers.image_size, towers.image_size, generator=g)),
        ("audio", towers.audio, lambda: 0.1 * torch.randn(16, audio_samples, generator=g) * audio_input_scale),
    ):
        if name not in which:
            continue
        norms = [m for m in tower.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            continue
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        was = tower.training
        tower.train()
        for _ in range(batches):
            tower(make())
        tower.train(was)
        for m in norms:
            m.momentum = 0.1
