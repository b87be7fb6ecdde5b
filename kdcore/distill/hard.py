"""Teacher pseudo-labels: the student learns the teacher's top class, as if it were the label."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdcore.distill import register_method
from kdcore.distill.base import Distiller, Step


@register_method("hard")
class HardTargets(Distiller):
    title = "Hard targets: cross-entropy against the teacher's top class (pseudo-labels)"
    formula = r"\mathcal{L}_{kd} = \mathrm{CE}\big(\arg\max_k z_{t,k},\ \sigma(z_s)\big)"
    uses_temperature = False

    def terms(self, step: Step) -> dict[str, Tensor]:
        return {"kd": F.cross_entropy(step.student_logits, step.teacher_logits.argmax(dim=1))}
