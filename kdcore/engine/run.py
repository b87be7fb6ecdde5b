"""A whole distillation run: teacher, then student, then the scratch baseline."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from kdcore.config import RunConfig
from kdcore.data import DatasetError, DataSplits, load_dataset
from kdcore.data.splitting import SPLIT_SEED, stratified_split
from kdcore.engine.checkpoint import load_model_from_checkpoint, save_checkpoint
from kdcore.engine.device import describe_device, resolve_device
from kdcore.engine.events import Callback, Event, no_callback
from kdcore.engine.rng import global_rng_lock
from kdcore.engine.trainer import accuracy, fit, freeze_early_layers, predict_logits
from kdcore.models import create_model, profile_model
from kdcore.stats import paired_gain

TEST_LOGITS_FILE = "test_logits.pt"
FINISHED_FILE = "finished_phases.json"  # what each finished phase reported, for a resumed run
STATE_SUFFIX = "_state.pt"  # a phase's whole training state at its last finished epoch


def _read_finished(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / FINISHED_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _write_finished(run_dir: Path, finished: dict) -> None:
    tmp = run_dir / (FINISHED_FILE + ".tmp")
    tmp.write_text(json.dumps(finished, default=float))
    tmp.replace(run_dir / FINISHED_FILE)


def _build(arch: str, options: dict, data: DataSplits, seed: int) -> nn.Module:
    with global_rng_lock, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the student and its baseline start from the same weights
        return create_model(arch, num_classes=data.num_classes, in_channels=data.in_channels,
                            image_size=data.image_size, **options)


@dataclass
class Reused:
    """A phase's finished weights taken from elsewhere instead of training them here.

    Attributes:
        checkpoint: the weights file.
        run_id: the stored run that trained them, if any (a seed group's or sweep's sibling).
        summary: that run's summary, whose validation figures for the phase are carried over.
    """

    checkpoint: Path
    run_id: Optional[int] = None
    summary: dict = field(default_factory=dict)


def teacher_key(config: RunConfig) -> str:
    """Equal for two configs exactly when their teachers would train to the same weights."""
    train = config.train.model_dump(mode="json", exclude={"epochs", "seed"})
    dataset = config.dataset.model_dump(mode="json", exclude={"student_fraction"})
    teacher = config.teacher.model_dump(mode="json", include={"arch", "options", "epochs"})
    return _digest(dict(dataset=dataset, teacher=teacher, seed=config.teacher_seed, train=train))


def baseline_key(config: RunConfig) -> str:
    """Equal for two configs exactly when their scratch baselines would train to the same weights."""
    return _digest(dict(dataset=config.dataset.model_dump(mode="json"),
                        student=config.student.model_dump(mode="json"),
                        train=config.train.model_dump(mode="json")))


def _digest(value: dict) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def student_data(data: DataSplits, fraction: float) -> DataSplits:
    """The splits the student and its baseline learn from: a fixed stratified share of train."""
    if fraction >= 1.0:
        return data
    _, chosen = stratified_split(data.train.y, fraction, SPLIT_SEED)
    if len(chosen) == 0:
        raise DatasetError(f"dataset.student_fraction {fraction:g} leaves the student no training images")
    return replace(data, train=data.train.subset(chosen))


def execute_run(
    config: RunConfig,
    run_dir: Path,
    *,
    callback: Callback = no_callback,
    should_stop: Callable[[], bool] = lambda: False,
    device: Optional[torch.device] = None,
    teacher_checkpoint: Optional[Path | Reused] = None,
    reuse_baseline: Optional[Reused] = None,
) -> dict:
    """Runs every phase of `config`, saving weights and test logits under `run_dir`.

    Args:
        teacher_checkpoint: weights for a teacher not trained here (source "run" or
            "checkpoint", or a sibling run's identical teacher); the job layer resolves
            a stored run to its file.
        reuse_baseline: a sibling run's baseline with the same baseline_key, used
            instead of training an identical one again.

    Returns:
        The summary: test accuracies, KD gain with its paired interval and p-value,
        sizes, and whether the run was cancelled.
    """
    started = time.perf_counter()
    device = device or resolve_device(config.train.device)
    if isinstance(teacher_checkpoint, (str, Path)):
        teacher_checkpoint = Reused(Path(teacher_checkpoint))
    run_dir.mkdir(parents=True, exist_ok=True)
    data = load_dataset(config.dataset)
    for split in ("train", "test"):
        if len(getattr(data, split)) == 0:
            raise DatasetError(f"dataset {config.dataset.name!r} has no {split} images after splitting; add images "
                               "or lower dataset.val_fraction")
    shape = dict(num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size)
    summary: dict = {"device": describe_device(device), "num_classes": data.num_classes,
                     "train_size": len(data.train), "val_size": len(data.val), "test_size": len(data.test),
                     "teacher_key": teacher_key(config), "baseline_key": baseline_key(config)}
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

    def carry_over(phase: str, reused: Reused) -> None:
        for key in (f"{phase}_best_val_acc", f"{phase}_epochs"):
            if key in reused.summary:
                summary[key] = reused.summary[key]
        if reused.run_id is not None:
            summary[f"{phase}_from_run"] = reused.run_id

    # The steps each phase will take at most, so a UI can estimate the whole run's time left
    s_data = student_data(data, config.dataset.student_fraction)
    batches = lambda n: -(-n // config.train.batch_size)  # noqa: E731
    phases = ["teacher", "student"] + (["baseline"] if config.baseline else [])
    callback(Event("plan", info={"phases": phases, "steps": {
        "teacher": 0 if teacher_checkpoint is not None or "teacher" in _read_finished(run_dir)
        else config.teacher.epochs * batches(len(data.train)),
        "student": config.train.epochs * batches(len(s_data.train)),
        "baseline": config.train.epochs * batches(len(s_data.train)) if reuse_baseline is None else 0}}))

    # A run resumed after an interruption takes its finished phases as they are and goes on with
    # the unfinished one from its last epoch's saved state.
    finished = _read_finished(run_dir)

    def done_earlier(phase: str, arch: str, options: dict) -> Optional[nn.Module]:
        if phase not in finished or not (run_dir / f"{phase}.pt").is_file():
            return None
        model = load_model_from_checkpoint(run_dir / f"{phase}.pt", arch=arch, options=options or None, **shape)
        summary.update({k: v for k, v in finished[phase].items() if k.startswith(phase)})
        callback(Event("phase", phase=phase, info={"loaded": "this run's earlier attempt"}))
        return model.to(device).eval()

    def phase_finished(phase: str, result) -> None:
        finished[phase] = {k: v for k, v in summary.items() if k.startswith(f"{phase}_")}
        _write_finished(run_dir, finished)
        (run_dir / f"{phase}{STATE_SUFFIX}").unlink(missing_ok=True)

    # Teacher
    t_cfg = config.teacher
    teacher = done_earlier("teacher", t_cfg.arch, t_cfg.options) if teacher_checkpoint is None else None
    if teacher is not None:
        finish_phase("teacher", teacher)
    elif teacher_checkpoint is None:
        if t_cfg.source != "train":
            raise ValueError(f"teacher.source is {t_cfg.source!r} but no teacher checkpoint was given")
        teacher = _build(t_cfg.arch, t_cfg.options, data, config.teacher_seed)
        result = fit(teacher, data, phase="teacher", epochs=t_cfg.epochs, train_cfg=config.train, device=device,
                     augment=config.dataset.augment, callback=callback, should_stop=should_stop,
                     on_checkpoint=saver("teacher", t_cfg.arch, t_cfg.options), seed=config.teacher_seed,
                     state_path=run_dir / f"teacher{STATE_SUFFIX}")
        if result.cancelled:
            return cancelled()
        teacher.to(device).eval()
        finish_phase("teacher", teacher, result)
        phase_finished("teacher", result)
    else:
        teacher = load_model_from_checkpoint(teacher_checkpoint.checkpoint, arch=t_cfg.arch,
                                             options=t_cfg.options or None, **shape)
        save_checkpoint(run_dir / "teacher.pt", teacher, arch=t_cfg.arch, options=t_cfg.options, **shape)
        carry_over("teacher", teacher_checkpoint)
        loaded = (f"run {teacher_checkpoint.run_id}" if teacher_checkpoint.run_id is not None
                  else str(teacher_checkpoint.checkpoint))
        callback(Event("phase", phase="teacher", info={"loaded": loaded}))
        teacher.to(device).eval()
        finish_phase("teacher", teacher)

    # Student (distilled), then the same student from scratch, on the same images in the same order
    s_cfg = config.student
    summary["student_train_size"] = len(s_data.train)
    for phase in phases[1:]:
        student = done_earlier(phase, s_cfg.arch, s_cfg.options)
        if student is not None:
            finish_phase(phase, student)
        elif phase == "baseline" and reuse_baseline is not None:
            student = load_model_from_checkpoint(reuse_baseline.checkpoint, arch=s_cfg.arch,
                                                 options=s_cfg.options or None, **shape)
            save_checkpoint(run_dir / "baseline.pt", student, arch=s_cfg.arch, options=s_cfg.options, **shape)
            carry_over("baseline", reuse_baseline)
            callback(Event("phase", phase="baseline", info={"loaded": f"run {reuse_baseline.run_id}"}))
            student.to(device).eval()
            finish_phase(phase, student)
        else:
            student = _build(s_cfg.arch, s_cfg.options, data, config.train.seed + 1)
            freeze_early_layers(student, s_cfg.freeze_fraction)
            result = fit(student, s_data, phase=phase, epochs=config.train.epochs, train_cfg=config.train,
                         device=device, teacher=teacher if phase == "student" else None, distill_cfg=config.distill,
                         augment=config.dataset.augment, callback=callback, should_stop=should_stop,
                         on_checkpoint=saver(phase, s_cfg.arch, s_cfg.options), seed=config.train.seed,
                         state_path=run_dir / f"{phase}{STATE_SUFFIX}")
            if result.cancelled:
                return cancelled()
            finish_phase(phase, student, result)
            phase_finished(phase, result)
        if phase == "student":
            preds = test_logits["student"].argmax(1)
            summary["test_agreement"] = (preds == test_logits["teacher"].argmax(1)).float().mean().item()

    if "baseline_test_acc" in summary:
        labels = test_logits["labels"]
        paired = paired_gain((test_logits["student"].argmax(1) == labels).numpy(),
                             (test_logits["baseline"].argmax(1) == labels).numpy())
        summary.update(paired.as_summary())
    summary["compression"] = summary["teacher_params"] / max(1, summary["student_params"])
    summary["flops_ratio"] = summary["teacher_flops"] / max(1, summary["student_flops"])
    summary["cancelled"] = False
    summary["seconds"] = round(time.perf_counter() - started, 2)
    callback(Event("summary", info=summary))
    return summary
