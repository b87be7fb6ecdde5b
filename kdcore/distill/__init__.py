"""Distillation methods as plug-ins: one file per method in this package, found by name.

    from kdcore.distill import METHODS, build_distiller, describe_methods
    distiller = build_distiller(config.distill, student, [teacher], sample)
    student_logits, terms = distiller.forward_train(x, y, idx, epoch=1, epochs=10)

Adding a method is a new module here that subclasses `Distiller` and decorates it
with `@register_method("name")`; every module of this package is imported for its
registrations, so nothing else changes.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Sequence

from torch import Tensor, nn

from kdcore.distill.base import Distiller, MethodOptions, Step, describe
from kdcore.registry import Registry

METHODS: Registry[type[Distiller]] = Registry("distillation method")


def register_method(name: str):
    def decorate(cls: type[Distiller]) -> type[Distiller]:
        cls.name = name
        return METHODS.register(name)(cls)
    return decorate


def build_distiller(settings, student: nn.Module, teachers: Sequence[nn.Module], sample: Tensor) -> Distiller:
    """The method `settings.method` for this student and these teachers, with its learnable parts sized from `sample`."""
    return METHODS.get(settings.method)(settings, student, teachers, sample)


def describe_methods() -> list[dict]:
    return [describe(METHODS.get(name)) for name in METHODS.names()]


for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "hooks"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "Distiller", "MethodOptions", "Step", "build_distiller", "describe_methods", "register_method"]
