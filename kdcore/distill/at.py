"""Zagoruyko & Komodakis (2017), "Paying More Attention to Attention": match where the networks look."""
from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdcore.distill import register_method
from kdcore.distill.base import Distiller, MethodOptions, Step
from kdcore.models.stages import feature_stages


def attention_map(features: Tensor, p: float) -> Tensor:
    """(B, C, H, W) -> (B, H*W): the channel mean of |f|^p, flattened and L2-normalized per image.

    |f| as in the paper; mdistiller's f^p is the same on post-ReLU features and for p = 2.
    """
    return F.normalize(features.abs().pow(p).mean(dim=1).flatten(1), dim=1)


def attention_loss(student_features: Tensor, teacher_features: Tensor, p: float) -> Tensor:
    """Mean squared difference of the two attention maps; the larger map is average-pooled to the smaller's size."""
    size = tuple(min(s, t) for s, t in zip(student_features.shape[2:], teacher_features.shape[2:]))
    if tuple(student_features.shape[2:]) != size:
        student_features = F.adaptive_avg_pool2d(student_features, size)
    if tuple(teacher_features.shape[2:]) != size:
        teacher_features = F.adaptive_avg_pool2d(teacher_features, size)
    return (attention_map(student_features, p) - attention_map(teacher_features, p)).pow(2).mean()


class ATOptions(MethodOptions):
    # below 1 the gradient of |f|^p is infinite at the zeros a ReLU leaves
    p: float = Field(2.0, ge=1.0, le=8.0, description="exponent of the feature magnitudes in the attention map")
    weight: float = Field(1000.0, ge=0.0, le=1e6, description="weight of the attention term (mdistiller: 1000)")
    stages: int = Field(3, ge=1, le=10, description="how many of the last stages to pair, by position from the end")


@register_method("at")
class AttentionTransfer(Distiller):
    title = "Attention transfer: match the spatial attention maps of the last stages (Zagoruyko & Komodakis 2017)"
    formula = (r"\mathcal{L}_{at} = \lambda_{at} \sum_{j} \tfrac{1}{HW}\Big\|\tfrac{Q_s^j}{\|Q_s^j\|_2} - "
               r"\tfrac{Q_t^j}{\|Q_t^j\|_2}\Big\|_2^2,\quad Q^j = \mathrm{vec}\Big(\tfrac{1}{C}\sum_c |A^j_c|^p\Big)")
    symbols = {"weight": r"\lambda_{at}"}
    Options = ATOptions
    uses_temperature = False
    cacheable = False

    def __init__(self, settings, student, teachers, sample):
        super().__init__(settings, student, teachers, sample)
        s_stages = self._map_stages(student, "student", sample)
        t_stages = self._map_stages(teachers[0], "teacher", sample)
        pairs = min(self.options.stages, len(s_stages), len(t_stages))
        self.pairs = list(zip(s_stages[-pairs:], t_stages[-pairs:]))

    def _map_stages(self, model, role: str, sample: Tensor) -> list[str]:
        stages = feature_stages(model, sample)
        flat = [path for path, f in self.probe(model, stages, sample).items() if f.dim() != 4]
        if flat:
            raise ValueError(f"at: the {role} {type(model).__name__} has flat features at {', '.join(flat)}; "
                             "attention transfer needs convolutional feature maps (B, C, H, W)")
        return stages

    def student_layers(self) -> list[str]:
        return [s for s, _ in self.pairs]

    def teacher_layers(self) -> list[str]:
        return [t for _, t in self.pairs]

    def terms(self, step: Step) -> dict[str, Tensor]:
        total = sum(attention_loss(step.student_features[s].float(), step.teacher_features[t].float(), self.options.p)
                    for s, t in self.pairs)
        return {"at": self.options.weight * total}
