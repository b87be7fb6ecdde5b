"""Zhao et al. (2022), "Decoupled Knowledge Distillation": KD split into its target and non-target parts."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdcore.distill import register_method
from kdcore.distill.base import Distiller, MethodOptions, Step


def decoupled_kd(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor,
                 temperature: float) -> tuple[Tensor, Tensor]:
    """TCKD and NCKD of Zhao et al. (2022), each T^2 * KL, batch mean, unweighted.

    TCKD: KL between the binary distributions [p_target, 1 - p_target] of teacher and student.
    NCKD: KL between their distributions over the non-target classes, renormalized.
    Both are computed in log space from the logits (no 1000-logit mask as mdistiller), so
    neither loses precision when p_target is close to 0 or 1.

    Args:
        student_logits: (B, K) logits.
        teacher_logits: (B, K) logits.
        labels: (B,) target classes.
        temperature: the softmax temperature T.
    """
    s, t = student_logits / temperature, teacher_logits / temperature
    target = F.one_hot(labels, s.shape[1]).bool()  # (B, K)
    others = ~target

    def binary_and_others(z: Tensor) -> tuple[Tensor, Tensor]:
        """log [p_target, 1 - p_target] (B, 2) and the log-softmax over the non-target classes (B, K-1)."""
        z_others = z[others].view(len(z), -1)
        log_all = torch.logsumexp(z, dim=1, keepdim=True)
        log_rest = torch.logsumexp(z_others, dim=1, keepdim=True)
        binary = torch.cat([z[target].view(-1, 1) - log_all, log_rest - log_all], dim=1)
        return binary, z_others - log_rest

    s_binary, s_others = binary_and_others(s)
    t_binary, t_others = binary_and_others(t)
    tckd = F.kl_div(s_binary, t_binary, reduction="batchmean", log_target=True)
    nckd = F.kl_div(s_others, t_others, reduction="batchmean", log_target=True)
    return tckd * temperature**2, nckd * temperature**2


class DKDOptions(MethodOptions):
    tckd_weight: float = Field(1.0, ge=0.0, le=1e3, description="weight of the target-class term TCKD (the paper's alpha)")
    nckd_weight: float = Field(8.0, ge=0.0, le=1e3,
                               description="weight of the non-target-class term NCKD (the paper's beta)")
    warmup: float = Field(20 / 240, ge=0.0, lt=1.0,
                          description="share of the run's epochs over which the DKD terms ramp up linearly "
                                      "(the paper: 20 of 240)")


@register_method("dkd")
class DecoupledKD(Distiller):
    title = "Decoupled KD: target-class and non-target-class terms weighted apart (Zhao et al. 2022)"
    formula = (r"\mathcal{L}_{tckd} = w(e)\,\lambda_{tc}\,T^2\,\mathrm{KL}\big(\mathbf{b}_t\,\|\,\mathbf{b}_s\big),\quad "
               r"\mathcal{L}_{nckd} = w(e)\,\lambda_{nc}\,T^2\,"
               r"\mathrm{KL}\big(\hat{\mathbf{p}}_t\,\|\,\hat{\mathbf{p}}_s\big),\quad "
               r"\mathbf{b} = [p_{y}, 1 - p_{y}],\ \hat{p}_{k} = \tfrac{p_k}{1 - p_{y}}\ (k \neq y),\quad "
               r"w(e) = \min\big(\tfrac{e}{\mathrm{warmup}\cdot E}, 1\big)")
    # each option's symbol in the formula, so the form shows the formula with the configured values
    symbols = {"tckd_weight": r"\lambda_{tc}", "nckd_weight": r"\lambda_{nc}", "warmup": r"\mathrm{warmup}"}
    Options = DKDOptions

    def warmup_factor(self, epoch: int, epochs: int) -> float:
        """Linear ramp from epoch/(warmup*epochs) up to 1 (epoch is 1-based); 1 throughout when warmup is 0."""
        ramp = self.options.warmup * epochs
        return 1.0 if ramp <= 0 else min(epoch / ramp, 1.0)

    def terms(self, step: Step) -> dict[str, Tensor]:
        if step.y is None:
            raise ValueError("dkd needs the true labels to split the target class from the others; "
                             "this transfer set has none (use soft or dist)")
        tckd, nckd = decoupled_kd(step.student_logits, step.teacher_logits, step.y, self.temperature)
        factor = self.warmup_factor(step.epoch, step.epochs)
        return {"tckd": factor * self.options.tckd_weight * tckd, "nckd": factor * self.options.nckd_weight * nckd}
