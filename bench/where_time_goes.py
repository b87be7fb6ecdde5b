"""Where a distillation fit's time goes, per part of the step, measured with torch.profiler.

    .venv/bin/python bench/where_time_goes.py                       # small_cnn -> tiny_cnn on MNIST, batch 128
    .venv/bin/python bench/where_time_goes.py --device cuda         # the same on a GPU (host time of each part)
    .venv/bin/python bench/where_time_goes.py --set train.compile=true   # with the student's step compiled
    .venv/bin/python bench/where_time_goes.py --markdown docs/benchmarks.md

The setting is bench/throughput.py's (the MNIST training split, batch 128, Adam, soft
targets at T = 4, alpha = 0.9), with the validation split kept this time so evaluation
shows. Two cases: the teacher's logits cached once (no augmentation, kdcore's default)
and the teacher run on every batch (crop and flip on, so no cache), each with the fast
path off (fp32, NCHW, a loop over the parameters in the optimizer step) and on
(train.amp, train.channels_last and train.fused_optimizer, the defaults; bf16 only where
the CPU computes it natively). In both, the cached teacher logits are filled over the
first epoch's batches in a second thread beside the student. The trainer marks
its parts with kdcore.spans.region; each part's share is its inclusive CPU time over
the fit's wall time, and "data and the rest" is what the marked parts leave. The
profiler adds its own cost, so read the shares, not the seconds. On CUDA a part's CPU
time is the host's time to launch it: in a launch-bound step that is where the time goes.
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import torch  # noqa: E402

from bench.machine import cpu_model  # noqa: E402
from bench.markdown import put_block  # noqa: E402
from kdcore.configure import build_config  # noqa: E402
from kdcore.data import load_dataset  # noqa: E402
from kdcore.engine import trainer as trainer_module  # noqa: E402
from kdcore.engine.events import no_callback  # noqa: E402
from kdcore.engine.teacher_cache import TeacherLogitCache  # noqa: E402
from kdcore.engine.trainer import fit  # noqa: E402
from kdcore.models import create_model  # noqa: E402

PARTS = {
    "kdcore.teacher_cache": "teacher logits cached (once)",
    "kdcore.teacher_wait": "student waiting for the teachers' thread",
    "kdcore.teacher_pass": "teacher pass (every batch)",
    "kdcore.student_forward": "student forward",
    "kdcore.loss_terms": "loss terms",
    "kdcore.backward": "backward",
    "kdcore.optimizer_step": "optimizer step",
    "kdcore.step_report": "step reports (host reads)",
    "kdcore.epoch_end": "epoch end: evaluation, checkpoints",
}
BEGIN, END = "<!-- where_time_goes:begin -->", "<!-- where_time_goes:end -->"
FAST_PATH_OFF = {"amp": False, "channels_last": False, "fused_optimizer": False}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--teacher", default="small_cnn")
    p.add_argument("--student", default="tiny_cnn")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a train key for every case, e.g. train.compile=true (repeatable)")
    p.add_argument("--markdown", metavar="FILE", help="write the table between the where_time_goes markers of FILE")
    return p.parse_args(argv)


def profile_fit(args, augment: bool, fast: bool) -> dict[str, float]:
    cfg = build_config({"dataset": {"name": "mnist", "root": args.data_root,
                                    "augment": {"crop_padding": 2, "flip": True} if augment else {}},
                        "teacher": {"arch": args.teacher}, "student": {"arch": args.student},
                        "train": {"batch_size": 128, "optimizer": "adam", "epochs": args.epochs, "device": args.device,
                                  **({} if fast else FAST_PATH_OFF), **train_overrides(args.overrides)}})
    device = torch.device(args.device)
    data = load_dataset(cfg.dataset)
    shape = dict(num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size)
    torch.manual_seed(0)
    teacher = create_model(args.teacher, **shape).eval()
    student = create_model(args.student, **shape)
    caches = []

    class RecordedCache(TeacherLogitCache):  # the profiler sees one thread; the cache clocks its own
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            caches.append(self)

    trainer_module.TeacherLogitCache = RecordedCache
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        fit(student, data, phase="student", epochs=args.epochs, train_cfg=cfg.train, device=device,
            teachers=[teacher], distill_cfg=cfg.distill, augment=cfg.dataset.augment, callback=no_callback)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    seconds = {e.key: e.cpu_time_total / 1e6 for e in prof.key_averages() if e.key in PARTS}
    trainer_module.TeacherLogitCache = TeacherLogitCache
    seconds["wall"] = wall
    seconds["beside"] = []
    for cache in caches:
        seconds["kdcore.teacher_cache"] = cache.busy_s
        if cache.background:  # it overlaps the student's parts: kept out of "the rest"
            seconds["beside"] = ["kdcore.teacher_cache"]
    return seconds


def train_overrides(pairs: list[str]) -> dict:
    """--set train.KEY=VALUE pairs as the train section's keys (true/false and numbers parsed as YAML does)."""
    import yaml

    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if not key.startswith("train.") or not value:
            raise SystemExit(f"--set takes train.KEY=VALUE, got {pair!r}")
        out[key.removeprefix("train.")] = yaml.safe_load(value)
    return out


def layout_seconds(args, batches: int = 200) -> dict[str, float]:
    """The teacher's forward over the same batches in NCHW and in channels_last, fp32 and bf16."""
    cfg = build_config({"dataset": {"name": "mnist", "root": args.data_root}})
    data = load_dataset(cfg.dataset)
    teacher = create_model(args.teacher, num_classes=data.num_classes, in_channels=data.in_channels,
                           image_size=data.image_size).eval()
    xs = [data.train.x[i * 128:(i + 1) * 128] for i in range(batches)]
    out = {}
    for layout, fmt, bf16 in (("NCHW", torch.contiguous_format, False), ("channels_last", torch.channels_last, False),
                              ("channels_last bf16", torch.channels_last, True)):
        model = teacher.to(memory_format=fmt)
        batch = [x.contiguous(memory_format=fmt) for x in xs]
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(batch[0])  # warm-up
            start = time.perf_counter()
            for x in batch:
                model(x)
        out[layout] = time.perf_counter() - start
    return out


def table(results: dict[str, dict[str, float]]) -> list[str]:
    cases = list(results)
    rows = [f"| part | {' | '.join(cases)} |", "|---|" + "---|" * len(cases)]
    for key, label in PARTS.items():
        cells = []
        for case in cases:
            r = results[case]
            beside = " (beside)" if key in r["beside"] else ""
            cells.append(f"{100 * r[key] / r['wall']:.1f}%{beside}" if r.get(key) else "-")
        rows.append(f"| {label} | {' | '.join(cells)} |")
    rest = [100 * (1 - sum(v for k, v in results[c].items() if k in PARTS and k not in results[c]["beside"])
                   / results[c]["wall"]) for c in cases]
    rows.append(f"| data and the rest | {' | '.join(f'{v:.1f}%' for v in rest)} |")
    walls = " | ".join(f"{results[c]['wall']:.1f} s" for c in cases)
    rows.append(f"| wall time of the fit, under the profiler | {walls} |")
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    results = {}
    for augment, case in ((False, "teacher logits cached"), (True, "teacher every batch (crop + flip)")):
        for fast in (False, True):
            results[f"{case}, fast path {'on' if fast else 'off'}"] = profile_fit(args, augment, fast)
    rows = table(results)
    if any(r["beside"] for r in results.values()):
        rows += ["", "(beside): ran in a second thread at the same time as the student's steps, so its share "
                     "overlaps the others and is not counted in \"data and the rest\"; that thread's time is "
                     "clocked by the cache itself, as the profiler records one thread."]
    if args.device == "cpu":  # the CPU's layouts and bf16
        layouts = layout_seconds(args)
        nchw = layouts["NCHW"]
        rows += ["", "The teacher's forward over 200 batches of 128 plain MNIST images: "
                 + ", ".join(f"{s:.2f} s in {name} ({nchw / s:.2f}x)" for name, s in layouts.items()) + "."]
    print("\n".join(rows))
    if args.markdown:
        command = "python bench/where_time_goes.py " + " ".join(sys.argv[1:] if argv is None else argv)
        where = torch.cuda.get_device_name() if args.device == "cuda" else cpu_model()
        stamp = (f"{datetime.date.today():%Y-%m-%d}, {where}, {os.cpu_count()} cores, "
                 f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, "
                 f"{args.teacher} -> {args.student}, {args.epochs} epoch(s)")
        command = re.sub(r"\s+", " ", command).strip()
        put_block(Path(args.markdown), BEGIN, END, "\n".join(rows) + f"\n\nWritten by `{command}` ({stamp}).")
        print(f"written to {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
