"""Romero et al. (2015), "FitNets: Hints for Thin Deep Nets": the student's middle layer regresses the teacher's."""
from __future__ import annotations

import math
from typing import Literal

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdcore.distill import register_method
from kdcore.distill.base import Distiller, MethodOptions, Step
from kdcore.losses import soft_target_loss


class HintRegressor(nn.Module):
    """Maps the student's hint-layer features to the shape of the teacher's.

    Feature maps, (B, C, H, W) -> (B, C', H', W'): the student's map is first brought to
    the teacher's spatial size, by adaptive average pooling when it is larger and by
    bilinear interpolation when it is smaller (so the teacher's hint stays the target
    as it is), then a 1x1 conv + BatchNorm maps the channels. No ReLU after it, unlike
    mdistiller's ConvReg: a hint taken before an activation (MobileNetV2's linear
    bottlenecks) has negative values that a ReLU could never reach.
    Flat features, (B, D) -> (B, D'), from an MLP's hidden layer: a Linear. When one
    side is a map and the other flat, the map is averaged over its positions to (B, C).

    Args:
        student_shape: the student's hint features' shape, batch first.
        teacher_shape: the teacher's hint features' shape, batch first.
    """

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]):
        super().__init__()
        self.spatial = len(student_shape) == 4 and len(teacher_shape) == 4
        self.target_size = tuple(teacher_shape[2:])
        if self.spatial:
            # no bias: the BatchNorm after it has its own shift
            self.conv = nn.Conv2d(student_shape[1], teacher_shape[1], kernel_size=1, bias=False)
            self.bn = nn.BatchNorm2d(teacher_shape[1])
        else:
            self.linear = nn.Linear(_flat_size(student_shape), _flat_size(teacher_shape))

    def forward(self, features: Tensor) -> Tensor:
        if not self.spatial:
            return self.linear(_flat(features))
        size = tuple(features.shape[2:])
        if size != self.target_size:
            if all(s >= t for s, t in zip(size, self.target_size)):
                features = F.adaptive_avg_pool2d(features, self.target_size)
            else:
                features = F.interpolate(features, size=self.target_size, mode="bilinear", align_corners=False)
        return self.bn(self.conv(features))

    def target(self, teacher_features: Tensor) -> Tensor:
        """The teacher's hint in the shape this regressor produces."""
        return teacher_features if self.spatial else _flat(teacher_features)


def _flat_size(shape: tuple[int, ...]) -> int:
    return shape[1] if len(shape) == 4 else math.prod(shape[1:])


def _flat(features: Tensor) -> Tensor:
    """(B, C, H, W) maps averaged over positions to (B, C); anything else flattened to (B, D)."""
    return features.mean(dim=(2, 3)) if features.dim() == 4 else features.flatten(1)


class FitNetsOptions(MethodOptions):
    student_layer: str = Field("middle", description="student's guided layer: first, middle, last, stage:N or a module path")
    teacher_layer: str = Field("middle", description="teacher's hint layer: first, middle, last, stage:N or a module path")
    hint_weight: float = Field(100.0, ge=0.0, le=1e6,
                               description="weight of the hint's mean squared error (mdistiller: 100)")
    kd_weight: float = Field(0.0, ge=0.0, le=1e3,
                             description="weight of the soft-target KD term in joint training; 0 = CE + hint only")
    stages: Literal["joint", "two_stage"] = Field(
        "joint", description="joint: CE + hint throughout; two_stage: hint only first, then CE + KD (the paper)")
    hint_epochs: int = Field(5, ge=0, le=10_000, description="two_stage: epochs that train the hint alone before CE + KD")


@register_method("fitnets")
class FitNets(Distiller):
    title = "FitNets: the student's middle layer regresses the teacher's through a learnt regressor (Romero et al. 2015)"
    formula = (r"\mathcal{L}_{hint} = \lambda_{hint}\,\tfrac{1}{N}\big\|h_t - r(g_s)\big\|_2^2,\quad "
               r"\mathcal{L}_{kd} = \lambda_{kd}\,T^2\,\mathrm{KL}\big(\sigma(z_t/T)\,\|\,\sigma(z_s/T)\big)")
    symbols = {"hint_weight": r"\lambda_{hint}", "kd_weight": r"\lambda_{kd}"}
    Options = FitNetsOptions
    cacheable = False

    def __init__(self, settings, student, teachers, sample):
        super().__init__(settings, student, teachers, sample)
        self.student_path = self.layer(student, self.options.student_layer, sample)
        self.teacher_path = self.layer(teachers[0], self.options.teacher_layer, sample)
        s = self.probe(student, [self.student_path], sample)[self.student_path]
        t = self.probe(teachers[0], [self.teacher_path], sample)[self.teacher_path]
        self.regressor = HintRegressor(tuple(s.shape), tuple(t.shape)).to(sample.device)

    @classmethod
    def config_problems(cls, options: FitNetsOptions, config) -> list[tuple[str, str]]:
        if options.stages == "two_stage" and options.hint_epochs >= config.train.epochs:
            return [("distill.options.hint_epochs",
                     f"two_stage trains the hint alone for hint_epochs ({options.hint_epochs}) of the student's "
                     f"train.epochs ({config.train.epochs}); make it fewer, or the classifier never trains")]
        return []

    def student_layers(self) -> list[str]:
        return [self.student_path]

    def teacher_layers(self) -> list[str]:
        return [self.teacher_path]

    def hint(self, step: Step) -> Tensor:
        """Mean squared error between the regressed student features and the teacher's hint, unweighted."""
        guided = self.regressor(step.student_features[self.student_path].float())
        return F.mse_loss(guided, self.regressor.target(step.teacher_features[self.teacher_path].float()))

    def kd(self, step: Step) -> Tensor:
        return soft_target_loss(step.student_logits, step.teacher_logits, self.temperature)

    def terms(self, step: Step) -> dict[str, Tensor]:
        if self.options.stages == "two_stage":  # stage 2 (stage 1 is in `losses`): the paper's KD, no hint
            return {"kd": self.kd(step)}
        out = {"hint": self.options.hint_weight * self.hint(step)}
        if self.options.kd_weight > 0:
            out["kd"] = self.options.kd_weight * self.kd(step)
        return out

    def losses(self, step: Step) -> dict[str, Tensor]:
        if self.options.stages == "two_stage":
            if step.epochs <= self.options.hint_epochs:
                raise ValueError(f"fitnets: hint_epochs ({self.options.hint_epochs}) must be fewer than the run's "
                                 f"epochs ({step.epochs}), or the student's classifier is never trained")
            if step.epoch <= self.options.hint_epochs:
                # Stage 1 trains the layers up to the guided one on the hint alone: no CE for alpha to balance.
                return {"hint": self.options.hint_weight * self.hint(step)}
        return super().losses(step)
