"""A whole distillation run: teacher, then student, then the scratch baseline."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from kdcore.config import RunConfig
from kdcore.data import DatasetError, DataSplits, load_dataset
from kdcore.engine.checkpoint import load_model_from_checkpoint, save_checkpoint
from kdcore.engine.device import describe_device, resolve_device
from kdcore.engine.events import Callback, Event, no_callback
from kdcore.engine.trainer import accuracy, fit, freeze_early_layers, predict_logits
from kdcore.models import create_model, profile_model

TEST_LOGITS_FILE = "test_logits.pt"


_init_lock = threading.Lock()  # workers on other devices share the global RNG


def _build(arch: str, options: dict, data: DataSplits, seed: int) -> nn.Module:
    with _init_lock, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the student and its baseline start from the same weights
        return create_model(arch, num_classes=data.num_classes, in_channels=data.in_channels,
                            image_size=data.image_size, **options)


def execute_run(
    config: RunConfig,
    run_dir: Path,
    *,
    callback: Callback = no_callback,
    should_stop: Callable[[], bool] = lambda: False,
    device: Optional[torch.device] = None,
    teacher_checkpoint: Optional[Path] = None,
) -> dict:
    """Runs every phase of `config`, saving weights and test logits under `run_dir`.

    Args:
        teacher_checkpoint: weights for a teacher not trained here (source "run" or
            "checkpoint"); the job layer resolves a stored run to its file.

    Returns:
        The summary: test accuracies, KD gain, sizes, and whether the run was cancelled.
    """
    started = time.perf_counter()
    device = device or resolve_device(config.train.device)
    torch.manual_seed(config.train.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = load_dataset(config.dataset)
    for split in ("train", "test"):
        if len(getattr(data, split)) == 0:
            raise DatasetError(f"dataset {config.dataset.name!r} has no {split} images after splitting; add images "
                               "or lower dataset.val_fraction")
    shape = dict(num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size)
    summary: dict = {"device": describe_device(device), "num_classes": data.num_classes,
                     "train_size": len(data.train), "val_size": len(data.val), "test_size": len(data.test)}
    test_logits: dict[str, torch.Tensor] = {"labels": data.test.y.clone()}

    def saver(phase: str, arch: str, options: dict):
        def save(tag: str, model: nn.Module) -> None:
            name = f"{phase}.pt" if tag == "best" else f"{phase}_last.pt"
            save_checkpoint(run_dir / name, model, arch=arch, options=options, **shape)
        return save

    def finish_phase(phase: str, model: nn.Module, result=None) -> None:
        logits = predict_logits(model, data.test, device, config.train.eval_batch_size, config.train.amp)
        test_logits[phase] = logits.cpu()
        summary[f"{phase}_test_acc"] = accuracy(logits, data.test.y)
        if result is not None:
            summary[f"{phase}_best_val_acc"] = result.best_val_acc
            summary[f"{phase}_epochs"] = result.epochs_run
            summary[f"{phase}_seconds"] = round(result.seconds, 2)
        profile = profile_model(model, data.in_channels, data.image_size)
        summary[f"{phase}_params"] = profile.params
        summary[f"{phase}_size_mb"] = round(profile.size_mb, 4)
        summary[f"{phase}_flops"] = profile.flops
        tmp = run_dir / (TEST_LOGITS_FILE + ".tmp")
        torch.save(test_logits, tmp)
        tmp.replace(run_dir / TEST_LOGITS_FILE)  # the Distributions page may be reading it

    def cancelled() -> dict:
        summary["cancelled"] = True
        summary["seconds"] = round(time.perf_counter() - started, 2)
        return summary

    # Teacher
    t_cfg = config.teacher
    if t_cfg.source == "train":
        teacher = _build(t_cfg.arch, t_cfg.options, data, config.train.seed)
        result = fit(teacher, data, phase="teacher", epochs=t_cfg.epochs, train_cfg=config.train, device=device,
                     augment=config.dataset.augment, callback=callback, should_stop=should_stop,
                     on_checkpoint=saver("teacher", t_cfg.arch, t_cfg.options))
        if result.cancelled:
            return cancelled()
    else:
        if teacher_checkpoint is None:
            raise ValueError(f"teacher.source is {t_cfg.source!r} but no teacher checkpoint was given")
        teacher = load_model_from_checkpoint(teacher_checkpoint, arch=t_cfg.arch, options=t_cfg.options or None, **shape)
        save_checkpoint(run_dir / "teacher.pt", teacher, arch=t_cfg.arch, options=t_cfg.options, **shape)
        result = None
        callback(Event("phase", phase="teacher", info={"loaded": str(teacher_checkpoint)}))
    teacher.to(device).eval()
    finish_phase("teacher", teacher, result)

    # Student (distilled), then the same student from scratch
    s_cfg = config.student
    phases = ["student"] + (["baseline"] if config.baseline else [])
    for phase in phases:
        student = _build(s_cfg.arch, s_cfg.options, data, config.train.seed + 1)
        freeze_early_layers(student, s_cfg.freeze_fraction)
        result = fit(student, data, phase=phase, epochs=config.train.epochs, train_cfg=config.train, device=device,
                     teacher=teacher if phase == "student" else None, distill_cfg=config.distill,
                     augment=config.dataset.augment, callback=callback, should_stop=should_stop,
                     on_checkpoint=saver(phase, s_cfg.arch, s_cfg.options))
        if result.cancelled:
            return cancelled()
        finish_phase(phase, student, result)
        if phase == "student":
            preds = test_logits["student"].argmax(1)
            summary["test_agreement"] = (preds == test_logits["teacher"].argmax(1)).float().mean().item()

    if "baseline_test_acc" in summary:
        summary["kd_gain"] = summary["student_test_acc"] - summary["baseline_test_acc"]
    summary["compression"] = summary["teacher_params"] / max(1, summary["student_params"])
    summary["flops_ratio"] = summary["teacher_flops"] / max(1, summary["student_flops"])
    summary["cancelled"] = False
    summary["seconds"] = round(time.perf_counter() - started, 2)
    callback(Event("summary", info=summary))
    return summary
