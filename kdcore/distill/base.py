"""What a distillation method is: a module with options, a formula and named loss terms.

A method subclasses `Distiller`, declares its `Options` (pydantic, with ranges and a
one-line meaning per field), its `formula` in LaTeX, the layers it reads and whether
the teacher's logits can be cached, and implements `terms`. Learnable parts (a
regressor) are ordinary submodules: the trainer optimizes, saves and restores them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from kdcore.distill.hooks import FeatureTap
from kdcore.losses import ensemble_logits
from kdcore.models.stages import resolve_layer
from kdcore.spans import region


class MethodOptions(BaseModel):
    """A method's own settings; T and alpha are everyone's and live in DistillConfig."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # as the config's own numbers


@dataclass
class Step:
    """One training batch as a method sees it."""

    x: Tensor
    y: Optional[Tensor]  # None for an unlabelled transfer set (alpha = 1)
    idx: Tensor  # the images' positions in the training split
    epoch: int  # 1-based
    epochs: int
    student_logits: Tensor  # float32
    teacher_logits: Tensor  # float32; several teachers' combined
    teacher_logits_each: list[Tensor] = field(default_factory=list)
    student_features: dict[str, Tensor] = field(default_factory=dict)
    teacher_features: dict[str, Tensor] = field(default_factory=dict)  # the first teacher's


class Distiller(nn.Module):
    """Base of every method: CE on the labels weighted 1 - alpha, the method's terms weighted alpha.

    Args:
        settings: the run's DistillConfig (method, temperature, alpha, options, teacher_weights).
        student: the model being trained (not registered as a submodule).
        teachers: frozen teachers, in eval mode (not registered either).
        sample: a few training inputs on the training device, to size learnable parts.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""  # one line, with its source
    formula: ClassVar[str] = ""  # LaTeX of the method's term
    symbols: ClassVar[dict[str, str]] = {}  # option name -> its symbol in `formula`, e.g. "nckd_weight": r"\lambda_{nc}"
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    uses_temperature: ClassVar[bool] = True
    # False when the method reads features: the teacher must run on every batch.
    cacheable: ClassVar[bool] = True

    def __init__(self, settings, student: nn.Module, teachers: Sequence[nn.Module], sample: Tensor):
        super().__init__()
        self.options = self.Options.model_validate(settings.options)
        self.temperature = float(settings.temperature)
        self.alpha = float(settings.alpha)
        self._student = (student,)  # a tuple keeps them out of this module's parameters and state
        self._teachers = tuple(teachers)
        weights = settings.teacher_weights or [1.0] * len(teachers)
        if len(weights) != len(teachers):
            raise ValueError(f"distill.teacher_weights has {len(weights)} entries for {len(teachers)} teachers")
        total = sum(weights)
        self.teacher_weights = [w / total for w in weights]

    # What a method declares -------------------------------------------------------------

    def student_layers(self) -> list[str]:
        return []

    def teacher_layers(self) -> list[str]:
        return []

    def terms(self, step: Step) -> dict[str, Tensor]:
        """The method's loss terms, each a scalar, before the alpha weighting."""
        raise NotImplementedError

    @classmethod
    def config_problems(cls, options: MethodOptions, config) -> list[tuple[str, str]]:
        """(config key, message) for options that cannot work with the rest of this run's config."""
        return []

    # Shared machinery ---------------------------------------------------------------------

    @property
    def student(self) -> nn.Module:
        return self._student[0]

    @property
    def teachers(self) -> tuple[nn.Module, ...]:
        return self._teachers

    def layer(self, model: nn.Module, spec: str, sample: Tensor) -> str:
        return resolve_layer(model, spec, sample)

    @staticmethod
    @torch.no_grad()
    def probe(model: nn.Module, paths: list[str], sample: Tensor) -> dict[str, Tensor]:
        """The features at `paths` for `sample`, in eval mode (so BatchNorm statistics stay as they are)."""
        was_training = model.training
        model.eval()
        try:
            with FeatureTap(model, paths) as tap:
                model(sample)
            return dict(tap.features)
        finally:
            model.train(was_training)

    def combine(self, logits_each: Sequence[Tensor]) -> Tensor:
        """Several teachers as one: T * log of the weighted mean of their softened probabilities.

        softmax(combined / T) is then exactly that mean, so every logit method sees it at T.
        """
        if len(logits_each) == 1:
            return logits_each[0]
        return ensemble_logits(list(logits_each), self.teacher_weights, self.temperature)

    def losses(self, step: Step) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        if self.alpha < 1.0:
            if step.y is None:
                raise ValueError("labels are required when alpha < 1")
            out["ce"] = (1.0 - self.alpha) * F.cross_entropy(step.student_logits, step.y)
        if self.alpha > 0.0:
            for name, value in self.terms(step).items():
                out[name] = self.alpha * value
        return out

    def forward_train(self, x: Tensor, y: Optional[Tensor], idx: Tensor, *, epoch: int, epochs: int,
                      teacher_logits: Optional[Tensor] = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Runs the student (and the teachers unless their logits are given) on a batch.

        Returns the student's logits and the named, weighted loss terms whose sum is the loss.
        """
        with FeatureTap(self.student, self.student_layers()) as s_tap, region("kdcore.student_forward"):
            student_logits = self.student(x).float()
        each: list[Tensor] = []
        t_features: dict[str, Tensor] = {}
        if teacher_logits is None:
            with torch.no_grad(), region("kdcore.teacher_pass"):
                for i, teacher in enumerate(self.teachers):
                    with FeatureTap(teacher, self.teacher_layers() if i == 0 else []) as t_tap:
                        each.append(teacher(x).float())
                    if i == 0:
                        t_features = {k: v.float() for k, v in t_tap.features.items()}
            teacher_logits = self.combine(each)
        step = Step(x=x, y=y, idx=idx, epoch=epoch, epochs=epochs, student_logits=student_logits,
                    teacher_logits=teacher_logits.float(), teacher_logits_each=each,
                    student_features=s_tap.features, teacher_features=t_features)
        with region("kdcore.loss_terms"):
            return student_logits, self.losses(step)


def describe(cls: type[Distiller]) -> dict[str, Any]:
    """A method's declaration as plain data: what `kdcore methods --json` prints and the form is drawn from."""
    options = []
    for name, info in cls.Options.model_fields.items():
        schema = cls.Options.model_json_schema()["properties"][name]
        entry = {"name": name, "default": info.default, "help": info.description or ""}
        for key in ("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum"):
            if key in schema:
                entry[key] = schema[key]
        options.append(entry)
    return {"name": cls.name, "title": cls.title, "formula": cls.formula, "symbols": dict(cls.symbols), "options": options,
            "uses_temperature": cls.uses_temperature, "cacheable": cls.cacheable}

