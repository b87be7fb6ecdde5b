"""Hinton et al. (2015), section 3, side by side with the paper: test errors out of 10,000, and the share of the
teacher-baseline gap that distillation closes, over seeds.

    .venv/bin/python bench/hinton.py                                    # examples/mnist_hinton.yaml, seeds 0-2
    .venv/bin/python bench/hinton.py --seeds 0-2 --markdown docs/benchmarks.md

One `kdcore train CONFIG --seeds ... --json` in a fresh process on a temporary store (bench/kd_gains.py's
run_group): one teacher (trained with the first seed), then a distilled student and a baseline per seed.
The gap closed is (baseline errors - student errors) / (baseline errors - teacher errors) per seed; its mean
carries a Student-t 95% interval across seeds, and it means little when the teacher is not clearly better
than the baseline (the table says how many errors apart they are).
"""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from bench.kd_gains import run_group  # noqa: E402
from bench.machine import cpu_model  # noqa: E402
from bench.markdown import put_block  # noqa: E402
from kdcore.stats import across_seeds  # noqa: E402

PAPER = {"teacher": 67, "baseline": 146, "student": 74}  # test errors, Hinton, Vinyals & Dean (2015), section 3
BEGIN, END = "<!-- hinton:begin -->", "<!-- hinton:end -->"


def errors(acc: float, images: int) -> int:
    return round((1 - acc) * images)


def _spread(values: list[float], scale: float = 1.0, digits: int = 1, sign: str = "") -> str:
    s = across_seeds(values)
    if s is None:
        return "-"
    text = f"{scale * s.mean:{sign}.{digits}f}"
    if s.std is not None:
        text += (f" ± {scale * s.std:.{digits}f} [{scale * s.ci95[0]:{sign}.{digits}f}, "
                 f"{scale * s.ci95[1]:{sign}.{digits}f}]")
    return text


def table(result: dict) -> str:
    runs = [r for r in result["runs"] if r["status"] == "completed"]
    images = runs[0]["test_images"]
    rows, gaps = [], []
    for r in runs:
        t, s, b = (errors(r[f"{k}_test_acc"], images) for k in ("teacher", "student", "baseline"))
        gap = (b - s) / (b - t) if b != t else float("nan")
        gaps.append(gap)
        rows.append(f"| {r['config']['train']['seed']} | {t} | {b} | {s} | {b - s:+d} | "
                    f"{'-' if b == t else f'{100 * gap:.0f}%'} | {100 * r['kd_gain']:+.2f} "
                    f"[{100 * r['kd_gain_ci95'][0]:+.2f}, {100 * r['kd_gain_ci95'][1]:+.2f}], p = {r['kd_gain_p_value']:.2g} |")
    per_model = {k: [errors(r[f"{k}_test_acc"], images) for r in runs] for k in ("teacher", "baseline", "student")}
    lines = [
        "| seed | teacher errors | baseline errors | distilled errors | fixed by distillation | gap closed | KD gain, points [paired 95% interval] |",
        "|---|---|---|---|---|---|---|",
        f"| the paper | {PAPER['teacher']} | {PAPER['baseline']} | {PAPER['student']} | "
        f"{PAPER['baseline'] - PAPER['student']:+d} | "
        f"{100 * (PAPER['baseline'] - PAPER['student']) / (PAPER['baseline'] - PAPER['teacher']):.0f}% | |",
        *rows,
        f"| mean ± std [95% interval] over {len(runs)} seeds | {_spread(per_model['teacher'])} | "
        f"{_spread(per_model['baseline'])} | {_spread(per_model['student'])} | | {_spread(gaps, 100, 0)}% | "
        f"{_spread([r['kd_gain'] for r in runs], 100, 2, sign='+')} |",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="?", default="examples/mnist_hinton.yaml")
    p.add_argument("--seeds", default="0-2")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--markdown", metavar="FILE", help="write the table between the hinton markers of FILE")
    args = p.parse_args(argv)
    result = run_group(args.config, args.seeds, "default", args.set, teacher_per_seed=False)
    text = table(result)
    print(text)
    if args.markdown:
        import torch

        command = "python bench/hinton.py " + shlex.join(sys.argv[1:] if argv is None else argv)
        stamp = (f"{datetime.date.today():%Y-%m-%d}, {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                 f"{result['seconds'] / 60:.0f} min")
        put_block(Path(args.markdown), BEGIN, END, f"{text}\n\nWritten by `{command}` ({stamp}).")
        print(f"written to {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
