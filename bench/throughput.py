"""Images/s of kdcore's distillation epoch against a plain tutorial-style loop.

    .venv/bin/python bench/throughput.py                 # CPU here, or the GPU when one is visible
    .venv/bin/python bench/throughput.py --markdown      # also a row for docs/benchmarks.md
    .venv/bin/python bench/throughput.py --device cuda --repeats 5
    .venv/bin/python bench/throughput.py --teacher mlp_1200x2 --student mlp_800x2 --limit 20000

Both sides distil the same teacher into the same student architecture on the same
MNIST training images (kdcore's 54,000-image training split, or its first --limit
images), with the same batch size, optimizer (Adam), loss (CE plus kdcore.losses.soft_target_loss,
soft targets, T=4, alpha=0.9) and device, in one process:

* kdcore: `kdcore.engine.trainer.fit(..., phase="student")`. Its time includes the
  one-off pass that caches the teacher's logits for the training images (part of the
  cost of a fit), the loader setup and the optimizer; the validation split is left
  empty so that neither side spends time on evaluation. It runs kdcore's fast path as
  by default (train.amp: bf16 autocast on CUDA and on CPUs with AVX-512 BF16 or AMX;
  train.channels_last; train.fused_optimizer); `--set train.amp=false` and the like
  turn parts of it off.
* plain loop: written the way tutorials write it: torchvision.datasets.MNIST with
  per-image ToTensor/Normalize transforms, a DataLoader(shuffle=True, num_workers=2),
  fp32, the teacher's forward under torch.no_grad on every batch, and loss.item()
  and the accuracy's .item() on every step.

Each side is warmed up once on a few batches, then the two are timed alternately
--repeats times; the medians and their ratio are reported with the spread. The
teacher is freshly initialised (its weights do not change the cost); each timed
run starts from the same freshly initialised student.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from bench.machine import cpu_flags, cpu_model  # noqa: E402

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from kdcore.config import ConfigError, RunConfig
from kdcore.configure import build_config
from kdcore.data import DataSplits, Split, load_dataset
from kdcore.data.splitting import SPLIT_SEED, stratified_split
from kdcore.engine.device import describe_device, fast_path, resolve_device
from kdcore.engine.events import no_callback
from kdcore.engine.trainer import fit
from kdcore.losses import soft_target_loss
from kdcore.models import MODELS, create_model

DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"


def target(device_type: str, epochs: int) -> float:
    """The goal for kdcore / plain loop: on CPU 2x for one epoch and 4x from three, on CUDA 3x."""
    if device_type == "cuda":
        return 3.0
    return 2.0 if epochs < 3 else 4.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="small_cnn", choices=MODELS.names(), metavar="ARCH",
                   help="teacher architecture (default small_cnn; e.g. mlp_1200x2)")
    p.add_argument("--student", default="tiny_cnn", choices=MODELS.names(), metavar="ARCH",
                   help="student architecture (default tiny_cnn; e.g. mlp_800x2)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=1, help="student epochs per timed run (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each side, alternating (default 3)")
    p.add_argument("--limit", type=int, default=None,
                   help="train on the first N images of the training split (both sides); default all 54,000")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT), help="folder holding MNIST/raw")
    p.add_argument("--workers", type=int, default=2, help="plain loop's DataLoader workers (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the machine's cores)")
    p.add_argument("--warmup-batches", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a kdcore run-config key, e.g. train.eval_batch_size=128 (repeatable); "
                        "the plain loop takes batch size, lr and the distill section from the same config")
    p.add_argument("--markdown", action="store_true", help="also print a row for docs/benchmarks.md")
    args = p.parse_args(argv)
    for name in ("batch_size", "epochs", "repeats", "warmup_batches"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be at least 1")
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_label(device: torch.device) -> str:
    name = describe_device(device)
    return f"{name}, {cpu_model()}" if device.type == "cpu" else name


def first_n(split: Split, n: int) -> Split:
    return Split(split.x[:n], split.y[:n])


def empty_like(split: Split) -> Split:
    return Split(split.x[:0], split.y[:0])


# ---------------------------------------------------------------- kdcore


def kdcore_run(cfg: RunConfig, data: DataSplits, teacher: nn.Module, student: nn.Module,
               device: torch.device, epochs: int) -> float:
    """Seconds for one fit: teacher-logit cache + `epochs` student epochs (no validation)."""
    sync(device)
    start = time.perf_counter()
    fit(student, data, phase="student", epochs=epochs, train_cfg=cfg.train, device=device,
        teachers=[teacher], distill_cfg=cfg.distill, callback=no_callback)
    sync(device)
    return time.perf_counter() - start


# ---------------------------------------------------------------- plain loop


def plain_dataset(root: str, indices: torch.Tensor, mean, std):
    import torchvision
    from torchvision import transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    full = torchvision.datasets.MNIST(root, train=True, download=False, transform=tf)
    return Subset(full, indices.tolist())  # the same images as kdcore's training split


def plain_run(dataset, cfg: RunConfig, teacher: nn.Module, student: nn.Module, device: torch.device,
              epochs: int, workers: int, max_batches: int | None = None) -> float:
    """Seconds for `epochs` epochs of the tutorial loop (worker start-up included, as in a tutorial)."""
    d, t = cfg.distill, cfg.train
    sync(device)
    start = time.perf_counter()
    loader = DataLoader(dataset, batch_size=t.batch_size, shuffle=True, num_workers=workers)
    teacher.to(device).eval()
    student.to(device).train()
    optimizer = torch.optim.Adam(student.parameters(), lr=t.lr)
    for _ in range(epochs):
        running_loss, correct, total = 0.0, 0, 0
        for step, (x, y) in enumerate(loader):
            if max_batches is not None and step >= max_batches:
                break
            x, y = x.to(device), y.to(device)
            with torch.no_grad():
                t_logits = teacher(x)
            s_logits = student(x)
            loss = (1 - d.alpha) * F.cross_entropy(s_logits, y) + d.alpha * soft_target_loss(s_logits, t_logits, d.temperature)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running_loss += loss.item() * x.size(0)
            correct += (s_logits.argmax(1) == y).sum().item()
            total += x.size(0)
    sync(device)
    return time.perf_counter() - start


# ---------------------------------------------------------------- main


def fmt_rate(values: list[float]) -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:,.0f}"
    return f"{med:,.0f} ({min(values):,.0f}–{max(values):,.0f})"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    device = resolve_device(args.device)
    if device.type not in ("cpu", "cuda"):
        print(f"unsupported device {device}; use --device cpu or cuda", file=sys.stderr)
        return 2
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = False  # the same default for both sides

    try:
        cfg = build_config({
            "dataset": {"name": "mnist", "root": args.data_root},
            "teacher": {"arch": args.teacher},
            "student": {"arch": args.student},
            "train": {"batch_size": args.batch_size, "optimizer": "adam", "epochs": args.epochs,
                      "device": device.type, "seed": args.seed},
        }, args.overrides)
    except ConfigError as err:
        print(f"bad --set: {err}", file=sys.stderr)
        return 2
    data = load_dataset(cfg.dataset)
    # the training split's positions in torchvision's 60,000 images, for the plain loop
    import torchvision

    train_y = torchvision.datasets.MNIST(args.data_root, train=True, download=False).targets
    keep, _ = stratified_split(train_y, cfg.dataset.val_fraction, SPLIT_SEED)
    assert len(keep) == len(data.train) and torch.equal(train_y[keep], data.train.y), "split mismatch"
    n = min(args.limit or len(keep), len(keep))
    keep = keep[:n]
    train = first_n(data.train, n)
    kd_data = dataclasses.replace(data, train=train, val=empty_like(data.val), test=empty_like(data.test))
    plain_ds = plain_dataset(args.data_root, keep, data.mean, data.std)

    shape = dict(num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size)
    torch.manual_seed(args.seed)
    teacher = create_model(args.teacher, **shape).to(device).eval()
    # each side its own copy: kdcore's fit turns its teacher to channels_last, the tutorial loop keeps NCHW
    kd_teacher, plain_teacher = copy.deepcopy(teacher), copy.deepcopy(teacher)
    torch.manual_seed(args.seed + 1)
    student_init = {k: v.clone() for k, v in create_model(args.student, **shape).state_dict().items()}

    def fresh_student() -> nn.Module:
        m = create_model(args.student, **shape)
        m.load_state_dict(student_init)
        return m

    threads = torch.get_num_threads()
    label = device_label(device)
    print(f"device: {label}; torch {torch.__version__}; {threads} torch threads; {os.cpu_count()} cores")
    print(f"distil {args.teacher} -> {args.student} on MNIST: {n:,} training images, batch {cfg.train.batch_size}, "
          f"Adam, {args.epochs} epoch(s) per run, {args.repeats} runs per side (alternating)")
    path = fast_path(device, cfg.train)
    flags = f"precision {path.precision}, channels_last {path.channels_last}, fused optimizer {path.fused_optimizer}"
    print(f"kdcore: fit(), {flags}; its time includes the one-off teacher-logit pass over the {n:,} images")
    print(f"CPU flags: {cpu_flags()}")
    if args.overrides:
        print(f"config overrides: {' '.join(args.overrides)}")
    print(f"plain:  torchvision MNIST + per-image transforms, DataLoader(num_workers={args.workers}), fp32, "
          "teacher forward every batch, .item() every step")

    # warm-up: a few batches each (allocator, kernels, worker start-up, file cache)
    wb = args.warmup_batches
    warm = dataclasses.replace(kd_data, train=first_n(train, wb * cfg.train.batch_size))
    kdcore_run(cfg, warm, kd_teacher, fresh_student(), device, 1)
    plain_run(plain_ds, cfg, plain_teacher, fresh_student(), device, 1, args.workers, max_batches=wb)

    images = n * args.epochs
    kd_rates, plain_rates = [], []
    print(f"\n{'run':>4} {'kdcore s':>9} {'kdcore img/s':>13} {'plain s':>9} {'plain img/s':>12} {'ratio':>6}")
    for r in range(1, args.repeats + 1):
        # alternate which side goes first, so drift in the machine's load hits both alike
        order = ("kd", "plain") if r % 2 else ("plain", "kd")
        secs = {}
        for side in order:
            if side == "kd":
                secs[side] = kdcore_run(cfg, kd_data, kd_teacher, fresh_student(), device, args.epochs)
            else:
                secs[side] = plain_run(plain_ds, cfg, plain_teacher, fresh_student(), device, args.epochs, args.workers)
        kd_rates.append(images / secs["kd"])
        plain_rates.append(images / secs["plain"])
        print(f"{r:>4} {secs['kd']:>9.2f} {kd_rates[-1]:>13,.0f} {secs['plain']:>9.2f} {plain_rates[-1]:>12,.0f} "
              f"{kd_rates[-1] / plain_rates[-1]:>5.2f}x", flush=True)

    kd_med, plain_med = statistics.median(kd_rates), statistics.median(plain_rates)
    ratio = kd_med / plain_med
    pair = [k / p for k, p in zip(kd_rates, plain_rates)]

    def spread(v: list[float]) -> str:
        return f"{(max(v) - min(v)) / statistics.median(v):.0%}"

    print(f"\n{'':>14} {'median img/s':>13} {'min':>9} {'max':>9} {'spread':>7}")
    print(f"{'kdcore':>14} {kd_med:>13,.0f} {min(kd_rates):>9,.0f} {max(kd_rates):>9,.0f} {spread(kd_rates):>7}")
    print(f"{'plain loop':>14} {plain_med:>13,.0f} {min(plain_rates):>9,.0f} {max(plain_rates):>9,.0f} "
          f"{spread(plain_rates):>7}")
    goal = target(device.type, args.epochs)
    verdict = "met" if ratio >= goal else "NOT met"
    print(f"ratio of medians: {ratio:.2f}x (per-run ratios {min(pair):.2f}x–{max(pair):.2f}x); "
          f"target {goal:g}x on {device.type}: {verdict}")
    print("spread = (max - min) / median across runs")

    if args.markdown:
        today = datetime.date.today().isoformat()
        print("\n| device | torch | epochs | kdcore fast path | kdcore images/s | plain loop images/s | ratio | date |")
        print("|---|---|---|---|---|---|---|---|")
        print(f"| {label} | {torch.__version__} | {args.epochs} | {flags} | {fmt_rate(kd_rates)} | "
              f"{fmt_rate(plain_rates)} | {ratio:.2f}x | {today} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
