"""Independent learning with output and feature distillation (Mulimani & Mesaros, ICASSP 2024;
reference `main_audioset._train` of mulimani/CIL-ML-Audio). See README.md for every term.

    phase 0:  L = w_cls BCE(z[:, :30], y; pos_weight)
    phase t:  L = w_cls BCE(z[:, new], y_new; pos_weight)                      independent learning
                + w_fd (1 - cos(f_teacher, f_student))                          feature distillation
                + lambda_t w_kd T^2 KL(softmax(z_teacher/T) || softmax(z[:, old]/T))   output distillation
              lambda_t = 5 (seen / new) ** 0.66

One student forward per step gives both the logits and the block-6 features (the reference runs
the student twice); the teacher (the frozen previous-phase model, eval mode) also runs once.
"""

from benchmarks.suites.multilabel import MultiLabelTemplate, masked_bce
from methods._cnn14.losses import adaptive_lambda, feature_cosine, kd_kl


class MLIndL(MultiLabelTemplate):
    def loss_terms(self, out, y) -> dict:
        logits = out["logits"].float()
        lo, hi = self.step_bounds
        terms = {"new": masked_bce(logits[:, lo:hi], y[:, lo:hi], self.pos_weight)}
        if self.step_index > 0:
            teacher = self.teacher()
            c = self.cfg
            terms["od"] = kd_kl(
                logits[:, :lo], teacher["logits"][:, :lo].float(), c["kd_temperature"], c["kd_reduction"]
            )
            terms["fd"] = feature_cosine(out["z"], teacher["z"], c["fd_mode"])
        return terms

    def kd_weight(self) -> float:
        lo, hi = self.step_bounds
        c = self.cfg
        return adaptive_lambda(hi, hi - lo, c["kd_lambda_base"], c["kd_lambda_power"]) * c["w_kd"]

    def loss_fn(self, out, y, mask):
        terms = self.loss_terms(out, y)
        loss = self.cfg["w_cls"] * terms["new"]
        if "od" in terms:
            loss = loss + self.cfg["w_fd"] * terms["fd"] + self.kd_weight() * terms["od"]
        return loss
