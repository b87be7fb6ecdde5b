"""Huang et al. (2022), "Knowledge Distillation from A Stronger Teacher" (DIST): match relations, not values."""
from __future__ import annotations

from pydantic import Field
from torch import Tensor

from kdcore.distill import register_method
from kdcore.distill.base import Distiller, MethodOptions, Step

EPS = 1e-8  # the reference's: keeps a constant row or column (correlation undefined) finite


def pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    """(N, D), (N, D) -> (N,): the Pearson correlation of each row of `a` with the same row of `b`."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + EPS)


def dist_relations(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """DIST's inter- and intra-class relation losses, each T^2 * (1 - mean Pearson correlation), unweighted.

    Only a linear relation between the softened probabilities is asked for, so a student
    need not reproduce a much stronger teacher's exact values.

    Args:
        student_logits: (B, K) logits.
        teacher_logits: (B, K) logits.
        temperature: the softmax temperature T.
    """
    p_s = (student_logits / temperature).softmax(dim=1)
    p_t = (teacher_logits / temperature).softmax(dim=1)
    inter = 1.0 - pearson_rows(p_s, p_t).mean()  # per image, across its classes
    intra = 1.0 - pearson_rows(p_s.T, p_t.T).mean()  # per class, across the batch
    return inter * temperature**2, intra * temperature**2


class DISTOptions(MethodOptions):
    inter_weight: float = Field(1.0, ge=0.0, le=1e3, description="weight of the inter-class (per image) relation (beta)")
    intra_weight: float = Field(1.0, ge=0.0, le=1e3, description="weight of the intra-class (per class) relation (gamma)")


@register_method("dist")
class DIST(Distiller):
    title = "DIST: Pearson correlation of class probabilities, per image and per class (Huang et al. 2022)"
    formula = (r"\mathcal{L}_{inter} = \lambda_{inter}\,T^2\,\tfrac{1}{B}\sum_i "
               r"\big(1 - \rho(\mathbf{p}_{s,i:}, \mathbf{p}_{t,i:})\big),\quad "
               r"\mathcal{L}_{intra} = \lambda_{intra}\,T^2\,\tfrac{1}{K}\sum_k "
               r"\big(1 - \rho(\mathbf{p}_{s,:k}, \mathbf{p}_{t,:k})\big),\quad "
               r"\mathbf{p} = \sigma(z/T)")
    symbols = {"inter_weight": r"\lambda_{inter}", "intra_weight": r"\lambda_{intra}"}
    Options = DISTOptions

    def terms(self, step: Step) -> dict[str, Tensor]:
        inter, intra = dist_relations(step.student_logits, step.teacher_logits, self.temperature)
        return {"inter": self.options.inter_weight * inter, "intra": self.options.intra_weight * intra}
