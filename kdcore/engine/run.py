"""A whole distillation run: its teachers, then the student, then the scratch baseline.

Each teacher is trained here, loaded from a stored run or a checkpoint, or loaded and
fine-tuned on this run's dataset (transfer learning); several teachers are distilled
together as one ensemble. Phases are named teacher, teacherN, …, student,
baseline; each keeps its own weights file, resume state and finished-phase record
(kdcore.record). The phases themselves are taken through by kdcore.engine.phases.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from kdcore.config import RunConfig
from kdcore.engine import distributed
from kdcore.engine.device import resolve_device
from kdcore.engine.events import Callback, Event, no_callback
from kdcore.engine.finetune import fine_tuned, freeze_all_but_last_stage, last_stage_modules
from kdcore.engine.finished import read_finished
from kdcore.engine.phases import PhaseRunner, build_model, load_run_data, student_data
from kdcore.engine.sources import (Reused, SiblingFinder, baseline_key, no_siblings, teacher_key,
                                   teacher_seed)
from kdcore.engine.summary import closing_statistics, teachers_record
from kdcore.record.folder import FINISHED_FILE, STATE_SUFFIX, TEST_LOGITS_FILE
from kdcore.record.phases import STUDENT, teacher_phase

_build = build_model  # the name tests have long used

# what other modules import from here, from before the engine was split
__all__ = ["FINISHED_FILE", "STATE_SUFFIX", "TEST_LOGITS_FILE", "Reused", "baseline_key", "execute_run",
           "fine_tuned", "freeze_all_but_last_stage", "last_stage_modules", "read_finished", "student_data",
           "teacher_key", "teacher_phase", "teacher_seed"]


def execute_run(
    config: RunConfig,
    run_dir: Path,
    *,
    callback: Callback = no_callback,
    should_stop: Callable[[], bool] = lambda: False,
    device: Optional[torch.device] = None,
    teacher_sources: Sequence[Optional[Path | Reused]] = (),
    find_sibling: SiblingFinder = no_siblings,
) -> dict:
    """Runs every phase of `config`, saving weights and test logits under `run_dir`.

    Args:
        teacher_sources: per teacher, in order, the weights a teacher with source "run" or
            "checkpoint" starts from (loaded as they are, or fine-tuned); the job layer resolves a
            stored run to its file (kdcore.engine.sources). A missing entry for source "checkpoint"
            is its teacher.checkpoint.
        find_sibling: `(phase, key) -> Reused or None`: a sibling run's finished phase that trained to
            the weights this run's phase would (the same teacher_key or baseline_key), used instead of
            training it again. Asked just before the phase would train, so a sibling that finished it
            meanwhile counts.

    Returns:
        The summary: test accuracies, KD gain with its paired interval and p-value,
        sizes, and whether the run was cancelled. Per teacher phase P (teacher, teacherN, …):
        P_test_acc, P_params, P_size_mb, P_flops, P_key; P_best_val_acc and P_epochs when
        trained or fine-tuned here (or carried from the run that did, P_from_run); when
        fine-tuned, P_pretrained_test_acc (before), P_finetune_epochs, P_new_head and
        P_finetuned_from; P_train and P_augment when the teacher trains with settings of its own.
        `teachers` lists them in order; with several, ensemble_test_acc and
        the normalized teacher_weights. compression and flops_ratio divide the teachers' sum
        by the student's. A student started from a checkpoint adds student_init and
        student_init_new_head.
    """
    started = time.perf_counter()
    device = device or resolve_device(config.train.device)
    sources = given_sources(config, teacher_sources)
    run_dir.mkdir(parents=True, exist_ok=True)
    runner = PhaseRunner(config, run_dir, load_run_data(config), device=device, callback=callback,
                         should_stop=should_stop, teacher_sources=sources, find_sibling=find_sibling)
    runner.announce_plan()
    summary = runner.summary
    summary["world_size"] = distributed.world_size()  # processes training each phase together (torchrun)
    summary["effective_batch"] = config.train.batch_size  # images per step over all of them
    teachers = []
    for index in range(len(config.all_teachers)):  # each stays in memory for the student
        teacher = runner.prepare_teacher(index)
        if teacher is None:
            return _ended(summary, started, cancelled=True)
        teachers.append(teacher)
    summary["teachers"] = teachers_record(config, summary)
    distilled_from = runner.record_ensemble(teachers)
    summary["student_train_size"] = len(runner.s_data.train)
    for phase in runner.phases[len(teachers):]:
        if runner.prepare_student(phase, teachers) is None:
            return _ended(summary, started, cancelled=True)
        if phase == STUDENT:
            summary["test_agreement"] = runner.agreement(STUDENT, distilled_from)
    summary.update(closing_statistics(summary, runner.test_logits, runner.t_phases))
    _ended(summary, started, cancelled=False)
    callback(Event("summary", info=summary))
    return summary


def given_sources(config: RunConfig, teacher_sources: Sequence[Optional[Path | Reused]]) -> list[Optional[Reused]]:
    """Per teacher, the weights it starts from: as given (a path or a Reused), else its own checkpoint."""
    sources = [Reused(Path(s)) if isinstance(s, (str, Path)) else s for s in teacher_sources]
    sources += [None] * (len(config.all_teachers) - len(sources))
    for i, t_cfg in enumerate(config.all_teachers):
        if sources[i] is None and t_cfg.source == "checkpoint":
            sources[i] = Reused(Path(t_cfg.checkpoint).expanduser())
    return sources


def _ended(summary: dict, started: float, *, cancelled: bool) -> dict:
    summary["cancelled"] = cancelled
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return summary
