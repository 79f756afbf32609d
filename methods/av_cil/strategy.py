"""AV-CIL (Pian et al., ICCV 2023), the reference's "ours" (ours/train_incremental_ours.py).

Audio-visual only. Step 0: plain CE. Step t >= 1, on a current batch joined by a cycled batch
of random exemplars (the SS-IL machinery, methods/ssil):

    L = CE_ss + KD + lambda_I L_I + lambda_C L_C + lambda L_spatial + (1 - lambda) L_temporal

CE_ss and KD as SS-IL; L_I / L_C: instance- / class-aware audio-to-visual InfoNCE over the
whole mixed batch on the L2-normalised post-ReLU features f_a, f_v (D-AVSC); L_spatial /
L_temporal: KL(old || new) summed over the attention distributions of the EXEMPLAR rows and
divided by their number (VAD), teacher = the previous step's selected model.
"""

import torch

from methods._avcil.losses import attention_kl_sum, class_infonce, instance_infonce
from methods.ssil.strategy import SSIL


class AVCIL(SSIL):
    def __init__(self, **kwargs):
        if kwargs.get("modality") != "audio-visual":
            raise ValueError(
                "av_cil is audio-visual only (the reference accepts --modality audio-visual only); got "
                f"{kwargs.get('modality')!r}"
            )
        super().__init__(**kwargs)

    def loss_terms(self, out, y) -> dict[str, torch.Tensor]:
        """Every term of the step >= 1 loss, unweighted (for the loss and for inspection)."""
        old_out = self.teacher_output()
        ce, kd = self.ssil_terms(out, y, old_out)
        f_a, f_v = out["audio_features"], out["visual_features"]
        spatial, temporal = self.vad_terms(out, old_out, self.mb_is_exemplar)
        return {
            "ce_ss": ce,
            "kd": kd,
            "instance": instance_infonce(f_a, f_v, self.cfg["instance_temperature"]),
            "class": class_infonce(f_a, f_v, y, self.cfg["class_temperature"], self.cfg["class_contrastive_norm"]),
            "spatial": spatial,
            "temporal": temporal,
        }

    @staticmethod
    def vad_terms(out, old_out, is_exemplar) -> tuple[torch.Tensor, torch.Tensor]:
        """Visual attention distillation on the exemplar rows only: (spatial, temporal)
        = sum of KL(alpha_old || alpha_new) over the (t, d) distributions over positions, and of
        KL(beta_old || beta_new) over the d distributions over time slots, each / B_e."""
        spatial = attention_kl_sum(out["spatial_attention"], old_out["spatial_attention"], is_exemplar)
        temporal = attention_kl_sum(out["temporal_attention"], old_out["temporal_attention"], is_exemplar)
        return spatial, temporal

    def loss_fn(self, out, y):
        if self.step_index == 0:
            return super().loss_fn(out, y)  # plain CE; no D-AVSC or VAD at step 0 (reference)
        c = self.cfg
        t = self.loss_terms(out, y)
        lam = c["attention_lambda"]
        return (
            t["ce_ss"]
            + c["kd_weight"] * t["kd"]
            + c["lambda_instance"] * t["instance"]
            + c["lambda_class"] * t["class"]
            + lam * t["spatial"]
            + (1.0 - lam) * t["temporal"]
        )
