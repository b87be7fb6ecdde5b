"""Is the gain real? Runs shipped example configs over seeds and CPU kernel sets.

    .venv/bin/python bench/kd_gains.py examples/digits.yaml --seeds 0-9 --kernels default,avx2
    .venv/bin/python bench/kd_gains.py examples/fashion_mnist.yaml --seeds 0-2
    .venv/bin/python bench/kd_gains.py examples/digits.yaml --seeds 0-9 --set dataset.student_fraction=0.2
    .venv/bin/python bench/kd_gains.py ... --markdown docs/benchmarks.md   # also write the table there

Each (config, kernel set) is one `kdcore train CONFIG --seeds ... --json` in a fresh
process on a temporary store, so `ATEN_CPU_CAPABILITY` (read when torch loads) takes
effect: `default` leaves it unset (the best kernels this CPU has), `avx2` limits torch
to AVX2 kernels. A seed group trains one teacher (seeded with the first seed) and one
distilled student and one baseline per seed, as `kdcore train --seeds` does.

Reported per row: teacher, baseline and distilled student test accuracy as mean ± std
over seeds; the KD gain's mean ± std with its Student-t 95% interval across seeds; how
many seeds' own paired interval excludes zero; and the wall time.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from bench.machine import cpu_model  # noqa: E402
from bench.markdown import old_block, put_block  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KERNELS = {"default": None, "avx2": "avx2", "avx512": "avx512"}
BEGIN, END = "<!-- kd_gains:begin -->", "<!-- kd_gains:end -->"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="+", help="YAML configs, e.g. examples/digits.yaml")
    p.add_argument("--seeds", default="0-4", help="seeds, e.g. 0-9 or 0,1,2 (default 0-4)")
    p.add_argument("--kernels", default="default", help=f"comma-separated CPU kernel sets: {', '.join(KERNELS)}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key in every run")
    p.add_argument("--teacher-per-seed", action="store_true", help="train a teacher per seed")
    p.add_argument("--markdown", metavar="FILE", help="write the table between the kd_gains markers of FILE")
    p.add_argument("--label", default="", help="a label for the rows (default: the config's file name)")
    return p.parse_args(argv)


def run_group(config: str, seeds: str, kernel: str, overrides: list[str], teacher_per_seed: bool) -> dict:
    env = dict(os.environ)
    env.pop("ATEN_CPU_CAPABILITY", None)
    if KERNELS[kernel]:
        env["ATEN_CPU_CAPABILITY"] = KERNELS[kernel]
    with tempfile.TemporaryDirectory(prefix="kd_gains_") as tmp:
        cmd = [sys.executable, "-m", "kdcore", "--db", f"sqlite:///{tmp}/runs.db", "train", config,
               "--seeds", seeds, "--json"]
        for item in overrides:
            cmd += ["--set", item]
        if teacher_per_seed:
            cmd.append("--teacher-per-seed")
        started = time.perf_counter()
        done = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{tail}")
    result = json.loads(done.stdout)
    result["seconds"] = seconds
    return result


def _mean_std(a: dict | None) -> str:
    if not a:
        return "-"
    std = f" ± {100 * a['std']:.2f}" if a.get("std") is not None else ""
    return f"{100 * a['mean']:.2f}{std}"


def _gain(a: dict | None) -> str:
    if not a:
        return "-"
    text = f"{100 * a['mean']:+.2f}"
    if a.get("std") is not None:
        low, high = a["ci95"]
        text += f" ± {100 * a['std']:.2f} [{100 * low:+.2f}, {100 * high:+.2f}]"
    return text


def row(label: str, kernel: str, result: dict) -> str:
    agg = result["aggregate"]
    runs = result["runs"]
    def real(r: dict, sign: int) -> bool:
        ci, p = r.get("kd_gain_ci95"), r.get("kd_gain_p_value")
        return bool(ci) and p is not None and p < 0.05 and (ci[0] > 0 if sign > 0 else ci[1] < 0)

    up, down = sum(real(r, 1) for r in runs), sum(real(r, -1) for r in runs)
    seeds = [r["config"]["train"]["seed"] for r in runs]
    per_seed = " ".join(f"{100 * r['kd_gain']:+.2f}" for r in runs if r.get("kd_gain") is not None)
    test_images = runs[0].get("test_images") if runs else None
    verdict = "above zero" if agg["kd_gain"] and agg["kd_gain"].get("ci95") and agg["kd_gain"]["ci95"][0] > 0 else (
        "below zero" if agg["kd_gain"] and agg["kd_gain"].get("ci95") and agg["kd_gain"]["ci95"][1] < 0 else "includes zero")
    return (f"| {label} | {kernel} | {len(runs)} ({min(seeds)}–{max(seeds)}) | {test_images:,} | "
            f"{_mean_std(agg['teacher_test_acc'])} | {_mean_std(agg['baseline_test_acc'])} | "
            f"{_mean_std(agg['student_test_acc'])} | {_gain(agg['kd_gain'])} ({verdict}) | {up} up, {down} down | "
            f"{per_seed} | {result['seconds'] / 60:.1f} min |")


HEADER = ("| config | kernels | seeds | test images | teacher % | baseline % | distilled % | "
          "KD gain, points: mean ± std [95% interval] | seeds whose own paired test is real | gain per seed | wall |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def write_markdown(path: Path, rows: list[str], command: str) -> None:
    """Puts the rows between the kd_gains markers of `path`, replacing rows of the same config and kernels,
    and lists every command that wrote rows there."""
    text = path.read_text() if path.exists() else ""
    stamp = f"{datetime.date.today():%Y-%m-%d}, {cpu_model()}, {os.cpu_count()} cores"
    try:
        import torch

        stamp += f", torch {torch.__version__}"
    except ImportError:
        pass
    old = old_block(text, BEGIN, END)
    kept = [line for line in old if line.startswith("| ") and not line.startswith("| config")]
    block_rows = _merge(kept, rows)
    entry = f"- `{command}` ({stamp})"
    commands = [c for c in old if c.startswith("- ") and not c.startswith(f"- `{command}`")] + [entry]
    put_block(path, BEGIN, END, f"{HEADER}\n" + "\n".join(block_rows) + "\n\nWritten by:\n" + "\n".join(commands))


def _merge(kept: list[str], new: list[str]) -> list[str]:
    """Rows keyed by (config, kernels): a new row replaces an old one with the same key."""
    def key(line: str) -> tuple[str, str]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        return cells[0], cells[1]

    merged = {key(line): line for line in kept}
    for line in new:
        merged[key(line)] = line
    return list(merged.values())


def main(argv=None) -> int:
    args = parse_args(argv)
    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    unknown = [k for k in kernels if k not in KERNELS]
    if unknown:
        raise SystemExit(f"unknown kernel set(s) {unknown}; choose from {', '.join(KERNELS)}")
    rows = []
    print(HEADER)
    for config in args.configs:
        label = args.label or Path(config).stem + "".join(f" {s}" for s in args.set)
        for kernel in kernels:
            print(f"running {config} seeds {args.seeds} with {kernel} kernels…", file=sys.stderr, flush=True)
            result = run_group(config, args.seeds, kernel, args.set, args.teacher_per_seed)
            rows.append(row(label, kernel, result))
            print(rows[-1], flush=True)
    if args.markdown:
        command = "python bench/kd_gains.py " + shlex.join(sys.argv[1:] if argv is None else argv)
        write_markdown(Path(args.markdown), rows, re.sub(r"\s+", " ", command).strip())
        print(f"written to {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
