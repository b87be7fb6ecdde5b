"""A whole distillation run: its teachers, then the student, then the scratch baseline.

Each teacher is trained here, loaded from a stored run or a checkpoint, or loaded and
fine-tuned on this run's dataset (transfer learning); several teachers are distilled
together as one ensemble. Phases are named teacher, teacher2, teacher3, …, student,
baseline; each keeps its own weights file, resume state and finished-phase record.
"""
from __future__ import annotations

import errno
import hashlib
import json
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from kdcore.config import RunConfig, TeacherConfig
from kdcore.data import DatasetError, DataSplits, load_dataset, make_loader
from kdcore.data.splitting import SPLIT_SEED, stratified_split
from kdcore.engine.checkpoint import (classifier_head, load_model_from_checkpoint, load_pretrained, no_space,
                                     save_checkpoint, save_whole)
from kdcore.engine.cpu_watch import threads_wait
from kdcore.engine.device import describe_device, fast_path, resolve_device
from kdcore.engine.events import Callback, Event, no_callback
from kdcore.engine.rng import global_rng_lock
from kdcore.engine.trainer import accuracy, fit, freeze_early_layers, predict_logits
from kdcore.latency import cpu_model, phase_latency
from kdcore.losses import ensemble_logits
from kdcore.models import create_model, profile_model
from kdcore.models.stages import feature_stages
from kdcore.stats import paired_gain

TEST_LOGITS_FILE = "test_logits.pt"
FINISHED_FILE = "finished_phases.json"  # what each finished phase reported, for a resumed run
STATE_SUFFIX = "_state.pt"  # a phase's whole training state at its last finished epoch
TEACHER_PHASE = re.compile(r"teacher\d*")  # teacher, teacher2, teacher3, …


def teacher_phase(index: int) -> str:
    """The phase (and weights file stem) of the index-th teacher, 0-based: teacher, teacher2, teacher3, …"""
    return "teacher" if index == 0 else f"teacher{index + 1}"


def teacher_seed(config: RunConfig, index: int = 0) -> int:
    """Seed of the index-th teacher's training or fine-tuning: its own seed, else train.seed."""
    seed = config.all_teachers[index].seed
    return config.train.seed if seed is None else seed


def fine_tuned(teacher: TeacherConfig) -> bool:
    return teacher.source != "train" and teacher.finetune_epochs > 0


def read_finished(run_dir: Path) -> dict:
    """What each phase a run finished reported ({phase: {phase_key: ..., phase_test_acc: ...}}); {} when none."""
    try:
        return json.loads((run_dir / FINISHED_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _write_finished(run_dir: Path, finished: dict) -> None:
    tmp = run_dir / (FINISHED_FILE + ".tmp")
    try:
        tmp.write_text(json.dumps(finished, default=float))
        tmp.replace(run_dir / FINISHED_FILE)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno == errno.ENOSPC:
            raise no_space(run_dir) from None
        raise


def _build(arch: str, options: dict, data: DataSplits, seed: int) -> nn.Module:
    with global_rng_lock, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the student and its baseline start from the same weights
        return create_model(arch, num_classes=data.num_classes, in_channels=data.in_channels,
                            image_size=data.image_size, **options)


@dataclass
class Reused:
    """A phase's weights taken from elsewhere: a sibling's finished phase, or a teacher's source.

    Attributes:
        checkpoint: the weights file.
        run_id: the stored run that trained them, if any (a seed group's or sweep's sibling).
        summary: that run's summary, whose validation figures for the phase are carried over.
        phase: the phase's name in that summary, when it differs from ours (run 3's "teacher" as our "teacher2").
    """

    checkpoint: Path
    run_id: Optional[int] = None
    summary: dict = field(default_factory=dict)
    phase: Optional[str] = None


def teacher_key(config: RunConfig, index: int = 0) -> str:
    """Equal for two configs exactly when their index-th teachers would end with the same weights."""
    t = config.all_teachers[index]
    train = config.teacher_train(index).model_dump(mode="json", exclude={"epochs", "seed"})
    dataset = config.dataset.model_dump(mode="json", exclude={"student_fraction"})
    dataset["augment"] = config.teacher_augment(index).model_dump(mode="json")  # dataset.augment unless its own
    if t.source == "train":  # the fields of the key before several teachers and fine-tuning: old runs still match
        teacher = t.model_dump(mode="json", include={"arch", "options", "epochs"})
    else:
        teacher = t.model_dump(mode="json", include={"arch", "options", "source", "run_id", "checkpoint",
                                                     "finetune_epochs", "finetune_last_stage_only"})
    return _digest(dict(dataset=dataset, teacher=teacher, seed=teacher_seed(config, index), train=train))


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


def execute_run(
    config: RunConfig,
    run_dir: Path,
    *,
    callback: Callback = no_callback,
    should_stop: Callable[[], bool] = lambda: False,
    device: Optional[torch.device] = None,
    teacher_sources: Sequence[Optional[Path | Reused]] = (),
    find_sibling: Callable[[str, str], Optional[Reused]] = lambda phase, key: None,
) -> dict:
    """Runs every phase of `config`, saving weights and test logits under `run_dir`.

    Args:
        teacher_sources: per teacher, in order, the weights a teacher with source "run" or
            "checkpoint" starts from (loaded as they are, or fine-tuned); the job layer resolves a
            stored run to its file. A missing entry for source "checkpoint" is its teacher.checkpoint.
        find_sibling: `(phase, key) -> Reused or None`: a sibling run's finished phase that trained to
            the weights this run's phase would (the same teacher_key or baseline_key), used instead of
            training it again. Asked just before the phase would train, so a sibling that finished it
            meanwhile counts.

    Returns:
        The summary: test accuracies, KD gain with its paired interval and p-value,
        sizes, and whether the run was cancelled. Per teacher phase P (teacher, teacher2, …):
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
    t_cfgs = config.all_teachers
    t_phases = [teacher_phase(i) for i in range(len(t_cfgs))]
    as_reused = lambda r: Reused(Path(r)) if isinstance(r, (str, Path)) else r  # noqa: E731
    sources = [as_reused(r) for r in teacher_sources] + [None] * (len(t_cfgs) - len(teacher_sources))

    def sibling_teacher(index: int) -> Optional[Reused]:
        if t_cfgs[index].source != "train" and not fine_tuned(t_cfgs[index]):
            return None  # used as loaded: nothing to train, nothing to share
        return find_sibling(t_phases[index], teacher_key(config, index))

    def sibling_baseline() -> Optional[Reused]:
        return find_sibling("baseline", baseline_key(config))

    for i, t_cfg in enumerate(t_cfgs):
        if sources[i] is None and t_cfg.source == "checkpoint":
            sources[i] = Reused(Path(t_cfg.checkpoint).expanduser())
    run_dir.mkdir(parents=True, exist_ok=True)
    data = load_dataset(config.dataset)
    for split in ("train", "test"):
        if len(getattr(data, split)) == 0:
            raise DatasetError(f"dataset {config.dataset.name!r} has no {split} images after splitting; add images "
                               "or lower dataset.val_fraction")
    shape = dict(num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size)
    path = fast_path(device, config.train)
    # bf16 and fp32 runs may share one runs table: say how this one was trained and evaluated
    summary: dict = {"device": describe_device(device), "eval_precision": path.precision,
                     "fast_path": path.describe(),
                     "num_classes": data.num_classes,
                     **({"cpu_threads_wait": threads_wait()} if device.type == "cpu" else {}),
                     "train_size": len(data.train), "val_size": len(data.val), "test_size": len(data.test)}
    summary.update({f"{phase}_key": teacher_key(config, i) for i, phase in enumerate(t_phases)})
    summary["baseline_key"] = baseline_key(config)
    test_logits: dict[str, torch.Tensor] = {"labels": data.test.y.clone()}

    def saver(phase: str, arch: str, options: dict):
        def save(tag: str, model: nn.Module) -> None:
            name = f"{phase}.pt" if tag == "best" else f"{phase}_last.pt"
            save_checkpoint(run_dir / name, model, arch=arch, options=options, **shape)
        return save

    def save_test_logits() -> None:
        save_whole(test_logits, run_dir / TEST_LOGITS_FILE)  # the Distributions page may be reading it

    # the test split goes to the device once per run, not once per evaluation
    test_loader = make_loader(data.test, config.train.eval_batch_size, shuffle=False, device=device,
                              channels_last=path.channels_last)

    def test_accuracy(model: nn.Module) -> float:
        return accuracy(predict_logits(path.format_model(model), test_loader, device, path=path), data.test.y)

    def finish_phase(phase: str, model: nn.Module, result=None) -> None:
        logits = predict_logits(path.format_model(model), test_loader, device, path=path)
        test_logits[phase] = logits.cpu()
        summary[f"{phase}_test_acc"] = accuracy(logits, data.test.y)
        if result is not None:
            summary[f"{phase}_best_val_acc"] = result.best_val_acc
            summary[f"{phase}_epochs"] = result.epochs_run
            summary[f"{phase}_seconds"] = round(result.seconds, 2)
            if result.threads_lowered:  # other processes took cores: this phase's time is not comparable
                summary[f"{phase}_threads_lowered"] = result.threads_lowered
        profile = profile_model(model, data.in_channels, data.image_size)
        summary[f"{phase}_params"] = profile.params
        summary[f"{phase}_size_mb"] = round(profile.size_mb, 4)
        summary[f"{phase}_flops"] = profile.flops
        summary[f"{phase}_macs"] = profile.macs
        # PyTorch latency on the training device, a fraction of a second for the zoo's small models;
        # zero images, no random draws, so the run's RNG state and results are untouched
        latency = phase_latency(model, (data.in_channels, data.image_size, data.image_size), (1, 64))
        summary[f"{phase}_latency_ms_b1"] = round(latency[1], 4)
        summary[f"{phase}_latency_ms_b64"] = round(latency[64], 4)
        summary["latency_threads"] = torch.get_num_threads()
        summary["latency_cpu"] = cpu_model()
        save_test_logits()

    def cancelled() -> dict:
        summary["cancelled"] = True
        summary["seconds"] = round(time.perf_counter() - started, 2)
        return summary

    def carry_over(phase: str, source: Reused) -> None:
        theirs = source.phase or phase
        for key in ("best_val_acc", "epochs"):
            if f"{theirs}_{key}" in source.summary:
                summary[f"{phase}_{key}"] = source.summary[f"{theirs}_{key}"]
        if source.run_id is not None:
            summary[f"{phase}_from_run"] = source.run_id

    def described(source: Reused) -> str:
        return f"run {source.run_id}" if source.run_id is not None else str(source.checkpoint)

    # The steps each phase will take at most, so a UI can estimate the whole run's time left
    s_data = student_data(data, config.dataset.student_fraction)
    batches = lambda n: -(-n // config.train.batch_size)  # noqa: E731
    phases = t_phases + ["student"] + (["baseline"] if config.baseline else [])
    finished = read_finished(run_dir)

    def teacher_steps(index: int) -> int:
        t_cfg = t_cfgs[index]
        epochs = t_cfg.epochs if t_cfg.source == "train" else t_cfg.finetune_epochs
        trained_here = t_phases[index] not in finished and sibling_teacher(index) is None
        return epochs * -(-len(data.train) // config.teacher_train(index).batch_size) if trained_here else 0

    callback(Event("plan", info={"phases": phases, "steps": {
        **{phase: teacher_steps(i) for i, phase in enumerate(t_phases)},
        "student": config.train.epochs * batches(len(s_data.train)),
        "baseline": config.train.epochs * batches(len(s_data.train))
        if config.baseline and "baseline" not in finished and sibling_baseline() is None else 0}}))

    # A run resumed after an interruption takes its finished phases as they are and goes on with
    # the unfinished one from its last epoch's saved state.
    def done_earlier(phase: str, arch: str, options: dict) -> Optional[nn.Module]:
        if phase not in finished or not (run_dir / f"{phase}.pt").is_file():
            return None
        model = load_model_from_checkpoint(run_dir / f"{phase}.pt", arch=arch, options=options or None, **shape)
        summary.update({k: v for k, v in finished[phase].items() if k.startswith(f"{phase}_")})
        callback(Event("phase", phase=phase, info={"loaded": "this run's earlier attempt"}))
        return model.to(device).eval()

    def phase_finished(phase: str) -> None:
        finished[phase] = {k: v for k, v in summary.items() if k.startswith(f"{phase}_")}
        _write_finished(run_dir, finished)
        (run_dir / f"{phase}{STATE_SUFFIX}").unlink(missing_ok=True)

    def train_phase(phase: str, model: nn.Module, phase_data: DataSplits, epochs: int, arch: str, options: dict,
                    seed: int, train_cfg=config.train, augment=config.dataset.augment, **distill) -> bool:
        """Trains `model` as `phase` and records it; False when cancelled."""
        result = fit(model, phase_data, phase=phase, epochs=epochs, train_cfg=train_cfg, device=device,
                     augment=augment, callback=callback, should_stop=should_stop,
                     on_checkpoint=saver(phase, arch, options), seed=seed,
                     state_path=run_dir / f"{phase}{STATE_SUFFIX}", **distill)
        if result.cancelled:
            return False
        model.to(device).eval()
        finish_phase(phase, model, result)
        phase_finished(phase)
        return True

    # Teachers, one after another; each stays in memory for the student
    def prepare_teacher(index: int) -> Optional[nn.Module]:
        """The index-th teacher, trained, loaded or fine-tuned, and recorded; None when cancelled."""
        t_cfg, phase, seed = t_cfgs[index], t_phases[index], teacher_seed(config, index)
        own = dict(train_cfg=config.teacher_train(index), augment=config.teacher_augment(index))
        if t_cfg.train:  # settings of its own, shown beside its accuracy
            summary[f"{phase}_train"] = dict(t_cfg.train)
        if t_cfg.augment is not None:
            summary[f"{phase}_augment"] = t_cfg.augment.model_dump(mode="json")
        earlier = done_earlier(phase, t_cfg.arch, t_cfg.options)
        if earlier is not None:
            finish_phase(phase, earlier)
            return earlier
        def adopt(model: nn.Module, options: dict, origin: Reused) -> nn.Module:
            """A teacher used as loaded: kept in this run's folder and recorded."""
            save_checkpoint(run_dir / f"{phase}.pt", model, arch=t_cfg.arch, options=options, **shape)
            carry_over(phase, origin)
            callback(Event("phase", phase=phase, info={"loaded": described(origin)}))
            model.to(device).eval()
            finish_phase(phase, model)
            return model

        sibling = sibling_teacher(index)
        if sibling is not None:
            model, _, options = load_pretrained(sibling.checkpoint, arch=t_cfg.arch, options=t_cfg.options or None,
                                                **shape)
            return adopt(model, options, sibling)
        if t_cfg.source == "train":
            model = _build(t_cfg.arch, t_cfg.options, data, seed)
            return model if train_phase(phase, model, data, t_cfg.epochs, t_cfg.arch, t_cfg.options, seed, **own) else None

        source = sources[index]
        if source is None:
            raise ValueError(f"{phase}: source is {t_cfg.source!r} but no weights were given for it")
        # a new classifier, when the file's is for other classes, starts from the teacher's seed on every try
        model, new_head, options = load_pretrained(source.checkpoint, arch=t_cfg.arch, options=t_cfg.options or None,
                                                   new_head=fine_tuned(t_cfg), seed=seed, **shape)
        if not fine_tuned(t_cfg):
            return adopt(model, options, source)
        # Transfer: fine-tuned on this dataset's whole training split, as any phase (resumable, best epoch kept)
        summary[f"{phase}_pretrained_test_acc"] = test_accuracy(model.to(device))  # chance level with a new head
        summary[f"{phase}_finetune_epochs"] = t_cfg.finetune_epochs
        summary[f"{phase}_new_head"] = new_head
        summary[f"{phase}_finetuned_from"] = described(source)
        hooks = (freeze_all_but_last_stage(model, data.train.images(range(2)).to(device), data.num_classes)
                 if t_cfg.finetune_last_stage_only else [])
        try:
            done = train_phase(phase, model, data, t_cfg.finetune_epochs, t_cfg.arch, options, seed, **own)
        finally:
            for hook in hooks:
                hook.remove()
        return model if done else None

    teachers: list[nn.Module] = []
    for index in range(len(t_cfgs)):
        teacher = prepare_teacher(index)
        if teacher is None:
            return cancelled()
        teachers.append(teacher)
    summary["teachers"] = [
        {"phase": phase, "arch": t_cfg.arch, "source": t_cfg.source, "test_acc": summary[f"{phase}_test_acc"],
         "params": summary[f"{phase}_params"], "pretrained_test_acc": summary.get(f"{phase}_pretrained_test_acc"),
         "finetune_epochs": t_cfg.finetune_epochs if fine_tuned(t_cfg) else 0}
        for phase, t_cfg in zip(t_phases, t_cfgs)]
    distilled_from = "teacher"  # what the student's agreement is measured against
    if len(teachers) > 1:
        weights = config.distill.teacher_weights or [1.0] * len(teachers)
        summary["teacher_weights"] = [w / sum(weights) for w in weights]
        test_logits["ensemble"] = ensemble_logits([test_logits[p] for p in t_phases], weights,
                                                  config.distill.temperature)
        summary["ensemble_test_acc"] = accuracy(test_logits["ensemble"], data.test.y)
        save_test_logits()
        distilled_from = "ensemble"

    # Student (distilled), then the same student from scratch, on the same images in the same order
    s_cfg = config.student
    summary["student_train_size"] = len(s_data.train)

    def new_student() -> nn.Module:
        seed = config.train.seed + 1  # the student and its baseline start from the same weights
        if not s_cfg.checkpoint:
            return _build(s_cfg.arch, s_cfg.options, data, seed)
        start = load_pretrained(Path(s_cfg.checkpoint).expanduser(), arch=s_cfg.arch, options=dict(s_cfg.options),
                                new_head=True, role="student", seed=seed, **shape)
        summary["student_init"] = Path(s_cfg.checkpoint).name
        summary["student_init_new_head"] = start.new_head
        return start.model

    for phase in phases[len(t_phases):]:
        student = done_earlier(phase, s_cfg.arch, s_cfg.options)
        reuse_baseline = sibling_baseline() if student is None and phase == "baseline" else None
        if student is not None:
            finish_phase(phase, student)
        elif reuse_baseline is not None:
            student = load_model_from_checkpoint(reuse_baseline.checkpoint, arch=s_cfg.arch,
                                                 options=s_cfg.options or None, **shape)
            save_checkpoint(run_dir / "baseline.pt", student, arch=s_cfg.arch, options=s_cfg.options, **shape)
            carry_over("baseline", reuse_baseline)
            callback(Event("phase", phase="baseline", info={"loaded": f"run {reuse_baseline.run_id}"}))
            student.to(device).eval()
            finish_phase(phase, student)
        else:
            student = new_student()
            freeze_early_layers(student, s_cfg.freeze_fraction)
            distill = dict(teachers=teachers, distill_cfg=config.distill) if phase == "student" else {}
            if not train_phase(phase, student, s_data, config.train.epochs, s_cfg.arch, s_cfg.options,
                               config.train.seed, **distill):
                return cancelled()
        if phase == "student":
            preds = test_logits["student"].argmax(1)
            summary["test_agreement"] = (preds == test_logits[distilled_from].argmax(1)).float().mean().item()

    if "baseline_test_acc" in summary:
        labels = test_logits["labels"]
        paired = paired_gain((test_logits["student"].argmax(1) == labels).numpy(),
                             (test_logits["baseline"].argmax(1) == labels).numpy())
        summary.update(paired.as_summary())
    # the ensemble is what is compressed into the student
    summary["compression"] = sum(summary[f"{p}_params"] for p in t_phases) / max(1, summary["student_params"])
    summary["flops_ratio"] = sum(summary[f"{p}_flops"] for p in t_phases) / max(1, summary["student_flops"])
    summary["cancelled"] = False
    summary["seconds"] = round(time.perf_counter() - started, 2)
    callback(Event("summary", info=summary))
    return summary
