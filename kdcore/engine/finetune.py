"""Fine-tuning a loaded teacher on this run's dataset (transfer learning), optionally its last stage only."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from kdcore.config import TeacherConfig
from kdcore.engine.checkpoint import classifier_head
from kdcore.models.stages import feature_stages


def fine_tuned(teacher: TeacherConfig) -> bool:
    return teacher.source != "train" and teacher.finetune_epochs > 0


def last_stage_modules(model: nn.Module, sample: torch.Tensor) -> list[str]:
    """Module paths that make up the model's last stage (feature_stages' last entry).

    A named stage (ResNet's layer3) is one module; a stage ending inside a Sequential (a CNN's
    features.7, an MLP's 4) is the run of that Sequential's layers after the previous stage's end.
    """
    stages = feature_stages(model, sample)
    parent_path, _, last = stages[-1].rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if not isinstance(parent, nn.Sequential):
        return [stages[-1]]
    names = [name for name, _ in parent.named_children()]
    start = 0
    if len(stages) > 1:
        before_parent, _, before = stages[-2].rpartition(".")
        if before_parent == parent_path:
            start = names.index(before) + 1
    return [f"{parent_path}.{name}" if parent_path else name for name in names[start:names.index(last) + 1]]


def freeze_all_but_last_stage(model: nn.Module, sample: torch.Tensor, num_classes: int) -> list[RemovableHandle]:
    """Leaves only the last stage and the classifier trainable, for fine-tuning.

    Frozen layers also stay in eval mode (a hook on each), so neither BatchNorm's running
    statistics nor dropout change them: every weight outside the trained part stays as loaded.

    Returns:
        The hooks' handles; remove them when fine-tuning ends.
    """
    trained = last_stage_modules(model, sample) + [classifier_head(model, num_classes)]
    inside = lambda path: any(path == p or path.startswith(p + ".") for p in trained)  # noqa: E731
    for path, param in model.named_parameters():
        param.requires_grad_(inside(path.rpartition(".")[0]))

    def stay_in_eval(module: nn.Module, _inputs) -> None:
        module.training = False

    return [module.register_forward_pre_hook(stay_in_eval) for path, module in model.named_modules()
            if not inside(path) and not list(module.children())]


@contextmanager
def last_stage_only(model: nn.Module, sample: Callable[[], torch.Tensor], num_classes: int,
                    enabled: bool) -> Iterator[None]:
    """Within it, with `enabled`, only the last stage and the classifier train (freeze_all_but_last_stage).

    `sample()` gives a few input images, to trace the model's stages; asked only when enabled.
    """
    hooks = freeze_all_but_last_stage(model, sample(), num_classes) if enabled else []
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
