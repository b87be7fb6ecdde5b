"""Images/s of kdcore's distillation epoch against a tutorial loop and a strong plain-PyTorch loop.

    .venv/bin/python bench/throughput.py                 # CPU here, or the GPU when one is visible
    .venv/bin/python bench/throughput.py --markdown      # also a row for docs/benchmarks.md
    .venv/bin/python bench/throughput.py --device cuda --repeats 5
    .venv/bin/python bench/throughput.py --teacher mlp_1200x2 --student mlp_800x2 --limit 20000
    .venv/bin/python bench/throughput.py --dataset cifar100 --batch-size 64 --limit 2000

Every side distils the same teacher into the same student architecture on the same
training images, with the same batch size, optimizer (Adam, kdcore's lr and cosine
schedule), loss (CE * (1 - alpha) + alpha * kdcore.losses.soft_target_loss, T=4,
alpha=0.9) and device, in one process. Two pairs:

* --dataset mnist (default): small_cnn -> tiny_cnn on kdcore's 54,000-image MNIST
  training split, or its first --limit images.
* --dataset cifar100: resnet32x4 -> resnet8x4 (RepDistiller's CIFAR-100 pair) on 3x32x32
  images in 100 classes: CIFAR-100's training split where <data-root>/cifar-100-python
  holds it, else synthetic images of that shape from a fixed seed (the output says which).

The sides (--peers picks the peers):

* kdcore: `kdcore.engine.trainer.fit(..., phase="student")`. Its time includes the
  one-off pass that caches the teacher's logits for the training images (part of the
  cost of a fit), the loader setup and the optimizer; the validation split is left
  empty so that no side spends time on evaluation. It runs kdcore's fast path as
  by default (train.amp: bf16 autocast on CUDA and on CPUs with AVX-512 BF16 or AMX;
  train.channels_last; train.fused_optimizer); `--set train.amp=false` and the like
  turn parts of it off.
* tutorial: written the way tutorials write it: a torchvision-style dataset with
  per-image ToTensor/Normalize transforms, a DataLoader(shuffle=True, num_workers=2),
  fp32, the teacher's forward under torch.no_grad on every batch, and loss.item()
  and the accuracy's .item() on every step.
* strong, strong-cached: written the way a strong engineer writes it: the normalised
  training images on the device as one tensor (NHWC, so a gathered batch is already
  channels_last), a random permutation per epoch from a seeded generator, batches by
  index_select (no DataLoader), bf16 autocast exactly where kdcore's fast path uses it,
  channels_last conv models, fused Adam where torch has it, zero_grad(set_to_none=True),
  and no host reads in the loop (the loss is summed on the device and read once at the
  end). "strong" runs the teacher's forward on every batch under no_grad and autocast;
  "strong-cached" computes the teacher's logits for the whole training set once before
  the epochs (that pass is timed, as kdcore's cache pass is). The data's upload to the
  device is timed too, as kdcore's loader setup is.
* kdcore-beside (not run unless named): kdcore with its CPU teachers' pass always in a
  second thread beside the student, as before the pass timed that way against running
  the teachers in turn with all threads; kdcore / kdcore-beside shows what the timing
  gains or costs.

Each side is warmed up once on a few batches, then all are timed alternately (the
order flips every repeat) --repeats times; the medians, their ratios and the spread
are reported. The teacher is freshly initialised (its weights do not change the cost);
each timed run starts from the same freshly initialised student.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from bench.machine import cpu_flags, cpu_model  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset, Subset  # noqa: E402

from kdcore.config import ConfigError, RunConfig  # noqa: E402
from kdcore.configure import build_config  # noqa: E402
from kdcore.data import DataSplits, Split, load_dataset  # noqa: E402
from kdcore.data.splitting import SPLIT_SEED, stratified_split  # noqa: E402
from kdcore.engine import teacher_cache  # noqa: E402
from kdcore.engine.device import describe_device, fast_path, has_conv2d, resolve_device  # noqa: E402
from kdcore.engine.events import no_callback  # noqa: E402
from kdcore.engine.trainer import fit  # noqa: E402
from kdcore.losses import soft_target_loss  # noqa: E402
from kdcore.models import MODELS, create_model  # noqa: E402

DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"
PAIRS = {"mnist": ("small_cnn", "tiny_cnn"), "cifar100": ("resnet32x4", "resnet8x4")}
PEERS = ("tutorial", "strong", "strong-cached", "kdcore-beside")
DEFAULT_PEERS = PEERS[:3]
PEER_LABELS = {"tutorial": "tutorial loop", "strong": "strong loop, teacher every batch",
               "strong-cached": "strong loop, teacher logits cached once",
               "kdcore-beside": "kdcore with its teachers' pass always beside the student"}
STRONG_TARGET = 1.2  # issue 23: kdcore at least 1.2x a strong plain loop
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
CIFAR_TRAIN_IMAGES = 50_000
SYNTHETIC_SEED = 20261204


def target(device_type: str, epochs: int) -> float:
    """The goal for kdcore / tutorial loop: on CPU 2x for one epoch and 4x from three, on CUDA 3x."""
    if device_type == "cuda":
        return 3.0
    return 2.0 if epochs < 3 else 4.0


def peer_target(peer: str, device_type: str, epochs: int) -> float:
    if peer == "kdcore-beside":
        return 1.0  # the timing of the two ways must not cost more than it saves
    return target(device_type, epochs) if peer == "tutorial" else STRONG_TARGET


def parse_peers(text: str) -> tuple[str, ...]:
    peers = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in peers if p not in PEERS]
    if unknown or not peers:
        raise argparse.ArgumentTypeError(f"peers are a comma-separated subset of {','.join(PEERS)}")
    return peers


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist", choices=sorted(PAIRS),
                   help="mnist (default) or cifar100 (synthetic CIFAR-shaped images where CIFAR-100 is absent)")
    p.add_argument("--teacher", default=None, choices=MODELS.names(), metavar="ARCH",
                   help="teacher architecture (default small_cnn on mnist, resnet32x4 on cifar100)")
    p.add_argument("--student", default=None, choices=MODELS.names(), metavar="ARCH",
                   help="student architecture (default tiny_cnn on mnist, resnet8x4 on cifar100)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=1, help="student epochs per timed run (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each side, alternating (default 3)")
    p.add_argument("--limit", type=int, default=None,
                   help="train on the first N images of the training split (every side); default all")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT), help="folder holding MNIST/raw or cifar-100-python")
    p.add_argument("--peers", type=parse_peers, default=DEFAULT_PEERS,
                   help=f"which peers to time against kdcore, comma-separated, of {','.join(PEERS)} (default "
                        f"{','.join(DEFAULT_PEERS)})")
    p.add_argument("--teacher-batch", type=int, default=None,
                   help="strong-cached: images per step of its teacher pass (default 1024 on CUDA, "
                        "train.eval_batch_size on CPU, as kdcore's evaluation)")
    p.add_argument("--workers", type=int, default=2, help="tutorial loop's DataLoader workers (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the machine's cores)")
    p.add_argument("--warmup-batches", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a kdcore run-config key, e.g. train.eval_batch_size=128 (repeatable); "
                        "the peers take batch size, lr, schedule and the distill section from the same config")
    p.add_argument("--markdown", action="store_true", help="also print a row for docs/benchmarks.md")
    p.add_argument("--json", metavar="FILE", help="append the results to FILE as one JSON line")
    args = p.parse_args(argv)
    for name in ("batch_size", "epochs", "repeats", "warmup_batches"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be at least 1")
    if args.teacher_batch is not None and args.teacher_batch < 1:
        p.error("--teacher-batch must be at least 1")
    args.teacher = args.teacher or PAIRS[args.dataset][0]
    args.student = args.student or PAIRS[args.dataset][1]
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


# ---------------------------------------------------------------- the training images


@dataclasses.dataclass
class BenchData:
    """The same n training images for every side: kdcore's DataSplits and the tutorial loop's Dataset."""
    name: str  # what the output calls them
    splits: DataSplits  # train: the n images; val and test empty, so no side evaluates
    tutorial: Dataset  # the same images, decoded per item as torchvision's datasets do
    note: str = ""  # said in the output, e.g. that the images are synthetic

    @property
    def train(self) -> Split:
        return self.splits.train


class TutorialImages(Dataset):
    """What torchvision's CIFAR datasets do per item: a PIL image from HWC uint8, then the transforms."""

    def __init__(self, images_hwc: np.ndarray, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images_hwc, labels.tolist(), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def tutorial_transform(mean, std):
    from torchvision import transforms

    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])


def only_train(data: DataSplits, train: Split) -> DataSplits:
    return dataclasses.replace(data, train=train, val=empty_like(data.val), test=empty_like(data.test))


def load_mnist(args, cfg: RunConfig) -> BenchData:
    import torchvision

    data = load_dataset(cfg.dataset)
    # the training split's positions in torchvision's 60,000 images, for the tutorial loop
    train_y = torchvision.datasets.MNIST(args.data_root, train=True, download=False).targets
    keep, _ = stratified_split(train_y, cfg.dataset.val_fraction, SPLIT_SEED)
    assert len(keep) == len(data.train) and torch.equal(train_y[keep], data.train.y), "split mismatch"
    n = min(args.limit or len(keep), len(keep))
    full = torchvision.datasets.MNIST(args.data_root, train=True, download=False,
                                      transform=tutorial_transform(data.mean, data.std))
    tutorial = Subset(full, keep[:n].tolist())  # the same images as kdcore's training split
    return BenchData("MNIST", only_train(data, first_n(data.train, n)), tutorial)


def cifar_images(root: Path) -> tuple[torch.Tensor, torch.Tensor, list[str], str]:
    """CIFAR-100's 50,000 training images (N,3,32,32) uint8 and labels, or synthetic ones of that shape."""
    from kdcore.data.cifar import CIFAR_LAYOUT, cifar_files, read_cifar

    folder = root / CIFAR_LAYOUT["cifar100"]["folder"]
    if all((folder / f).is_file() for f in cifar_files("cifar100")):
        x, y, _, _, names = read_cifar("cifar100", root)
        return torch.from_numpy(x), torch.from_numpy(y).long(), names, ""
    g = torch.Generator().manual_seed(SYNTHETIC_SEED)
    x = torch.randint(0, 256, (CIFAR_TRAIN_IMAGES, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = (torch.arange(CIFAR_TRAIN_IMAGES) % 100)[torch.randperm(CIFAR_TRAIN_IMAGES, generator=g)]
    note = f"synthetic CIFAR-shaped images: CIFAR-100 not found under {folder}"
    return x, y, [f"class {i}" for i in range(100)], note


def load_cifar(args, cfg: RunConfig) -> BenchData:
    raw_x, raw_y, names, note = cifar_images(Path(args.data_root))
    keep, _ = stratified_split(raw_y, cfg.dataset.val_fraction, SPLIT_SEED)  # kdcore's training split
    keep = keep[:min(args.limit or len(keep), len(keep))]
    mean, std = CIFAR100_STATS
    x8 = raw_x[keep]
    x = x8.float().div_(255).sub_(torch.tensor(mean).view(1, 3, 1, 1)).div_(torch.tensor(std).view(1, 3, 1, 1))
    y = raw_y[keep]
    train = Split(x, y)
    splits = DataSplits(name="cifar100", num_classes=100, in_channels=3, image_size=32, class_names=names,
                        mean=mean, std=std, train=train, val=empty_like(train), test=empty_like(train))
    tutorial = TutorialImages(x8.permute(0, 2, 3, 1).contiguous().numpy(), y, tutorial_transform(mean, std))
    return BenchData("synthetic CIFAR-100-shaped images" if note else "CIFAR-100", splits, tutorial, note)


# ---------------------------------------------------------------- kdcore


def kdcore_run(cfg: RunConfig, data: DataSplits, teacher: nn.Module, student: nn.Module,
               device: torch.device, epochs: int, teacher_passes: list[str] | None = None) -> float:
    """Seconds for one fit: teacher-logit cache + `epochs` student epochs (no validation).

    teacher_passes: gets what the fit's teachers' pass measured of its two ways, where it timed them."""
    sync(device)
    start = time.perf_counter()
    result = fit(student, data, phase="student", epochs=epochs, train_cfg=cfg.train, device=device,
                 teachers=[teacher], distill_cfg=cfg.distill, callback=no_callback)
    sync(device)
    seconds = time.perf_counter() - start
    if teacher_passes is not None and result.teacher_pass:
        teacher_passes.append(result.teacher_pass)
    return seconds


@contextlib.contextmanager
def untimed_teacher_pass():
    """kdcore as before its teachers' pass timed its two ways: on a CPU, always beside the student."""
    saved = teacher_cache.PROBE_WAITED_SHARE
    teacher_cache.PROBE_WAITED_SHARE = math.inf
    try:
        yield
    finally:
        teacher_cache.PROBE_WAITED_SHARE = saved


# ---------------------------------------------------------------- the tutorial loop


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


# ---------------------------------------------------------------- the strong loop


def fused_adam(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam as one fused kernel where this torch has it for the device, else its multi-tensor form."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)


def cosine(optimizer: torch.optim.Optimizer, total_steps: int):
    """kdcore's default schedule: cosine from the peak lr to zero, stepped once per optimizer step."""
    total = max(1, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))


def strong_run(x: torch.Tensor, y: torch.Tensor, cfg: RunConfig, teacher: nn.Module, student: nn.Module,
               device: torch.device, epochs: int, cached: bool, teacher_batch: int, seed: int,
               max_batches: int | None = None) -> float:
    """Seconds for `epochs` epochs of the strong loop, its data upload and (cached) its teacher pass included."""
    d, t = cfg.distill, cfg.train
    bf16 = fast_path(device, t).bf16  # the precision kdcore's fit uses on this device

    def amp():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    sync(device)
    start = time.perf_counter()
    conv = has_conv2d(student) or has_conv2d(teacher)
    # NHWC rows: a batch gathered along dim 0 and viewed as NCHW is channels_last with no copy
    xs = x.to(device).permute(0, 2, 3, 1).contiguous() if conv else x.to(device)
    ys = y.to(device)
    nchw = (lambda b: b.permute(0, 3, 1, 2)) if conv else (lambda b: b)
    for m in (teacher, student):
        m.to(device)
        if has_conv2d(m):
            m.to(memory_format=torch.channels_last)
    teacher.eval().requires_grad_(False)
    student.train()
    n, bs = len(ys), t.batch_size
    steps = math.ceil(n / bs) if max_batches is None else min(max_batches, math.ceil(n / bs))
    optimizer = fused_adam(student.parameters(), t.lr, t.weight_decay)
    schedule = cosine(optimizer, epochs * steps) if t.schedule == "cosine" else None
    if cached:
        with torch.no_grad(), amp():
            logits = torch.cat([teacher(nchw(xs[i:i + teacher_batch])).float() for i in range(0, n, teacher_batch)])
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    loss_sum = torch.zeros((), device=device)
    for _ in range(epochs):
        order = torch.randperm(n, generator=g, device=device)
        for s in range(steps):
            idx = order[s * bs:(s + 1) * bs]
            xb, yb = nchw(xs.index_select(0, idx)), ys.index_select(0, idx)
            if cached:
                t_logits = logits.index_select(0, idx)
            else:
                with torch.no_grad(), amp():
                    t_logits = teacher(xb)
            with amp():
                s_logits = student(xb)
                loss = ((1 - d.alpha) * F.cross_entropy(s_logits.float(), yb)
                        + d.alpha * soft_target_loss(s_logits.float(), t_logits.float(), d.temperature))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            loss_sum += loss.detach()
    loss_sum.item()  # the one host read: the epochs' loss, as a loop reports it at the end
    sync(device)
    return time.perf_counter() - start


# ---------------------------------------------------------------- timing


def spread(values: list[float]) -> str:
    return f"{(max(values) - min(values)) / statistics.median(values):.0%}"


def fmt_rate(values: list[float]) -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:,.0f}"
    return f"{med:,.0f} ({min(values):,.0f}–{max(values):,.0f})"


@dataclasses.dataclass
class Sides:
    """What each side needs for one run; run(side, max_batches) returns its seconds."""
    args: argparse.Namespace
    cfg: RunConfig
    data: BenchData
    device: torch.device
    teachers: dict  # side -> its own copy of the teacher (kdcore's fit turns its own to channels_last)
    fresh_student: object
    teacher_passes: list = dataclasses.field(default_factory=list)  # kdcore's timed runs' ways, where measured

    def run(self, side: str, epochs: int, max_batches: int | None = None) -> float:
        a, student, teacher = self.args, self.fresh_student(), self.teachers[side]
        if side in ("kdcore", "kdcore-beside"):
            data = self.data.splits
            if max_batches is not None:
                data = dataclasses.replace(data, train=first_n(data.train, max_batches * self.cfg.train.batch_size))
            with untimed_teacher_pass() if side == "kdcore-beside" else contextlib.nullcontext():
                passes = self.teacher_passes if side == "kdcore" and max_batches is None else None
                return kdcore_run(self.cfg, data, teacher, student, self.device, epochs, passes)
        if side == "tutorial":
            return plain_run(self.data.tutorial, self.cfg, teacher, student, self.device, epochs, a.workers, max_batches)
        tb = a.teacher_batch or (1024 if self.device.type == "cuda" else self.cfg.train.eval_batch_size)
        train = self.data.train
        if max_batches is not None:  # the warm-up's cache pass over no more than its batches
            train = first_n(train, max_batches * self.cfg.train.batch_size)
        return strong_run(train.x, train.y, self.cfg, teacher, student, self.device, epochs,
                          side == "strong-cached", tb, a.seed, max_batches)


def time_sides(sides: Sides, names: list[str], images: int) -> dict[str, list[float]]:
    """Images/s of each side over --repeats alternating runs, printed as they come."""
    args = sides.args
    for side in names:  # warm-up: a few batches each (allocator, kernels, worker start-up, file cache)
        sides.run(side, 1, max_batches=args.warmup_batches)
    rates: dict[str, list[float]] = {side: [] for side in names}
    print("\n run " + " ".join(f"{side + ' s':>16} {side + ' img/s':>20}" for side in names), flush=True)
    for r in range(1, args.repeats + 1):
        # flip the order every repeat, so drift in the machine's load hits every side alike
        order = names if r % 2 else names[::-1]
        secs = {side: sides.run(side, args.epochs) for side in order}
        for side in names:
            rates[side].append(images / secs[side])
        print(f"{r:>4} " + " ".join(f"{secs[s]:>16.2f} {rates[s][-1]:>20,.0f}" for s in names), flush=True)
    return rates


def report(args, device: torch.device, rates: dict[str, list[float]]) -> dict[str, dict]:
    """Prints the medians, spreads and kdcore's ratio to each peer; returns the ratios."""
    print(f"\n{'':>14} {'median img/s':>13} {'min':>9} {'max':>9} {'spread':>7}")
    for side, values in rates.items():
        print(f"{side:>14} {statistics.median(values):>13,.0f} {min(values):>9,.0f} {max(values):>9,.0f} "
              f"{spread(values):>7}")
    kd = rates["kdcore"]
    ratios = {}
    for peer in (p for p in rates if p != "kdcore"):
        ratio = statistics.median(kd) / statistics.median(rates[peer])
        pair = [k / p for k, p in zip(kd, rates[peer])]
        goal = peer_target(peer, device.type, args.epochs)
        met = ratio >= goal
        ratios[peer] = {"ratio": ratio, "per_run": pair, "target": goal, "met": met}
        print(f"kdcore / {PEER_LABELS[peer]}: {ratio:.2f}x (per-run ratios {min(pair):.2f}x–{max(pair):.2f}x); "
              f"target {goal:g}x on {device.type}: {'met' if met else 'NOT met'}")
    print("spread = (max - min) / median across runs")
    return ratios


def markdown_rows(args, label: str, data: BenchData, flags: str, rates: dict, ratios: dict) -> list[str]:
    peers = [p for p in rates if p != "kdcore"]
    head = (["device", "torch", "pair", "images", "batch", "epochs", "kdcore fast path", "kdcore images/s"]
            + [f"{p} images/s" for p in peers] + [f"kdcore / {p}" for p in peers] + ["date"])
    pair = f"{args.teacher} → {args.student}, {data.name}"
    cells = ([label, torch.__version__, pair, f"{len(data.train):,}", str(args.batch_size), str(args.epochs), flags,
              fmt_rate(rates["kdcore"])] + [fmt_rate(rates[p]) for p in peers]
             + [f"{ratios[p]['ratio']:.2f}x" for p in peers] + [datetime.date.today().isoformat()])
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), "| " + " | ".join(cells) + " |"]


# ---------------------------------------------------------------- main


def setup(args, device: torch.device) -> tuple[RunConfig, BenchData] | None:
    name = "mnist" if args.dataset == "mnist" else "cifar100"
    try:
        cfg = build_config({
            "dataset": {"name": name, "root": args.data_root},
            "teacher": {"arch": args.teacher},
            "student": {"arch": args.student},
            "train": {"batch_size": args.batch_size, "optimizer": "adam", "epochs": args.epochs,
                      "device": device.type, "seed": args.seed},
        }, args.overrides)
    except ConfigError as err:
        print(f"bad --set: {err}", file=sys.stderr)
        return None
    data = load_mnist(args, cfg) if args.dataset == "mnist" else load_cifar(args, cfg)
    return cfg, data


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    device = resolve_device(args.device)
    if device.type not in ("cpu", "cuda"):
        print(f"unsupported device {device}; use --device cpu or cuda", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False  # kdcore's fit turns it on for the process, and the strong loop
    built = setup(args, device)
    if built is None:
        return 2
    cfg, data = built
    shape = dict(num_classes=data.splits.num_classes, in_channels=data.splits.in_channels,
                 image_size=data.splits.image_size)
    torch.manual_seed(args.seed)
    teacher = create_model(args.teacher, **shape).to(device).eval()
    names = ["kdcore", *args.peers]
    teachers = {side: copy.deepcopy(teacher) for side in names}  # the tutorial loop keeps NCHW
    torch.manual_seed(args.seed + 1)
    student_init = {k: v.clone() for k, v in create_model(args.student, **shape).state_dict().items()}

    def fresh_student() -> nn.Module:
        m = create_model(args.student, **shape)
        m.load_state_dict(student_init)
        return m

    n = len(data.train)
    label = device_label(device)
    path = fast_path(device, cfg.train)
    flags = (f"precision {path.precision}, channels_last {path.channels_last}, fused optimizer {path.fused_optimizer}, "
             f"compile {path.compiled}")
    print(f"device: {label}; torch {torch.__version__}; {torch.get_num_threads()} torch threads; {os.cpu_count()} cores")
    if data.note:
        print(data.note)
    print(f"distil {args.teacher} -> {args.student} on {data.name}: {n:,} training images, batch {cfg.train.batch_size}, "
          f"Adam, {args.epochs} epoch(s) per run, {args.repeats} runs per side (alternating)")
    print(f"kdcore: fit(), {flags}; its time includes the one-off teacher-logit pass over the {n:,} images")
    print(f"CPU flags: {cpu_flags()}")
    if args.overrides:
        print(f"config overrides: {' '.join(args.overrides)}")
    if "tutorial" in args.peers:
        print(f"tutorial: per-image transforms, DataLoader(num_workers={args.workers}), fp32, "
              "teacher forward every batch, .item() every step")
    if {"strong", "strong-cached"} & set(args.peers):
        print(f"strong: data on the device, randperm + index_select, precision {path.precision}, channels_last convs, "
              "fused Adam, no host reads in the loop; strong-cached: the teacher's logits for all images first")

    sides = Sides(args, cfg, data, device, teachers, fresh_student)
    rates = time_sides(sides, names, n * args.epochs)
    for way in sides.teacher_passes:  # one line per timed run whose pass timed its two ways
        print(f"kdcore's teachers' pass kept {way}")
    ratios = report(args, device, rates)
    if args.markdown:
        print("\n" + "\n".join(markdown_rows(args, label, data, flags, rates, ratios)))
    if args.json:
        record = {"device": label, "torch": torch.__version__, "date": datetime.date.today().isoformat(),
                  "teacher": args.teacher, "student": args.student, "data": data.name, "note": data.note,
                  "images": n, "batch_size": args.batch_size, "epochs": args.epochs, "repeats": args.repeats,
                  "fast_path": flags, "overrides": args.overrides, "rates": rates, "ratios": ratios}
        with open(args.json, "a") as f:
            f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
