"""One training loop for three jobs: a teacher, a distilled student, a scratch baseline.

Metrics stay on the device as running sums and are read only at reporting
points, so a step never waits on the host.
"""
from __future__ import annotations

import copy
import functools
import math
import operator
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdcore.config import DistillConfig, TrainConfig
from kdcore.data import BatchLoader, DataSplits, Split, make_loader
from kdcore.engine import distributed
from kdcore.engine.compiled import CompiledStep, restorable_state, restore_state
from kdcore.engine.exported import ExportedTeacher
from kdcore.engine.cpu_watch import CpuWatch
from kdcore.engine.device import FastPath, fast_path, prepare_device
from kdcore.engine.events import Callback, Event
from kdcore.engine.fit_state import Progress, load_fit_state, save_fit_state
from kdcore.engine.rng import global_rng_lock
from kdcore.engine.teacher_cache import TeacherLogitCache
from kdcore.models.dropout import use_generator
from kdcore.spans import region
from kdcore.distill import Distiller, build_distiller

REPORTS_PER_EPOCH = 10  # step events per epoch, for the live curves


class TrainingDiverged(RuntimeError):
    """The loss stopped being a finite number."""


@dataclass
class FitResult:
    best_val_acc: float  # fraction in [0, 1]; NaN without a validation split
    best_epoch: int
    epochs_run: int
    cancelled: bool
    seconds: float
    threads_lowered: int = 0  # times the thread policy gave a core back to other processes
    compiled: str = "off"  # whether the student's step ran under torch.compile: its mode, or "off (why)"
    teacher_pass: str = ""  # where the teachers' logit pass timed its two ways: the one it kept, and the times


@contextmanager
def _host_reads(device: torch.device):
    """Marks where the trainer reads metrics to the host (reports, epoch ends): a sync there is meant.

    Under torch.cuda.set_sync_debug_mode("error") any other sync, e.g. one in the step loop, raises.
    """
    if device.type != "cuda":
        yield
        return
    mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(0)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(mode)


def make_optimizer(params, cfg: TrainConfig, fused: bool = False) -> torch.optim.Optimizer:
    kind = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[cfg.optimizer]
    options = {"momentum": cfg.momentum} if cfg.optimizer == "sgd" else {}
    if fused:
        options["fused"] = True
    return kind(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **options)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, epochs: int, steps_per_epoch: int):
    """Stepped once per optimizer step, so short runs still anneal smoothly."""
    total = max(1, epochs * steps_per_epoch)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    if cfg.schedule == "step":
        milestones = [m * steps_per_epoch for m in cfg.milestones]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=cfg.gamma)
    return None


@torch.inference_mode()
def predict_logits(model: nn.Module, split: Split | BatchLoader, device: torch.device, batch_size: int = 1024,
                   path: FastPath | None = None) -> Tensor:
    """(N, K) float32 logits for a whole split, in the split's order, on `device`.

    `split` may be an unshuffled, unaugmented loader already on `device` (its own batch size
    then applies), so repeated evaluations move the split to the device once.
    `path`: the fit's FastPath (bf16 autocast, channels_last batches); None runs plain fp32.
    """
    path = path or FastPath(torch.device(device))
    was_training = model.training
    model.eval()
    out: Optional[Tensor] = None  # the logits are written into one tensor as they come: no copy to join them
    loader = split if isinstance(split, BatchLoader) else make_loader(
        split, batch_size, shuffle=False, device=device, channels_last=path.channels_last)
    start = 0  # batches come in the split's order; a host count, so no batch waits on the device
    for x, _, _ in loader:
        with path.autocast():
            logits = model(x)
        if out is None:
            out = torch.empty(loader.num_samples, logits.shape[1], dtype=torch.float32, device=logits.device)
        out[start:start + len(logits)] = logits
        start += len(logits)
    model.train(was_training)
    return out if out is not None else torch.empty(0, 0, device=device)


def accuracy(logits: Tensor, labels: Tensor) -> float:
    if len(labels) == 0:
        return float("nan")
    return (logits.argmax(1) == labels.to(logits.device)).float().mean().item()


def freeze_early_layers(model: nn.Module, fraction: float) -> int:
    """Freezes the first `fraction` of parameter tensors in definition order; returns how many."""
    params = list(model.parameters())
    count = int(len(params) * fraction)
    for p in params[:count]:
        p.requires_grad_(False)
    return count


@dataclass
class _EpochTotals:
    """An epoch's running sums, on the device until its end.

    `sums` holds the loss's parts and the whole loss, each times its batch's size, in the order of `names`:
    one tensor, so a step adds to it with one kernel and a report reads it with one transfer.
    """

    names: list[str]
    sums: Optional[Tensor]
    correct: Tensor
    seen: int = 0
    cancelled: bool = False

    def add(self, parts: Tensor, logits: Tensor, y: Tensor) -> None:
        batch = len(y)
        weighted = parts * batch
        self.sums = weighted if self.sums is None else self.sums.add_(weighted)
        self.correct += (logits.argmax(1) == y).sum()
        self.seen += batch

    def read(self) -> tuple[dict[str, float], float]:
        """The mean of each part per image, and the accuracy; one read to the host."""
        values = torch.cat([self.sums.double(), self.correct.double().reshape(1)]).tolist()
        return {f"train_{k}": v / self.seen for k, v in zip(self.names, values)}, values[-1] / self.seen


class _Fit:
    """One fit's parts, built before its first step: loaders, distiller, teachers' logits, optimizer."""

    def __init__(self, model: nn.Module, data: DataSplits, *, phase: str, epochs: int, train_cfg: TrainConfig,
                 device: torch.device, teachers: Sequence[nn.Module], distill_cfg: Optional[DistillConfig],
                 augment, callback: Callback, on_checkpoint: Callable[[str, nn.Module], None],
                 cache_teacher_logits: bool, seed: int):
        self.model, self.data, self.phase, self.epochs, self.train_cfg = model, data, phase, epochs, train_cfg
        self.device, self.callback, self.on_checkpoint = device, callback, on_checkpoint
        with global_rng_lock:
            torch.manual_seed(seed)  # torch's own dropout modules; data order and augmentation have their own generators
        self.dropout_rng = torch.Generator(device=device).manual_seed(seed)  # kdcore's Dropout: this fit's draws only
        use_generator(model, self.dropout_rng)
        self.path = path = fast_path(device, train_cfg)
        prepare_device(path)  # cudnn autotuning and TF32 on CUDA; nothing elsewhere
        path.format_model(model).train()
        self.distill = bool(teachers) and distill_cfg is not None and distill_cfg.alpha > 0
        augmenting = augment is not None and augment.enabled
        distributed.check_batch(train_cfg.batch_size, phase)
        self.train_loader: BatchLoader = make_loader(
            data.train, train_cfg.batch_size, shuffle=True, device=device,
            augment=augment if augmenting else None, seed=seed, channels_last=path.channels_last,
        )
        self.steps_per_epoch = len(self.train_loader)
        self.report_every = max(1, self.steps_per_epoch // REPORTS_PER_EPOCH)
        # one evaluation loader per fit: the validation split goes to the device once, not once per epoch
        self.val_loader = make_loader(data.val, path.eval_batch(train_cfg.eval_batch_size), shuffle=False,
                                      device=device, channels_last=path.channels_last) if len(data.val) else None
        self.distiller = self._build_distiller(teachers, distill_cfg, seed)
        self.teacher_val_preds = None
        if teachers and self.val_loader is not None:
            val_each = [predict_logits(t, self.val_loader, device, path=path) for t in teachers]
            self.teacher_val_preds = (self.distiller.combine(val_each) if self.distiller is not None
                                      else val_each[0]).argmax(1)
        self.watch = CpuWatch(device)  # before the teachers' thread takes half of the threads
        self.cache: Optional[TeacherLogitCache] = None
        self.teacher_train_logits: Optional[Tensor] = None
        if self.distiller is not None and not augmenting and cache_teacher_logits and self.distiller.cacheable:
            self._cache_teacher_logits(teachers)
        trainable = [p for p in model.parameters() if p.requires_grad]
        if self.distiller is not None:
            trainable += [p for p in self.distiller.parameters() if p.requires_grad]
        self.trainable = trainable
        self.part_names: Optional[list[str]] = None  # the loss's parts, named at the first step
        self.optimizer = make_optimizer(trainable, train_cfg, fused=path.fused_optimizer)
        self.scheduler = make_scheduler(self.optimizer, train_cfg, epochs, self.steps_per_epoch)
        self.compiled = CompiledStep([model, *self._compiled_teachers(teachers)], path.compile, path.compiled,
                                     train_cfg.batch_size // distributed.world_size(), self._not_compiled())

    def _compiled_teachers(self, teachers: Sequence[nn.Module]) -> list[nn.Module]:
        """The teachers compiled with the student: those run on every batch, unless the method reads their layers."""
        per_batch = self.distiller is not None and self.cache is None and self.teacher_train_logits is None
        if not per_batch or self.distiller.teacher_layers():
            return []
        return [t for t in teachers if not isinstance(t, ExportedTeacher)]  # ONNX Runtime's graph is its own

    def _not_compiled(self) -> Optional[str]:
        """Why the student's step cannot be compiled in this fit, or None.

        kdcore's Dropout compiles: its draw from the fit's own generator runs eagerly between two graphs.
        """
        if self.distiller is not None and self.distiller.student_layers():
            return "the method reads the student's layers through hooks"  # hooks added per step: a recompile each
        return None

    def _build_distiller(self, teachers: Sequence[nn.Module], distill_cfg: Optional[DistillConfig],
                         seed: int) -> Optional[Distiller]:
        for t in teachers:  # teachers stay in eval mode and are never optimized
            self.path.format_model(t).eval()
            for p in t.parameters():
                p.requires_grad_(False)
        if not self.distill:
            return None
        sample = self.train_loader.sample(2)
        with global_rng_lock, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # a method's learnable parts start the same on every try
            return self.path.format_model(build_distiller(distill_cfg, self.model, teachers, sample))

    def _cache_teacher_logits(self, teachers: Sequence[nn.Module]) -> None:
        if self.data.train.x is not None:  # filled over the first epoch's batches, beside the student where it can
            self.cache = TeacherLogitCache(teachers, self.distiller.combine, self.train_loader, self.path,
                                           background=TeacherLogitCache.overlaps(self.path))
            return
        # a streamed split: one pass in the split's order before training
        # the train loader's device copy, reused
        in_order = self.train_loader.in_order(self.path.eval_batch(self.train_cfg.eval_batch_size))
        with region("kdcore.teacher_cache"):
            self.teacher_train_logits = self.distiller.combine(
                [predict_logits(t, in_order, self.device, path=self.path) for t in teachers])

    def teacher_logits(self, batch: int, idx: Tensor, epoch: int) -> Optional[Tensor]:
        if self.cache is not None:  # epoch 1 reads the batch just filled; a resumed fit needs them all
            return (self.cache.wait_for(batch + 1) if epoch == 1 else self.cache.complete())[idx]
        if self.teacher_train_logits is not None:
            return self.teacher_train_logits[idx]
        return None

    def step(self, x: Tensor, y: Tensor, idx: Tensor, batch: int, epoch: int,
             global_batch: Optional[int] = None) -> tuple[Tensor, Tensor]:
        """One optimizer step; the logits and the loss's parts then the whole loss, stacked in `part_names` order.

        `global_batch`: under torchrun, the size of the batch whose shard x is (kdcore.engine.distributed).
        """
        teacher_logits = self.teacher_logits(batch, idx, epoch)
        if not self.compiled.applies(len(y)):  # eager: compiling off, or the last, smaller batch
            logits, parts, loss = self._forward_backward(x, y, idx, epoch, teacher_logits, global_batch)
        elif self.compiled.pending:
            logits, parts, loss = self._first_compiled(x, y, idx, epoch, teacher_logits, global_batch)
        else:
            with self.compiled.active(len(y)):
                logits, parts, loss = self._forward_backward(x, y, idx, epoch, teacher_logits, global_batch)
        with region("kdcore.optimizer_step"):
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
        if self.cache is None or not self.cache.beside:  # the teachers' thread splits the threads its own way
            self.watch.check()
        if self.part_names is None:
            self.part_names = [*parts, "loss"]
        return logits.detach(), torch.stack([*(v.float() for v in parts.values()), loss.float()]).detach()

    def _first_compiled(self, x, y, idx, epoch, teacher_logits, global_batch):
        """The first compiled step, where compiling happens: if it fails, the step runs again eagerly from the same
        buffers and random states, and so does the rest of the fit."""
        before = restorable_state(self.model, (self.dropout_rng,))
        try:
            with self.compiled.active(len(y)):
                out = self._forward_backward(x, y, idx, epoch, teacher_logits, global_batch)
            self.compiled.pending = False
            return out
        except Exception as err:  # noqa: BLE001 - any failure to compile; an eager failure is raised below
            restore_state(self.model, (self.dropout_rng,), before)
            self.compiled.failed(err)
            return self._forward_backward(x, y, idx, epoch, teacher_logits, global_batch)

    def _forward_backward(self, x: Tensor, y: Tensor, idx: Tensor, epoch: int, teacher_logits: Optional[Tensor],
                          global_batch: Optional[int]) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        with self.path.autocast():
            if self.distiller is not None:
                logits, parts = self.distiller.forward_train(
                    x, y, idx, epoch=epoch, epochs=self.epochs, teacher_logits=teacher_logits)
            else:
                with region("kdcore.student_forward"):
                    logits = self.model(x).float()
                    parts = {"ce": F.cross_entropy(logits, y)}
            loss = functools.reduce(operator.add, parts.values())  # no 0 + first term: one kernel fewer
        with region("kdcore.backward"):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients(self.trainable, len(y), global_batch or len(y))
        return logits, parts, loss

    def report_steps(self, totals: _EpochTotals, epoch: int, step: int, images: int, since: float) -> float:
        """Sends a step event with the metrics since the epoch began; returns when, for the next window."""
        with _host_reads(self.device), region("kdcore.step_report"):
            metrics, metrics["train_acc"] = totals.read()
            if not math.isfinite(metrics["train_loss"]):
                raise TrainingDiverged(
                    f"{self.phase}: the loss became {metrics['train_loss']} at epoch {epoch}, step {step}; "
                    "lower train.lr or the temperature"
                )
            now = time.perf_counter()  # after the read above: the device's queued steps are done
            metrics["images_per_s"] = images / max(now - since, 1e-9)
            metrics["lr"] = self.optimizer.param_groups[0]["lr"]
            self.callback(Event("step", phase=self.phase, epoch=epoch, step=step, metrics=metrics,
                                info={"steps_per_epoch": self.steps_per_epoch, "epochs": self.epochs}))
        return now

    def end_epoch(self, epoch: int, totals: _EpochTotals, progress: Progress, state_path: Optional[Path]) -> bool:
        """Evaluates, keeps the best weights, saves the state; True when the fit stops after this epoch."""
        with _host_reads(self.device), region("kdcore.epoch_end"):
            if totals.seen == 0:  # cancelled before the epoch's first step
                return True
            metrics, metrics["train_acc"] = totals.read()
            if not math.isfinite(metrics["train_loss"]):
                raise TrainingDiverged(f"{self.phase}: the loss became {metrics['train_loss']} in epoch {epoch}; "
                                       "lower train.lr")
            metrics["lr"] = self.optimizer.param_groups[0]["lr"]
            distributed.share_buffers(self.model, self.distiller)  # every rank validates the same weights
            val_acc = self.validate(metrics)
            self.callback(Event("epoch", phase=self.phase, epoch=epoch, step=progress.global_step, metrics=metrics,
                                info={"epochs": self.epochs, "steps_per_epoch": self.steps_per_epoch}))
            if val_acc > progress.best_acc and not totals.cancelled:  # a cut-short epoch is kept as "last" only
                progress.best_acc, progress.best_epoch, progress.epochs_without_gain = val_acc, epoch, 0
                progress.best_state = copy.deepcopy(self.model.state_dict())
                self.on_checkpoint("best", self.model)
            else:
                progress.epochs_without_gain += 1
            self.on_checkpoint("last", self.model)
            if totals.cancelled:
                return True
            progress.epoch = epoch
            if state_path is not None:
                save_fit_state(state_path, progress, self.model, self.distiller, self.optimizer, self.scheduler,
                               self.dropout_rng)
            patience = self.train_cfg.early_stopping_patience
            return bool(patience and progress.epochs_without_gain >= patience)

    def validate(self, metrics: dict) -> float:
        """The epoch's accuracy for choosing the best epoch; adds val_acc and agreement to `metrics`."""
        if not len(self.data.val):
            return metrics["train_acc"]  # no validation split: pick on training accuracy
        preds = predict_logits(self.model, self.val_loader, self.device, path=self.path).argmax(1)
        rates = [(preds == self.val_loader.labels).float().mean()]
        if self.teacher_val_preds is not None:
            rates.append((preds == self.teacher_val_preds).float().mean())
        read = torch.stack(rates).tolist()  # one read to the host for both
        metrics["val_acc"] = read[0]
        if len(read) > 1:
            metrics["agreement"] = read[1]
        return read[0]

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()  # a cancelled or failed fit stops the teachers' thread
        use_generator(self.model, None)  # the model may be copied or used outside this fit
        self.watch.close()


def _train_epoch(training: _Fit, epoch: int, progress: Progress, should_stop: Callable[[], bool]) -> _EpochTotals:
    """The epoch's steps; metrics stay on the device and are read at reporting points only."""
    training.model.train()
    totals = _EpochTotals(names=[], sums=None, correct=torch.zeros((), dtype=torch.long, device=training.device))
    window_start, window_images = time.perf_counter(), 0
    for b, (x, y, idx) in enumerate(training.train_loader):
        if distributed.any_rank(should_stop(), training.device):
            totals.cancelled = True
            break
        x, y, idx, global_batch = distributed.shard(x, y, idx)
        logits, parts = training.step(x, y, idx, b, epoch, global_batch)
        totals.names = training.part_names
        totals.add(parts, logits, y)
        progress.global_step += 1
        window_images += len(y)
        if progress.global_step % training.report_every == 0:
            window_start = training.report_steps(totals, epoch, progress.global_step, window_images, window_start)
            window_images = 0
    return totals


def fit(
    model: nn.Module,
    data: DataSplits,
    *,
    phase: str,
    epochs: int,
    train_cfg: TrainConfig,
    device: torch.device,
    teachers: Sequence[nn.Module] = (),
    distill_cfg: Optional[DistillConfig] = None,
    augment=None,
    callback: Callback,
    should_stop: Callable[[], bool] = lambda: False,
    on_checkpoint: Callable[[str, nn.Module], None] = lambda tag, m: None,
    cache_teacher_logits: bool = True,
    seed: Optional[int] = None,
    state_path: Optional[Path] = None,
) -> FitResult:
    """Trains `model` in place; at the end it holds the weights with the best validation accuracy.

    With teachers, the loss is the sum of the distillation method's terms (kdcore.distill);
    without, plain cross-entropy. Teachers stay in eval mode and are never optimized; the
    method's own learnable parts are optimized, saved and restored with the model.
    With augmentation off and a method that reads logits only, the teachers' training-set
    logits are computed once.
    `on_checkpoint("best" | "last", model)` lets the caller persist weights.
    `seed` (default train_cfg.seed) fixes the data order, augmentation and dropout, so a
    phase trained again with the same seed and settings gives the same weights.
    `state_path`: the whole training state is saved there at each epoch's end, and a fit that
    finds one there goes on from it, ending with the weights an uninterrupted fit would have.
    """
    start = time.perf_counter()
    teachers = list(teachers)
    training = _Fit(model, data, phase=phase, epochs=epochs, train_cfg=train_cfg, device=device, teachers=teachers,
                 distill_cfg=distill_cfg, augment=augment, callback=callback, on_checkpoint=on_checkpoint,
                 cache_teacher_logits=cache_teacher_logits, seed=train_cfg.seed if seed is None else seed)
    progress = load_fit_state(state_path, device, model, training.distiller, training.optimizer,
                              training.scheduler, training.dropout_rng)
    done_epochs = epoch = progress.epoch
    training.train_loader.epoch = done_epochs  # the data order and augmentation of epoch k depend on (seed, k) only
    callback(Event("phase", phase=phase, epoch=done_epochs, step=progress.global_step, info={
        "epochs": epochs, "steps_per_epoch": training.steps_per_epoch, "distill": training.distill,
        "resumed_from_epoch": done_epochs}))
    cancelled = False
    try:
        for epoch in range(done_epochs + 1, epochs + 1):
            totals = _train_epoch(training, epoch, progress, should_stop)
            cancelled = totals.cancelled
            if training.end_epoch(epoch, totals, progress, state_path):
                break
    finally:
        training.close()
    if progress.best_state is not None and not cancelled:
        model.load_state_dict(progress.best_state)
    model.eval()
    return FitResult(
        best_val_acc=progress.best_acc if len(data.val) and progress.best_state is not None else float("nan"),
        best_epoch=progress.best_epoch,
        epochs_run=epoch,
        cancelled=cancelled,
        seconds=time.perf_counter() - start,
        threads_lowered=training.watch.lowered,
        compiled=training.compiled.outcome(),
        teacher_pass=training.cache.measured if training.cache is not None else "",
    )
