"""One training loop for three jobs: a teacher, a distilled student, a scratch baseline.

Metrics stay on the device as running sums and are read only at reporting
points, so a step never waits on the host.
"""
from __future__ import annotations

import collections
import copy
import math
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdcore.config import DistillConfig, TrainConfig
from kdcore.data import BatchLoader, DataSplits, Split, make_loader
from kdcore.engine.checkpoint import save_whole
from kdcore.engine.cpu_watch import CpuWatch
from kdcore.engine.device import FastPath, fast_path, prepare_device
from kdcore.engine.events import Callback, Event
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
    chunks = []
    loader = split if isinstance(split, BatchLoader) else make_loader(
        split, batch_size, shuffle=False, device=device, channels_last=path.channels_last)
    for x, _, _ in loader:
        with path.autocast():
            chunks.append(model(x).float())
    model.train(was_training)
    if not chunks:
        return torch.empty(0, 0, device=device)
    return torch.cat(chunks)


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


def _rng_state(dropout_rng: torch.Generator) -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "dropout": dropout_rng.get_state(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, dropout_rng: torch.Generator) -> None:
    with global_rng_lock:
        torch.set_rng_state(state["torch"])
    if "dropout" in state:
        dropout_rng.set_state(state["dropout"].cpu())
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_state(path: Path, state: dict) -> None:
    save_whole(state, path)  # a kill mid-write leaves the previous epoch's state whole


def fit(
    model: nn.Module,
    data: DataSplits,
    *,
    phase: str,
    epochs: int,
    train_cfg: TrainConfig,
    device: torch.device,
    teacher: Optional[nn.Module] = None,
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
    seed = train_cfg.seed if seed is None else seed
    with global_rng_lock:
        torch.manual_seed(seed)  # torch's own dropout modules; data order and augmentation have their own generators
    dropout_rng = torch.Generator(device=device).manual_seed(seed)  # kdcore's Dropout: this fit's draws only
    use_generator(model, dropout_rng)
    path = fast_path(device, train_cfg)
    prepare_device(path)  # cudnn autotuning and TF32 on CUDA; nothing elsewhere
    path.format_model(model).train()
    teachers = list(teachers) or ([teacher] if teacher is not None else [])
    distill = bool(teachers) and distill_cfg is not None and distill_cfg.alpha > 0
    augmenting = augment is not None and augment.enabled

    train_loader: BatchLoader = make_loader(
        data.train, train_cfg.batch_size, shuffle=True, device=device,
        augment=augment if augmenting else None, seed=seed, channels_last=path.channels_last,
    )
    steps_per_epoch = len(train_loader)
    report_every = max(1, steps_per_epoch // REPORTS_PER_EPOCH)
    # one evaluation loader per fit: the validation split goes to the device once, not once per epoch
    val_loader = make_loader(data.val, train_cfg.eval_batch_size, shuffle=False, device=device,
                             channels_last=path.channels_last) if len(data.val) else None

    teacher_train_logits = teacher_val_preds = None
    distiller: Optional[Distiller] = None
    for t in teachers:
        path.format_model(t).eval()
        for p in t.parameters():
            p.requires_grad_(False)
    if distill:
        sample = train_loader.sample(2)
        with global_rng_lock, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # a method's learnable parts start the same on every try
            distiller = path.format_model(build_distiller(distill_cfg, model, teachers, sample))
    if teachers and val_loader is not None:
        val_each = [predict_logits(t, val_loader, device, path=path) for t in teachers]
        teacher_val_preds = (distiller.combine(val_each) if distiller is not None else val_each[0]).argmax(1)
    watch = CpuWatch(device)  # before the teachers' thread takes half of the threads
    cache: Optional[TeacherLogitCache] = None
    if distiller is not None and not augmenting and cache_teacher_logits and distiller.cacheable:
        if data.train.x is not None:  # filled over the first epoch's batches, beside the student where it can
            cache = TeacherLogitCache(teachers, distiller.combine, train_loader, path,
                                      background=TeacherLogitCache.overlaps(path))
        else:  # a streamed split: one pass in the split's order before training
            in_order = train_loader.in_order(train_cfg.eval_batch_size)  # the train loader's device copy, reused
            with region("kdcore.teacher_cache"):
                teacher_train_logits = distiller.combine(
                    [predict_logits(t, in_order, device, path=path) for t in teachers])

    trainable = [p for p in model.parameters() if p.requires_grad]
    if distiller is not None:
        trainable += [p for p in distiller.parameters() if p.requires_grad]
    optimizer = make_optimizer(trainable, train_cfg, fused=path.fused_optimizer)
    scheduler = make_scheduler(optimizer, train_cfg, epochs, steps_per_epoch)

    best_acc, best_epoch, best_state = float("-inf"), 0, None
    epochs_without_gain = 0
    global_step = 0
    cancelled = False
    done_epochs = 0
    if state_path is not None and Path(state_path).is_file():
        with torch.serialization.safe_globals([collections.Counter]):  # a step schedule's milestones
            saved = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(saved["model"])
        if distiller is not None and saved.get("distiller") is not None:
            distiller.load_state_dict(saved["distiller"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None and saved["scheduler"] is not None:
            scheduler.load_state_dict(saved["scheduler"])
        best_acc, best_epoch, best_state = saved["best_acc"], saved["best_epoch"], saved["best_state"]
        epochs_without_gain, global_step, done_epochs = saved["epochs_without_gain"], saved["global_step"], saved["epoch"]
        _set_rng_state(saved["rng"], dropout_rng)
    train_loader.epoch = done_epochs  # the data order and augmentation of epoch k depend on (seed, k) only
    epoch = done_epochs
    callback(Event("phase", phase=phase, epoch=done_epochs, step=global_step, info={
        "epochs": epochs, "steps_per_epoch": steps_per_epoch, "distill": distill, "resumed_from_epoch": done_epochs}))

    try:
        for epoch in range(done_epochs + 1, epochs + 1):
            model.train()
            sums: dict[str, Tensor] = {}
            correct = torch.zeros((), device=device)
            seen = 0
            window_start, window_images = time.perf_counter(), 0
            for b, (x, y, idx) in enumerate(train_loader):
                if should_stop():
                    cancelled = True
                    break
                teacher_logits = None
                if cache is not None:  # epoch 1 reads the batch just filled; a resumed fit needs them all
                    teacher_logits = (cache.wait_for(b + 1) if epoch == 1 else cache.complete())[idx]
                elif teacher_train_logits is not None:
                    teacher_logits = teacher_train_logits[idx]
                with path.autocast():
                    if distiller is not None:
                        logits, parts = distiller.forward_train(
                            x, y, idx, epoch=epoch, epochs=epochs, teacher_logits=teacher_logits)
                    else:
                        with region("kdcore.student_forward"):
                            logits = model(x).float()
                            parts = {"ce": F.cross_entropy(logits, y)}
                    loss = sum(parts.values())
                with region("kdcore.backward"):
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                with region("kdcore.optimizer_step"):
                    optimizer.step()
                    if scheduler is not None:
                        scheduler.step()
                global_step += 1
                if cache is None or not cache.beside:  # the teachers' thread splits the threads its own way
                    watch.check()

                batch = len(y)
                seen += batch
                window_images += batch
                parts = {name: value.detach() for name, value in parts.items()}
                parts["loss"] = loss.detach()
                for name, value in parts.items():
                    sums[name] = sums.get(name, 0.0) + value.float() * batch
                correct += (logits.detach().argmax(1) == y).sum()

                if global_step % report_every == 0:
                    with _host_reads(device), region("kdcore.step_report"):
                        metrics = {f"train_{k}": v.item() / seen for k, v in sums.items()}
                        if not math.isfinite(metrics["train_loss"]):
                            raise TrainingDiverged(
                                f"{phase}: the loss became {metrics['train_loss']} at epoch {epoch}, step {global_step}; "
                                "lower train.lr or the temperature"
                            )
                        now = time.perf_counter()
                        metrics["train_acc"] = correct.item() / seen
                        metrics["images_per_s"] = window_images / max(now - window_start, 1e-9)
                        metrics["lr"] = optimizer.param_groups[0]["lr"]
                        window_start, window_images = now, 0
                        callback(Event("step", phase=phase, epoch=epoch, step=global_step, metrics=metrics,
                                       info={"steps_per_epoch": steps_per_epoch, "epochs": epochs}))

            with _host_reads(device), region("kdcore.epoch_end"):  # the epoch's metrics, evaluation and checkpoints
                if seen == 0:  # cancelled before the epoch's first step
                    break
                epoch_metrics = {f"train_{k}": v.item() / seen for k, v in sums.items()}
                if not math.isfinite(epoch_metrics["train_loss"]):
                    raise TrainingDiverged(f"{phase}: the loss became {epoch_metrics['train_loss']} in epoch {epoch}; lower train.lr")
                epoch_metrics["train_acc"] = correct.item() / seen
                epoch_metrics["lr"] = optimizer.param_groups[0]["lr"]
                if len(data.val):
                    val_logits = predict_logits(model, val_loader, device, path=path)
                    val_acc = accuracy(val_logits, val_loader.labels)
                    epoch_metrics["val_acc"] = val_acc
                    if teacher_val_preds is not None:
                        epoch_metrics["agreement"] = (val_logits.argmax(1) == teacher_val_preds).float().mean().item()
                else:
                    val_acc = epoch_metrics["train_acc"]  # no validation split: pick on training accuracy
                callback(Event("epoch", phase=phase, epoch=epoch, step=global_step, metrics=epoch_metrics,
                               info={"epochs": epochs, "steps_per_epoch": steps_per_epoch}))

                if val_acc > best_acc and not cancelled:  # a cut-short epoch is kept as "last" only
                    best_acc, best_epoch, epochs_without_gain = val_acc, epoch, 0
                    best_state = copy.deepcopy(model.state_dict())
                    on_checkpoint("best", model)
                else:
                    epochs_without_gain += 1
                on_checkpoint("last", model)
                if cancelled:
                    break
                if state_path is not None:
                    _save_state(state_path, dict(
                        epoch=epoch, model=model.state_dict(),
                        distiller=distiller.state_dict() if distiller is not None else None, optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict() if scheduler is not None else None, best_acc=best_acc,
                        best_epoch=best_epoch, best_state=best_state, epochs_without_gain=epochs_without_gain,
                        global_step=global_step, rng=_rng_state(dropout_rng)))
                if train_cfg.early_stopping_patience and epochs_without_gain >= train_cfg.early_stopping_patience:
                    break
    finally:
        if cache is not None:
            cache.close()  # a cancelled or failed fit stops the teachers' thread
        use_generator(model, None)  # the model may be copied or used outside this fit
        watch.close()

    if best_state is not None and not cancelled:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(
        best_val_acc=best_acc if len(data.val) and best_state is not None else float("nan"),
        best_epoch=best_epoch,
        epochs_run=epoch,
        cancelled=cancelled,
        seconds=time.perf_counter() - start,
        threads_lowered=watch.lowered,
    )
