"""Each fast-path option on its own: what it saves on this CPU, per step of the models it touches.

    .venv/bin/python bench/fast_path_parts.py
    .venv/bin/python bench/fast_path_parts.py --markdown docs/benchmarks.md

Measured in one process, each figure the best of --repeats timed loops (after a warm-up):
* a teacher's inference pass (small_cnn, 28x28 one-channel images) in images/s, by layout,
  precision, batch-norm folding and batch size: what the cached-logit pass and evaluation run;
* a training step (forward, backward, optimizer) in ms, for tiny_cnn, small_cnn and the
  1200-1200 MLP of the Hinton example, with each option added in turn;
* the same step with 1 and with 2 torch threads, which decides whether a second thread
  may run the teacher beside the student;
* torch.compile (inductor): its one-off compile time and its step, against eager.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.machine import cpu_flags, cpu_model  # noqa: E402
from bench.markdown import put_block  # noqa: E402
from kdcore.engine.teacher_cache import folded_for_inference  # noqa: E402
from kdcore.models import create_model  # noqa: E402

BEGIN, END = "<!-- fast_path_parts:begin -->", "<!-- fast_path_parts:end -->"
CL = torch.channels_last
SHAPE = dict(num_classes=10, in_channels=1, image_size=28)
STUDENTS = {"tiny_cnn": ("tiny_cnn", {}), "small_cnn": ("small_cnn", {}),
            "MLP 1200-1200": ("mlp", {"hidden": [1200, 1200], "dropout": 0.2})}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="timed loops per figure; the best is kept (default 3)")
    p.add_argument("--steps", type=int, default=30, help="steps per timed loop (default 30)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (about a minute)")
    p.add_argument("--markdown", metavar="FILE", help="write the tables between the fast_path_parts markers of FILE")
    return p.parse_args(argv)


def best_seconds(fn, steps: int, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def teacher_rows(args) -> list[str]:
    torch.manual_seed(0)
    teacher = create_model("small_cnn", **SHAPE).eval()
    folded = folded_for_inference(teacher)
    rows = ["| teacher pass (small_cnn, inference) | batch 128 | batch 256 | batch 512 |", "|---|---|---|---|"]
    cases = [("NCHW, fp32", teacher, torch.contiguous_format, False),
             ("channels_last, fp32", teacher, CL, False),
             ("channels_last, bf16", teacher, CL, True),
             ("channels_last, bf16, batch norms folded (kdcore's cache pass)", folded, CL, True)]
    for label, model, fmt, bf16 in cases:
        model = model.to(memory_format=fmt)
        cells = []
        for batch in (128, 256, 512):
            x = torch.randn(batch, 1, 28, 28).contiguous(memory_format=fmt)

            def forward():
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    model(x)
            cells.append(f"{batch / best_seconds(forward, args.steps, args.repeats):,.0f} img/s")
        rows.append(f"| {label} | {' | '.join(cells)} |")
        print(rows[-1], flush=True)
    return rows


def step_fn(name: str, channels_last: bool, bf16: bool, fused: bool, compiled: bool = False):
    arch, options = STUDENTS[name]
    torch.manual_seed(0)
    model = create_model(arch, **SHAPE, **options)
    conv = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    fmt = CL if channels_last and conv else torch.contiguous_format
    model = model.to(memory_format=fmt)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
    if compiled:
        model.compile()
    x = torch.randn(128, 1, 28, 28).contiguous(memory_format=fmt)
    return training_step(model, optimizer, x, torch.randint(0, 10, (128,)), bf16)


def training_step(model, optimizer, x, y, bf16: bool):
    """One forward, backward and optimizer step on the batch (x, y), as a function to time."""
    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def step_rows(args) -> list[str]:
    names = list(STUDENTS)
    rows = [f"| training step, batch 128 (ms) | {' | '.join(names)} |", "|---|" + "---|" * len(names)]
    cases = [("NCHW, fp32, Adam loop (fast path off)", False, False, False),
             ("+ channels_last", True, False, False),
             ("+ fused Adam", True, False, True),
             ("+ bf16 autocast (fast path on)", True, True, True)]
    for label, cl, bf16, fused in cases:
        cells = [f"{1000 * best_seconds(step_fn(n, cl, bf16, fused), args.steps, args.repeats):.2f}" for n in names]
        rows.append(f"| {label} | {' | '.join(cells)} |")
        print(rows[-1], flush=True)
    before = torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        cells = [f"{1000 * best_seconds(step_fn(n, True, True, True), args.steps, args.repeats):.2f}" for n in names]
        rows.append(f"| fast path on, {threads} torch thread{'s' if threads > 1 else ''} | {' | '.join(cells)} |")
        print(rows[-1], flush=True)
    torch.set_num_threads(before)
    return rows


def compile_rows(args) -> list[str]:
    rows = ["| torch.compile, fast path on | first step, compiling (s; less when inductor's on-disk cache has it) "
            "| step (ms) | eager step (ms) |", "|---|---|---|---|"]
    for name in STUDENTS:
        step = step_fn(name, True, True, True, compiled=True)
        start = time.perf_counter()
        step()
        compile_s = time.perf_counter() - start
        compiled = best_seconds(step, args.steps, args.repeats)
        eager = best_seconds(step_fn(name, True, True, True), args.steps, args.repeats)
        rows.append(f"| {name} | {compile_s:.1f} | {1000 * compiled:.2f} | {1000 * eager:.2f} |")
        print(rows[-1], flush=True)
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    print(f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; {cpu_flags()}")
    rows = teacher_rows(args) + [""] + step_rows(args)
    if not args.no_compile:
        rows += [""] + compile_rows(args)
    if args.markdown:
        command = "python bench/fast_path_parts.py " + " ".join(sys.argv[1:] if argv is None else argv)
        stamp = (f"{datetime.date.today():%Y-%m-%d}, {cpu_model()}, {os.cpu_count()} cores, "
                 f"{torch.get_num_threads()} torch threads, {cpu_flags()}, torch {torch.__version__}")
        put_block(Path(args.markdown), BEGIN, END, "\n".join(rows) + f"\n\nWritten by `{command.strip()}` ({stamp}).")
        print(f"written to {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
