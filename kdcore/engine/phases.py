"""The phases of one run, one after another: each teacher, the student, the scratch baseline.

A phase is trained here, adopted (a sibling's finished phase or a teacher's source, as loaded),
fine-tuned, or resumed: a run resumed after an interruption takes its finished phases as they are
and goes on with the unfinished one from its last epoch's saved state.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from kdcore.config import AugmentConfig, RunConfig, TrainConfig
from kdcore.data import DatasetError, DataSplits, load_dataset, make_loader
from kdcore.data.splitting import SPLIT_SEED, stratified_split
from kdcore.engine.checkpoint import load_model_from_checkpoint, load_pretrained, save_checkpoint, save_whole
from kdcore.engine.device import fast_path
from kdcore.engine.events import Callback, Event
from kdcore.engine.exported import OnnxTeacher, load_exported_teacher
from kdcore.engine.finetune import fine_tuned, last_stage_only
from kdcore.engine.finished import read_finished, write_finished
from kdcore.engine.rng import global_rng_lock
from kdcore.engine.sources import Reused, SiblingFinder, baseline_key, teacher_key, teacher_seed
from kdcore.engine.summary import opening_summary, phase_profile
from kdcore.engine.trainer import FitResult, accuracy, fit, freeze_early_layers, predict_logits
from kdcore.losses import ensemble_logits
from kdcore.models import create_model
from kdcore.record.folder import RunFolder
from kdcore.record.phases import BASELINE, STUDENT, TEACHER, teacher_phase

ENSEMBLE = "ensemble"  # the teachers' combined test logits, beside each phase's


def load_run_data(config: RunConfig) -> DataSplits:
    """The run's dataset, refused when splitting left no training or test images."""
    data = load_dataset(config.dataset)
    for split in ("train", "test"):
        if len(getattr(data, split)) == 0:
            raise DatasetError(f"dataset {config.dataset.name!r} has no {split} images after splitting; add images "
                               "or lower dataset.val_fraction")
    return data


def student_data(data: DataSplits, fraction: float) -> DataSplits:
    """The splits the student and its baseline learn from: a fixed stratified share of train."""
    if fraction >= 1.0:
        return data
    _, chosen = stratified_split(data.train.y, fraction, SPLIT_SEED)
    if len(chosen) == 0:
        raise DatasetError(f"dataset.student_fraction {fraction:g} leaves the student no training images")
    return replace(data, train=data.train.subset(chosen))


def build_model(arch: str, options: dict, data: DataSplits, seed: int, pretrained=None) -> nn.Module:
    with global_rng_lock, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the student and its baseline start from the same weights
        return create_model(arch, num_classes=data.num_classes, in_channels=data.in_channels,
                            image_size=data.image_size, pretrained=pretrained, **options)


class PhaseRunner:
    """Takes a run's phases through: trains, adopts, fine-tunes or resumes each, and records it.

    `summary` and `test_logits` fill as phases finish; the test logits are saved after each.
    """

    def __init__(self, config: RunConfig, run_dir: Path, data: DataSplits, *, device: torch.device,
                 callback: Callback, should_stop: Callable[[], bool], teacher_sources: Sequence[Optional[Reused]],
                 find_sibling: SiblingFinder):
        self.config, self.folder, self.data, self.device = config, RunFolder(run_dir), data, device
        self.callback, self.should_stop, self.find_sibling = callback, should_stop, find_sibling
        self.sources = list(teacher_sources)
        self.t_cfgs = config.all_teachers
        self.t_phases = [teacher_phase(i) for i in range(len(self.t_cfgs))]
        self.path = fast_path(device, config.train)
        self.shape = dict(num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size)
        self.summary = opening_summary(config, data, device, self.path)
        self.test_logits: dict[str, torch.Tensor] = {"labels": data.test.y.clone()}
        # the test split goes to the device once per run, not once per evaluation
        self.test_loader = make_loader(data.test, self.path.eval_batch(config.train.eval_batch_size), shuffle=False,
                                       device=device, channels_last=self.path.channels_last)
        self.s_data = student_data(data, config.dataset.student_fraction)
        self.phases = self.t_phases + [STUDENT] + ([BASELINE] if config.baseline else [])
        self.finished = read_finished(run_dir)

    # ---- what is there to do ----------------------------------------------------------------
    def sibling_teacher(self, index: int) -> Optional[Reused]:
        if self.t_cfgs[index].source != "train" and not fine_tuned(self.t_cfgs[index]):
            return None  # used as loaded: nothing to train, nothing to share
        return self.find_sibling(self.t_phases[index], teacher_key(self.config, index))

    def sibling_baseline(self) -> Optional[Reused]:
        return self.find_sibling(BASELINE, baseline_key(self.config))

    def announce_plan(self) -> None:
        """The steps each phase will take at most, so a UI can estimate the whole run's time left."""
        config = self.config
        batches = lambda n, size=config.train.batch_size: -(-n // size)  # noqa: E731

        def teacher_steps(index: int) -> int:
            t_cfg = self.t_cfgs[index]
            epochs = t_cfg.epochs if t_cfg.source == "train" else t_cfg.finetune_epochs
            trained_here = self.t_phases[index] not in self.finished and self.sibling_teacher(index) is None
            return epochs * batches(len(self.data.train), config.teacher_train(index).batch_size) if trained_here else 0

        steps = {phase: teacher_steps(i) for i, phase in enumerate(self.t_phases)}
        steps[STUDENT] = config.train.epochs * batches(len(self.s_data.train))
        baseline_here = config.baseline and BASELINE not in self.finished and self.sibling_baseline() is None
        steps[BASELINE] = steps[STUDENT] if baseline_here else 0
        self.callback(Event("plan", info={"phases": self.phases, "steps": steps}))

    # ---- one phase ----------------------------------------------------------------------------
    def resume(self, phase: str, arch: str, options: dict) -> Optional[nn.Module]:
        """The phase as an earlier attempt of this run finished it, recorded again; None when it did not."""
        weights = self.folder.weights(phase)
        if phase not in self.finished or not weights.is_file():
            return None
        model = load_model_from_checkpoint(weights, arch=arch, options=options or None, **self.shape)
        self.summary.update({k: v for k, v in self.finished[phase].items() if k.startswith(f"{phase}_")})
        self.callback(Event("phase", phase=phase, info={"loaded": "this run's earlier attempt"}))
        model.to(self.device).eval()
        self.finish(phase, model)
        return model

    def train(self, phase: str, model: nn.Module, data: DataSplits, epochs: int, arch: str, options: dict,
              seed: int, train_cfg: Optional[TrainConfig] = None, augment: Optional[AugmentConfig] = None,
              **distill) -> bool:
        """Trains `model` as `phase` and records it; False when cancelled. Settings default to the run's own."""
        train_cfg = self.config.train if train_cfg is None else train_cfg
        augment = self.config.dataset.augment if augment is None else augment

        def save(tag: str, trained: nn.Module) -> None:
            save_checkpoint(self.folder.weights(phase, last=tag != "best"), trained, arch=arch, options=options,
                            **self.shape)

        result = fit(model, data, phase=phase, epochs=epochs, train_cfg=train_cfg,
                     device=self.device, augment=augment, callback=self.callback,
                     should_stop=self.should_stop, on_checkpoint=save, seed=seed,
                     state_path=self.folder.state(phase), **distill)
        if result.cancelled:
            return False
        model.to(self.device).eval()
        self.finish(phase, model, result)
        self.record_finished(phase)
        return True

    def adopt(self, phase: str, model: nn.Module, arch: str, options: dict, origin: Reused) -> nn.Module:
        """Weights trained elsewhere (a sibling's phase, a teacher's source) as this run's phase, kept and recorded."""
        save_checkpoint(self.folder.weights(phase), model, arch=arch, options=options, **self.shape)
        theirs = origin.phase or phase
        for key in ("best_val_acc", "epochs"):  # the validation figures of the run that trained them
            if f"{theirs}_{key}" in origin.summary:
                self.summary[f"{phase}_{key}"] = origin.summary[f"{theirs}_{key}"]
        if origin.run_id is not None:
            self.summary[f"{phase}_from_run"] = origin.run_id
        self.callback(Event("phase", phase=phase, info={"loaded": origin.described()}))
        model.to(self.device).eval()
        self.finish(phase, model)
        return model

    def finish(self, phase: str, model: nn.Module, result: Optional[FitResult] = None) -> None:
        """Records the phase's test logits, accuracy, training figures, size and latency."""
        logits = predict_logits(self.path.format_model(model), self.test_loader, self.device, path=self.path)
        self.test_logits[phase] = logits.cpu()  # the one host copy: what the run keeps
        self.summary[f"{phase}_test_acc"] = accuracy(logits, self.test_loader.labels)  # labels on the device once
        if result is not None:
            self.summary[f"{phase}_best_val_acc"] = result.best_val_acc
            self.summary[f"{phase}_epochs"] = result.epochs_run
            self.summary[f"{phase}_seconds"] = round(result.seconds, 2)
            if result.threads_lowered:  # other processes took cores: this phase's time is not comparable
                self.summary[f"{phase}_threads_lowered"] = result.threads_lowered
            if result.compiled != "off":  # asked for: what ran, as fast_path.compile says only what was asked
                self.summary[f"{phase}_compile"] = result.compiled
            if result.teacher_pass:
                self.summary[f"{phase}_teacher_pass"] = result.teacher_pass
        self.summary.update(phase_profile(phase, model, self.data))
        self.save_test_logits()

    def record_finished(self, phase: str) -> None:
        """Keeps what the phase reported for a resumed run, and drops its resume state."""
        self.finished[phase] = {k: v for k, v in self.summary.items() if k.startswith(f"{phase}_")}
        write_finished(self.folder.path, self.finished)
        self.folder.state(phase).unlink(missing_ok=True)

    def save_test_logits(self) -> None:
        save_whole(self.test_logits, self.folder.test_logits)  # the Distributions page may be reading it

    def test_accuracy(self, model: nn.Module) -> float:
        logits = predict_logits(self.path.format_model(model), self.test_loader, self.device, path=self.path)
        return accuracy(logits, self.test_loader.labels)

    # ---- teachers -----------------------------------------------------------------------------
    def prepare_teacher(self, index: int) -> Optional[nn.Module]:
        """The index-th teacher, trained, loaded or fine-tuned, and recorded; None when cancelled."""
        t_cfg, phase, seed = self.t_cfgs[index], self.t_phases[index], teacher_seed(self.config, index)
        if t_cfg.train:  # settings of its own, shown beside its accuracy
            self.summary[f"{phase}_train"] = dict(t_cfg.train)
        if t_cfg.augment is not None:
            self.summary[f"{phase}_augment"] = t_cfg.augment.model_dump(mode="json")
        if t_cfg.source == "exported":
            return self.exported_teacher(index)
        earlier = self.resume(phase, t_cfg.arch, t_cfg.options)
        if earlier is not None:
            return earlier
        sibling = self.sibling_teacher(index)
        if sibling is not None:
            model, _, options = load_pretrained(sibling.checkpoint, arch=t_cfg.arch, options=t_cfg.options or None,
                                                **self.shape)
            return self.adopt(phase, model, t_cfg.arch, options, sibling)
        own = dict(train_cfg=self.config.teacher_train(index), augment=self.config.teacher_augment(index))
        if t_cfg.source == "train":
            model = build_model(t_cfg.arch, t_cfg.options, self.data, seed, t_cfg.pretrained)
            trained = self.train(phase, model, self.data, t_cfg.epochs, t_cfg.arch, t_cfg.options, seed, **own)
            return model if trained else None
        source = self.sources[index]
        if source is None:
            raise ValueError(f"{phase}: source is {t_cfg.source!r} but no weights were given for it")
        # a new classifier, when the file's is for other classes, starts from the teacher's seed on every try
        model, new_head, options = load_pretrained(source.checkpoint, arch=t_cfg.arch, options=t_cfg.options or None,
                                                   new_head=fine_tuned(t_cfg), seed=seed, **self.shape)
        if not fine_tuned(t_cfg):
            return self.adopt(phase, model, t_cfg.arch, options, source)
        return self.fine_tune(index, model, new_head, options, source)

    def exported_teacher(self, index: int) -> nn.Module:
        """A frozen teacher from a .pt2 or .onnx file, evaluated and recorded as any teacher. No weights file is
        kept for it (it has no kdcore arch to rebuild it from): a resumed run reads its file again."""
        t_cfg, phase = self.t_cfgs[index], self.t_phases[index]
        path = Path(t_cfg.checkpoint).expanduser()
        model = load_exported_teacher(path, self.device, dataset=self.config.dataset.name, **self.shape)
        self.callback(Event("phase", phase=phase, info={"loaded": str(path)}))
        self.finish(phase, model)
        # its parameters as the file holds them (an ONNX model's initializers are no torch parameters)
        self.summary[f"{phase}_params"] = model.file_params
        self.summary[f"{phase}_size_mb"] = round(path.stat().st_size / 2**20, 4)
        if isinstance(model, OnnxTeacher):  # onnxruntime's work is invisible to PyTorch's FLOP counter
            for key in ("flops", "macs"):
                self.summary.pop(f"{phase}_{key}", None)
        return model

    def fine_tune(self, index: int, model: nn.Module, new_head: bool, options: dict,
                  source: Reused) -> Optional[nn.Module]:
        """Transfer: a loaded teacher fine-tuned on this dataset's whole training split, as any phase
        (resumable, best epoch kept); None when cancelled."""
        t_cfg, phase = self.t_cfgs[index], self.t_phases[index]
        self.summary[f"{phase}_pretrained_test_acc"] = self.test_accuracy(model.to(self.device))  # chance with a new head
        self.summary[f"{phase}_finetune_epochs"] = t_cfg.finetune_epochs
        self.summary[f"{phase}_new_head"] = new_head
        self.summary[f"{phase}_finetuned_from"] = source.described()
        sample = lambda: self.data.train.images(range(2)).to(self.device)  # noqa: E731
        with last_stage_only(model, sample, self.data.num_classes, enabled=t_cfg.finetune_last_stage_only):
            done = self.train(phase, model, self.data, t_cfg.finetune_epochs, t_cfg.arch, options,
                              teacher_seed(self.config, index), train_cfg=self.config.teacher_train(index),
                              augment=self.config.teacher_augment(index))
        return model if done else None

    # ---- the student and its baseline ---------------------------------------------------------
    def prepare_student(self, phase: str, teachers: list[nn.Module]) -> Optional[nn.Module]:
        """The student (distilled from `teachers`) or the baseline (from scratch), recorded; None when cancelled.

        Both start from the same weights and see the same images in the same order.
        """
        s_cfg = self.config.student
        earlier = self.resume(phase, s_cfg.arch, s_cfg.options)
        if earlier is not None:
            return earlier
        sibling = self.sibling_baseline() if phase == BASELINE else None
        if sibling is not None:
            model = load_model_from_checkpoint(sibling.checkpoint, arch=s_cfg.arch, options=s_cfg.options or None,
                                               **self.shape)
            return self.adopt(phase, model, s_cfg.arch, s_cfg.options, sibling)
        model = self.new_student()
        freeze_early_layers(model, s_cfg.freeze_fraction)
        distill = dict(teachers=teachers, distill_cfg=self.config.distill) if phase == STUDENT else {}
        trained = self.train(phase, model, self.s_data, self.config.train.epochs, s_cfg.arch, s_cfg.options,
                             self.config.train.seed, **distill)
        return model if trained else None

    def new_student(self) -> nn.Module:
        s_cfg = self.config.student
        seed = self.config.train.seed + 1  # the student and its baseline start from the same weights
        if not s_cfg.checkpoint:
            return build_model(s_cfg.arch, s_cfg.options, self.data, seed, s_cfg.pretrained)
        start = load_pretrained(Path(s_cfg.checkpoint).expanduser(), arch=s_cfg.arch, options=dict(s_cfg.options),
                                new_head=True, role="student", seed=seed, **self.shape)
        self.summary["student_init"] = Path(s_cfg.checkpoint).name
        self.summary["student_init_new_head"] = start.new_head
        return start.model

    # ---- between the phases -------------------------------------------------------------------
    def record_ensemble(self, teachers: list[nn.Module]) -> str:
        """With several teachers, their weighted ensemble's test logits and accuracy; returns what the
        student is distilled from (teacher or ensemble), for its agreement."""
        if len(teachers) <= 1:
            return TEACHER
        weights = self.config.distill.teacher_weights or [1.0] * len(teachers)
        self.summary["teacher_weights"] = [w / sum(weights) for w in weights]
        self.test_logits[ENSEMBLE] = ensemble_logits([self.test_logits[p] for p in self.t_phases], weights,
                                                     self.config.distill.temperature)
        self.summary["ensemble_test_acc"] = accuracy(self.test_logits[ENSEMBLE], self.data.test.y)
        self.save_test_logits()
        return ENSEMBLE

    def agreement(self, phase: str, other: str) -> float:
        """The share of test images on which the two phases predict the same class."""
        preds = self.test_logits[phase].argmax(1)
        return (preds == self.test_logits[other].argmax(1)).float().mean().item()
