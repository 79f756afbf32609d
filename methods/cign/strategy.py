"""CIGN as a class-incremental strategy (strictly class-incremental: step t trains on step t's
classes only, no exemplars; the template's default training rows).

Loss at step t (branches m: audio and/or visual, as the cell's modality says; C seen classes,
C_old = classes of steps < t; teacher = the previous step's selected model, frozen, eval mode):

    L = L_token + sum_m L_pred,m
        + [t > 0] ( w_feat * mean_m L_ctd-feat,m + w_logit * mean_m L_ctd-logit,m + w_cg * mean_m L_cg,m )

(see losses.py and README.md for every term).
"""

from __future__ import annotations

import contextlib
import logging

import torch

from benchmarks.suites.single_label import StoreTemplate
from methods.cign import losses as L

log = logging.getLogger(__name__)


class CIGN(StoreTemplate):
    exemplar_selection = None  # exemplar-free

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.views = list(self.model.views)  # features (audio/visual) or raw (spectrogram/image) views
        if self.model.input_mode == "raw":
            self.cfg["model_init"] = dict(self.model.init_info)  # recorded with the cell's config
            if "random" in self.model.init_info.get("visual_encoder", ""):
                log.warning(
                    "  cign: visual ResNet-18 randomly initialised (set visual_weights to a local ImageNet state dict "
                    "to use one)"
                )
        self.loss_terms: dict[str, float] = {}

    @contextlib.contextmanager
    def cpu_threads(self):
        """Optional `cpu_threads`: intra-op threads while this strategy trains/predicts on CPU (restored after).
        The SynthAV network is so small that thread synchronisation costs more than it saves."""
        n = self.cfg.get("cpu_threads")
        if not n or torch.device(self.device).type != "cpu":
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(int(n))
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def train(self, *args, **kwargs):
        with self.cpu_threads():
            return super().train(*args, **kwargs)

    def predict_split(self, split: str):
        with self.cpu_threads():
            return super().predict_split(split)

    def _unpack_minibatch(self):
        """Gather the batch's views, then (training only) augment them once: the student's forward and the
        teacher's forward in `loss_fn` both read these views (raw mode: the same flipped frames)."""
        super()._unpack_minibatch()
        if self.is_training:
            self.mbatch[0] = self.model.augment(self.mbatch[0])

    @property
    def branches(self) -> tuple[str, ...]:
        return self.model.branches

    def loss_fn(self, out, y):
        cfg = self.cfg
        lo, _ = self.step_bounds
        terms = {"token": L.token_ce(out["token_logits"])}
        bce_lo = lo if cfg.get("bce_columns", "seen") == "current" else 0
        for m in self.branches:
            terms[f"pred_{m}"] = L.group_bce(out[f"{m}_logits"], y, bce_lo)
        loss = sum(terms.values())
        if self.step_index > 0 and self.old_model is not None:
            with torch.no_grad(), self.autocast():
                old = self.old_model(self.mb_x)
            n = len(self.branches)
            feat = (
                sum(L.class_token_feature_distillation(out[f"{m}_groups"], old[f"{m}_groups"]) for m in self.branches)
                / n
            )
            logit = (
                sum(L.class_token_logit_distillation(out[f"{m}_logits"], old[f"{m}_logits"]) for m in self.branches) / n
            )
            blocks = self.old_model.assign_blocks
            cg = (
                sum(
                    L.continual_grouping(
                        out[f"{m}_assign_logits"], old[f"{m}_assign_logits"], blocks, cfg.get("cg_tau", 1.0)
                    )
                    for m in self.branches
                )
                / n
            )
            terms.update(ctd_feature=feat, ctd_logit=logit, cg=cg)
            loss = loss + cfg["ctd_feature_weight"] * feat + cfg["ctd_logit_weight"] * logit + cfg["cg_weight"] * cg
        self.loss_terms = {k: float(v.detach()) for k, v in terms.items()} if cfg.get("log_terms", False) else {}
        return loss

    @torch.no_grad()
    def predict_batch(self, views):
        with self.autocast():
            out = self.model(views)
        c = self.seen_classes
        a = out["audio_logits"][:, :c].float() if "audio" in self.branches else None
        v = out["visual_logits"][:, :c].float() if "visual" in self.branches else None
        return L.predict(a, v)

    def load_resume_state(self, state: dict) -> None:
        """Grow the token blocks step by step (one block per finished step), then load the state."""
        for t in range(int(state["step_index"]) + 1):
            self.model.expand_classifier(self.stream.protocol.seen_classes(t))
        super().load_resume_state(state)
