"""What a trained teacher and student say about the test set, computed from stored logits.

Pure functions of tensors: no models are run, so a UI can recompute them at
any temperature at once. Logits are (N, K) float tensors, labels (N,) int64.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from kdcore.losses import entropy, softened


def _temperatures(temperatures: Sequence[float] | Tensor) -> list[float]:
    temps = [float(t) for t in temperatures]
    if any(t <= 0 for t in temps):
        raise ValueError(f"temperatures must be > 0, got {temps}")
    return temps


def _predictions(logits_or_preds: Tensor) -> Tensor:
    # (N, K) logits -> (N,) classes; (N,) predictions pass through
    return logits_or_preds.argmax(1) if logits_or_preds.dim() == 2 else logits_or_preds.long()


def kl_vs_temperature(teacher_logits: Tensor, student_logits: Tensor,
                      temperatures: Sequence[float] | Tensor) -> Tensor:
    """Mean KL(teacher || student) over the test set, in nats, of the distributions softened at each T.

    Without the T² factor of the training loss: this is the divergence itself.

    Returns:
        A (len(temperatures),) float tensor.
    """
    out = []
    for t in _temperatures(temperatures):
        log_p = torch.log_softmax(teacher_logits.float() / t, dim=1)
        log_q = torch.log_softmax(student_logits.float() / t, dim=1)
        out.append((log_p.exp() * (log_p - log_q)).sum(1).mean())
    return torch.stack(out) if out else torch.empty(0)


def entropy_vs_temperature(logits: Tensor, temperatures: Sequence[float] | Tensor) -> Tensor:
    """Mean entropy (nats) of softmax(logits / T) over the rows, at each T; log K is the ceiling.

    Returns:
        A (len(temperatures),) float tensor.
    """
    out = [entropy(softened(logits, t)).mean() for t in _temperatures(temperatures)]
    return torch.stack(out) if out else torch.empty(0)


def class_similarity(logits: Tensor, labels: Tensor, num_classes: int, temperature: float = 1.0) -> Tensor:
    """The teacher's "dark knowledge": row k is its mean softened distribution over images of true class k.

    Returns:
        A (K, K) float tensor whose rows sum to 1; NaN rows for classes absent from `labels`.
    """
    probs = softened(logits, _temperatures([temperature])[0])  # (N, K)
    labels = labels.long()
    sums = torch.zeros(num_classes, probs.shape[1], dtype=probs.dtype).index_add_(0, labels, probs)
    counts = torch.bincount(labels, minlength=num_classes).to(probs.dtype).unsqueeze(1)
    return sums / counts  # 0 / 0 -> NaN for an absent class


def confusion_matrix(logits_or_preds: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Counts of (true class, predicted class) pairs; rows are true classes.

    Args:
        logits_or_preds: (N, K) logits or (N,) predicted classes.

    Returns:
        A (K, K) int64 tensor.
    """
    preds = _predictions(logits_or_preds)
    flat = labels.long() * num_classes + preds
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(logits_or_preds: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Share of each true class predicted correctly (recall).

    Returns:
        A (K,) float tensor; NaN for classes absent from `labels`.
    """
    cm = confusion_matrix(logits_or_preds, labels, num_classes).double()
    return (cm.diagonal() / cm.sum(1)).float()
