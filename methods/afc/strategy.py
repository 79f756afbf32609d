"""AFC (Kang et al., CVPR 2022) as adapted by the AV-CIL reference (AFC/train_incremental_afc.py).

Per step t:
1. model adaptation (t >= 1): the LSC head freezes every existing proxy and gets fresh proxies
   for the new classes and a fresh scale 1; the teacher is a frozen copy of this expanded model,
   taken BEFORE imprinting (the reference's `old_model = deepcopy(model)`, lines 257 and 272), so
   its new-class proxies are the random init and its scale is 1;
2. imprinting (t >= 1): KMeans(K) on each new class's L2-normalised features (the previous
   step's selected model); the centres (raw, norm < 1, as the reference; or L2-normalised with
   `imprint_centres: normalised`), scaled by the mean norm of the old proxies, become that class's
   proxies (lines 66-128);
3. training on new-class data + herded exemplars: NCA on the LSC similarities, plus for t >= 1
   lambda_disc * sqrt(t+1) * importance-weighted feature distillation (lines 334-360);
4. prediction: `nme` (herding and class means recomputed before every val/test prediction, as
   the reference does every epoch) or `lsc` (arg max of the LSC similarities; exemplars herded
   once after the step).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans

from benchmarks.core.template import step_seed
from benchmarks.suites.single_label import StoreTemplate
from datasets.errors import ConfigError
from methods.afc.losses import feature_distillation, importance_weights, nca_loss

_FEATURE_KEYS = {
    "audio": ["audio_features"],
    "visual": ["visual_features"],
    "audio-visual": ["audio_features", "visual_features", "pooled_visual"],
}


class AFC(StoreTemplate):
    exemplar_selection = "herding"

    # ------------------------------------------------------------------ step set-up
    def model_adaptation(self, model=None):
        if self.step_index > 0:
            self.model.expand_classifier(self.seen_classes)
            self.model.to(self.device)
            self.old_model = copy.deepcopy(self.model).eval()  # after expansion, before imprinting (reference)
            for p in self.old_model.parameters():
                p.requires_grad_(False)
            self.imprint_new_classes()
        else:
            self.model_adaptation_step()
        return self.model.to(self.device)

    @torch.no_grad()
    def imprint_new_classes(self) -> None:
        head = self.model.classifier
        if int(self.cfg.get("kmeans_clusters", head.K)) != head.K:
            raise ValueError(
                f"kmeans_clusters ({self.cfg['kmeans_clusters']}) must equal proxies_per_class ({head.K}): each "
                "centre becomes one proxy"
            )
        # reference: raw centres (means of unit vectors, norm < 1) times the old mean norm (lines 118-123);
        # normalised: unit centres times the old mean norm. Same directions; the norm sets the Adam step's angle.
        mode = self.cfg.get("imprint_centres", "reference")
        if mode not in ("reference", "normalised"):
            raise ConfigError(
                f"imprint_centres must be 'reference' or 'normalised', got {mode!r}: fix methods/afc/config.yaml "
                "or the --set override"
            )
        lo, hi = self.step_bounds
        rows, targets = self.stream.step("train", self.step_index)  # new-class rows only
        feats = self.features_of(rows).float().cpu().numpy()  # L2-normalised f of the current model
        targets = targets.numpy()
        old_norm = head.old_proxies.norm(dim=1).mean()
        new = torch.empty_like(head.proxies)
        for c in range(lo, hi):
            x = feats[targets == c]
            k = min(head.K, len(x))
            km = KMeans(
                n_clusters=k,
                n_init=int(self.cfg["kmeans_n_init"]),
                random_state=step_seed(self.seed, self.step_index, salt=100 + c),
            )
            centres = torch.from_numpy(km.fit(x).cluster_centers_).float()
            if k < head.K:  # fewer samples than proxies: repeat the centres (not reached on the reference data)
                centres = centres[torch.arange(head.K) % k]
            if mode == "normalised":  # every new proxy gets exactly the old mean norm (PODNet's imprinting)
                centres = F.normalize(centres, dim=1)
            new[(c - lo) * head.K : (c - lo + 1) * head.K] = centres.to(new.device) * old_norm
        head.proxies.copy_(new)

    def make_optimizer(self, **kwargs):
        """Adam; at t >= 1 the old proxies form a group with lr 0 and weight decay 0 (reference lines
        287-295; they also have requires_grad False, so they get no gradient at all)."""
        frozen = self.model.classifier.old_proxies
        rest = [p for p in self.model.parameters() if p is not frozen]
        groups = [{"params": rest, "lr": self.cfg["lr"], "weight_decay": self.cfg["weight_decay"]}]
        if frozen.numel():
            groups.append({"params": [frozen], "lr": 0.0, "weight_decay": 0.0})
        self.optimizer = torch.optim.Adam(groups, lr=self.cfg["lr"], weight_decay=self.cfg["weight_decay"])

    # ------------------------------------------------------------------ loss
    def nca(self, similarities, y, scale):
        return nca_loss(similarities, y, scale, margin=self.cfg["nca_margin"], mode=self.cfg["nca_margin_mode"])

    def loss_fn(self, out, y):
        loss = self.nca(out["logits"], y, self.model.classifier.factor)
        if self.step_index > 0:
            disc, _ = self.distillation(out, self.mb_x, y)
            loss = loss + self.cfg["lambda_disc"] * math.sqrt(self.step_index + 1) * disc
        return loss

    def distillation(self, out, views, y):
        """(L_disc, importance weights or None) of the student output `out` against the teacher."""
        keys = _FEATURE_KEYS[self.modality]
        with torch.no_grad():
            old = self.old_model(views)
        if self.modality != "audio-visual":
            return feature_distillation([out[k] for k in keys], [old[k] for k in keys]), None
        # Importance: gradients of the teacher's NCA loss w.r.t. its f_a, f_v and v~. Only the head
        # after pooling is re-run with grad (f_a and v~ as leaves), so the teacher's attention graph
        # is never built; f = f_a + f_v makes the f_a and f_v gradients equal (as in the reference).
        with torch.enable_grad():
            f_a = old["audio_features"].detach().float().requires_grad_(True)
            pooled = old["pooled_visual"].detach().float().requires_grad_(True)
            head = self.old_model.head_from_pooled(f_a, pooled)
            old_loss = self.nca(head["logits"], y, self.old_model.classifier.factor)
            grads = torch.autograd.grad(old_loss, [f_a, head["visual_features"], pooled])
        weights = importance_weights(list(grads)).detach()
        return feature_distillation([out[k] for k in keys], [old[k] for k in keys], weights), weights
