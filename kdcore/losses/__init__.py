"""Distillation losses: pure functions of logits, registered by method name.

A method returns its named loss terms; `distillation_loss` mixes them with the
true-label term by alpha. Adding a method is one function and one registration.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from kdcore.registry import Registry

# name -> fn(student_logits, teacher_logits, temperature) -> distillation term (scalar)
MethodFn = Callable[[Tensor, Tensor, float], Tensor]
METHODS: Registry[MethodFn] = Registry("distillation method")


@METHODS.register("soft")
def soft_target_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network".

    T^2 * KL(softmax(t/T) || softmax(s/T)), batch mean. The T^2 factor keeps the
    gradient's scale independent of T, so alpha means the same at every T.
    """
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


@METHODS.register("hard")
def hard_target_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Cross-entropy against the teacher's argmax (pseudo-labels); temperature plays no part."""
    return F.cross_entropy(student_logits, teacher_logits.argmax(dim=1))


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Optional[Tensor],
    labels: Optional[Tensor],
    *,
    method: str = "soft",
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> tuple[Tensor, dict[str, Tensor]]:
    """(1 - alpha) * CE(labels) + alpha * method term.

    Args:
        student_logits: (B, K) logits.
        teacher_logits: (B, K) logits; may be None only when alpha == 0.
        labels: (B,) class indices; may be None only when alpha == 1 (an unlabelled transfer set).
        method: a name registered in METHODS.
        temperature: softmax temperature T (> 0).
        alpha: weight of the distillation term in [0, 1].

    Returns:
        The total loss and its parts {"ce": ..., "kd": ...} (unweighted, detached), for the live curves.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    parts: dict[str, Tensor] = {}
    total = student_logits.new_zeros(())
    if alpha < 1.0:
        if labels is None:
            raise ValueError("labels are required when alpha < 1")
        ce = F.cross_entropy(student_logits, labels)
        parts["ce"] = ce.detach()
        total = total + (1.0 - alpha) * ce
    if alpha > 0.0:
        if teacher_logits is None:
            raise ValueError("teacher logits are required when alpha > 0")
        kd = METHODS.get(method)(student_logits, teacher_logits.to(student_logits.dtype), temperature)
        parts["kd"] = kd.detach()
        total = total + alpha * kd
    return total, parts


def softened(logits: Tensor, temperature: float) -> Tensor:
    """softmax(logits / T) along the class axis."""
    return torch.softmax(logits.float() / temperature, dim=-1)


def entropy(probs: Tensor) -> Tensor:
    """Shannon entropy in nats along the last axis."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)
