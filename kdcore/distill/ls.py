"""Sun et al. (2024), "Logit Standardization in Knowledge Distillation"."""
from __future__ import annotations

from pydantic import Field
from torch import Tensor

from kdcore.distill import register_method
from kdcore.distill.base import Distiller, MethodOptions, Step
from kdcore.losses import soft_target_loss


def standardized(logits: Tensor, eps: float) -> Tensor:
    """Each row's z-score; the student need not match the teacher's logit scale, only its shape."""
    return (logits - logits.mean(dim=1, keepdim=True)) / (eps + logits.std(dim=1, keepdim=True))


class LogitStandardizationOptions(MethodOptions):
    eps: float = Field(1e-7, gt=0.0, le=1e-2, description="added to each row's standard deviation (the paper's 1e-7)")


@register_method("ls")
class LogitStandardization(Distiller):
    title = "Logit standardization: soft targets between z-scored logits (Sun et al. 2024)"
    formula = (r"\mathcal{L}_{kd} = T^2\,\mathrm{KL}\big(\sigma(\mathcal{Z}(z_t)/T)\,\|\,\sigma(\mathcal{Z}(z_s)/T)\big),"
               r"\quad \mathcal{Z}(z) = \frac{z - \bar z}{\operatorname{std}(z) + \epsilon}")
    Options = LogitStandardizationOptions

    def terms(self, step: Step) -> dict[str, Tensor]:
        eps = self.options.eps
        return {"kd": soft_target_loss(standardized(step.student_logits, eps), standardized(step.teacher_logits, eps),
                                       self.temperature)}
