"""SLCA (Zhang et al., ICCV 2023): Slow Learner with Classifier Alignment, on the AV-CIL network.

The AV-CIL model's projection and attention layers play the role of SLCA's pretrained backbone and its linear
classifier that of SLCA's head (README: how the feature-level model maps onto SLCA and where it deviates).

Step t:
1. Slow learner: CE over the current step's logits only (labels shifted to the step; GengDavid/SLCA
   models/slca.py:126-127), the old classes' classifier rows frozen (linears.py `update(freeze_old=True)`), the
   projections at lr * `slow_lr_scale` (slca.py:157-158), the classifier at lr. At step 0 the projections learn at
   the full lr (`first_step_full_lr`): here they start from random weights, so step 0 stands for the pretraining
   that SLCA's slow rate protects.
2. Class statistics: mean and covariance (+ `ca_cov_eps` I) of the model's features of each new class's training
   clips (models/base.py:247-270); the old classes keep theirs from their own step.
3. Classifier alignment (t >= 1): `ca_epochs` epochs, each drawing `ca_samples_per_class` features per seen class
   from N(mu_c * (1 - d + d (t_c + 1)/(t + 1)), Sigma_c) (d = `ca_mean_decay`, t_c the step of class c), one
   pass of minibatches of `ca_samples_per_class`, CE of the logits divided by their mean per-step L2 norm and by
   tau = `ca_logit_norm`; SGD on the classifier only, cosine schedule (slca.py:174-250).
4. The aligned classifier predicts; the next step trains on from the classifier as it was before the alignment
   (`fc.backup()` before it and `fc.recall()` after the step's evaluation, slca.py:79 and 107).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.core.template import step_seed
from benchmarks.suites.single_label import StoreTemplate


def class_gaussians(
    features: torch.Tensor, targets: torch.Tensor, classes: range, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class: the mean (C, D) and the covariance + eps I (C, D, D), in float64 (models/base.py:260-262)."""
    x = features.double()
    eye = torch.eye(x.shape[1], dtype=torch.float64, device=x.device)
    means, covs = [], []
    for c in classes:
        xc = x[targets == c]
        means.append(xc.mean(0))
        # one clip has no covariance: eps I alone (the reference never meets it)
        cov = torch.cov(xc.T).reshape(len(eye), len(eye)) if len(xc) > 1 else torch.zeros_like(eye)
        covs.append(cov + eps * eye)
    return torch.stack(means), torch.stack(covs)


def mean_factors(step_of_class: torch.Tensor, t: int, decay: float) -> torch.Tensor:
    """1 - d + d (t_c + 1)/(t + 1): the factor on each class mean when sampling (slca.py:201-202, d = 0.1: 0.9 +
    0.1 (t_c + 1)/(t + 1)); older classes' means are shrunk more, the current step's are kept (factor 1)."""
    return 1 - decay + decay * (step_of_class.double() + 1) / (t + 1)


def gaussian_samples(
    means: torch.Tensor, covs: torch.Tensor, n: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """n draws from each N(means[c], covs[c]): (C * n, D) float32 samples, class-major, and their labels.

    x = mu + L z with L the Cholesky factor of Sigma and z ~ N(0, I) from `generator` (the distribution of the
    reference's `MultivariateNormal(mu, Sigma).sample`, slca.py:205-207, made reproducible by a seeded generator)."""
    chol = torch.linalg.cholesky(covs.double().cpu())
    z = torch.randn(len(means), n, means.shape[1], generator=generator, dtype=torch.float64)
    x = means.double().cpu()[:, None, :] + torch.einsum("cde,cne->cnd", chol, z)
    labels = torch.arange(len(means)).repeat_interleave(n)
    return x.reshape(-1, means.shape[1]).float(), labels


def step_normalised_logits(logits: torch.Tensor, bounds: list[tuple[int, int]], tau: float) -> torch.Tensor:
    """z / (mean over steps j of ||z_j||_2 + 1e-7) / tau, z_j the logits of step j's classes (slca.py:228-241)."""
    norms = torch.stack([logits[:, lo:hi].norm(dim=1) + 1e-7 for lo, hi in bounds], dim=1).mean(1, keepdim=True)
    return logits / norms / tau


class SLCA(StoreTemplate):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.stat_means: torch.Tensor | None = None  # (seen classes, D) float64
        self.stat_covs: torch.Tensor | None = None  # (seen classes, D, D) float64
        self.head_before_alignment: dict | None = None  # the classifier before step t's alignment (fc.backup())

    # ------------------------------------------------------------------ slow learner
    def model_adaptation_step(self):
        if self.head_before_alignment is not None:  # train on from the unaligned classifier (fc.recall())
            self.model.classifier.load_state_dict(self.head_before_alignment)
        super().model_adaptation_step()
        lo = self.step_bounds[0]
        head = self.model.classifier
        self.frozen_rows = (head.weight[:lo].detach().clone(), head.bias[:lo].detach().clone())

    def make_optimizer(self, **kwargs):
        head = list(self.model.classifier.parameters())
        body = [p for n, p in self.model.named_parameters() if not n.startswith("classifier.")]
        slow = 1.0 if self.step_index == 0 and self.cfg["first_step_full_lr"] else self.cfg["slow_lr_scale"]
        self.optimizer = torch.optim.Adam(
            [{"params": body, "lr": self.cfg["lr"] * slow}, {"params": head, "lr": self.cfg["lr"]}],
            weight_decay=self.cfg["weight_decay"],
        )

    def loss_fn(self, out, y):
        lo, hi = self.step_bounds
        return F.cross_entropy(out["logits"][:, lo:hi].float(), y - lo)

    def optimizer_step(self):
        super().optimizer_step()
        lo = self.step_bounds[0]
        if lo:  # old classes' rows stay as they were (weight decay would move them otherwise)
            with torch.no_grad():
                self.model.classifier.weight[:lo] = self.frozen_rows[0]
                self.model.classifier.bias[:lo] = self.frozen_rows[1]

    # ------------------------------------------------------------------ statistics and alignment
    def after_step(self):
        super().after_step()
        lo, hi = self.step_bounds
        rows, targets = self.stream.step("train", self.step_index)
        feats = self.features_of(rows, normalize=False)
        means, covs = class_gaussians(feats, targets.to(feats.device), range(lo, hi), self.cfg["ca_cov_eps"])
        if self.stat_means is None:
            self.stat_means, self.stat_covs = means, covs
        else:
            self.stat_means = torch.cat([self.stat_means, means])
            self.stat_covs = torch.cat([self.stat_covs, covs])
        self.head_before_alignment = {k: v.detach().clone() for k, v in self.model.classifier.state_dict().items()}
        if self.step_index > 0 and self.cfg["ca_epochs"] > 0:
            self.align_classifier()

    def align_classifier(self):
        head, t, n = self.model.classifier, self.step_index, self.cfg["ca_samples_per_class"]
        generator = torch.Generator().manual_seed(step_seed(self.seed, t, salt=4))
        step_of = torch.tensor(self.stream.protocol.step_of_position()[: self.seen_classes])
        means = self.stat_means * mean_factors(step_of, t, self.cfg["ca_mean_decay"]).to(self.stat_means)[:, None]
        bounds = [self.stream.protocol.step_bounds(j) for j in range(t + 1)]
        optimizer = torch.optim.SGD(
            head.parameters(), lr=self.cfg["ca_lr"], momentum=0.9, weight_decay=self.cfg["ca_weight_decay"]
        )
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.cfg["ca_epochs"])
        for _ in range(self.cfg["ca_epochs"]):
            x, y = gaussian_samples(means, self.stat_covs, n, generator)
            order = torch.randperm(len(x), generator=generator)
            x, y = x[order].to(self.device), y[order].to(self.device)
            for b in range(0, len(x), n):
                logits, tau = head(x[b : b + n]), self.cfg["ca_logit_norm"]
                if tau > 0:  # the reference's `ca_with_logit_norm > 0` switch (slca.py:66-69)
                    logits = step_normalised_logits(logits, bounds, tau)
                loss = F.cross_entropy(logits, y[b : b + n])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            schedule.step()

    # ------------------------------------------------------------------ checkpoints
    def extra_state(self) -> dict:
        return {
            "stat_means": self.stat_means.cpu(),
            "stat_covs": self.stat_covs.cpu(),
            "head_before_alignment": {k: v.cpu() for k, v in self.head_before_alignment.items()},
        }

    def load_extra_state(self, extra: dict) -> None:
        self.stat_means = extra["stat_means"].to(self.device)
        self.stat_covs = extra["stat_covs"].to(self.device)
        self.head_before_alignment = {k: v.to(self.device) for k, v in extra["head_before_alignment"].items()}
