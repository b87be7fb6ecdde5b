"""Loss formulas shared by the distillation methods (kdcore.distill) and the pages that draw them."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def soft_target_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network".

    T^2 * KL(softmax(t/T) || softmax(s/T)), batch mean. The T^2 factor keeps the
    gradient's scale independent of T, so alpha means the same at every T.
    """
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def softened(logits: Tensor, temperature: float) -> Tensor:
    """softmax(logits / T) along the class axis."""
    return torch.softmax(logits.float() / temperature, dim=-1)


def ensemble_softened(logits_each: list[Tensor], weights: list[float] | None, temperature: float) -> Tensor:
    """Several teachers' softened distributions averaged with `weights` (default equal; normalized here)."""
    weights = weights or [1.0] * len(logits_each)
    total = sum(weights)
    return sum((w / total) * softened(z, temperature) for w, z in zip(weights, logits_each))


def ensemble_logits(logits_each: list[Tensor], weights: list[float] | None, temperature: float) -> Tensor:
    """Several teachers as one: T * log of their averaged softened distribution, so softmax(z / T) is that average."""
    return temperature * ensemble_softened(list(logits_each), weights, temperature).clamp_min(1e-30).log()


def entropy(probs: Tensor) -> Tensor:
    """Shannon entropy in nats along the last axis."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)
