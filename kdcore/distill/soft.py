"""Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network"."""
from __future__ import annotations

from torch import Tensor

from kdcore.distill import register_method
from kdcore.distill.base import Distiller, Step
from kdcore.losses import soft_target_loss


@register_method("soft")
class SoftTargets(Distiller):
    title = "Soft targets: KL divergence to the teacher's softened distribution (Hinton et al. 2015)"
    formula = r"\mathcal{L}_{kd} = T^2\,\mathrm{KL}\big(\sigma(z_t/T)\,\|\,\sigma(z_s/T)\big)"

    def terms(self, step: Step) -> dict[str, Tensor]:
        return {"kd": soft_target_loss(step.student_logits, step.teacher_logits, self.temperature)}
