"""The thread policy, measured: spinning or sleeping OpenMP threads, on an idle CPU and beside a busy process.

    .venv/bin/python bench/thread_policy.py
    .venv/bin/python bench/thread_policy.py --markdown docs/benchmarks.md

Each case is a whole `kdcore train` command in a fresh process (the wait policy is fixed when
torch loads): the Hinton MNIST example with --epochs epochs per phase (default 1). "Busy" is a
second process spinning on one core (`while True: pass`), started before the command or
--later seconds after it, once kdcore has chosen its policy. The cases run in turn, --repeats
times; the table gives the median wall time of the training (the run's `seconds`) with the
min-max, and how many times slower than the idle machine with kdcore's default.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from bench.machine import cpu_flags, cpu_model  # noqa: E402
from bench.markdown import put_block  # noqa: E402

BEGIN, END = "<!-- thread_policy:begin -->", "<!-- thread_policy:end -->"
WAITS = {"spin": "spinning", "sleep": "sleeping"}
CONFIG = ROOT / "examples" / "mnist_hinton.yaml"

# name, KDCORE_THREADS_WAIT, KDCORE_CPU_WATCH, when the busy process starts (None: never, 0: before)
CASES = [
    ("idle, kdcore's default (spins)", "auto", "1", None),
    ("idle, sleeping threads (OMP_WAIT_POLICY=PASSIVE)", "sleep", "1", None),
    ("busy from the start, kdcore's default (sleeps)", "auto", "1", 0),
    ("busy from the start, spinning threads", "spin", "0", 0),
    ("busy later, kdcore's default (spins, gives a core back)", "auto", "1", "later"),
    ("busy later, spinning threads, no core given back", "spin", "0", "later"),
    ("busy later, sleeping threads", "sleep", "1", "later"),
]


def run_case(wait: str, watch: str, busy, epochs: int, later_s: float, threads: int) -> tuple[float, str]:
    env = {**os.environ, "KDCORE_THREADS_WAIT": wait, "KDCORE_CPU_WATCH": watch,
           "KDCORE_CPU_THREADS": str(threads)}
    for inherited in ("OMP_WAIT_POLICY", "KDCORE_CHOSE_OMP_WAIT_POLICY"):
        env.pop(inherited, None)
    burner = None
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "kdcore", "--db", f"sqlite:///{tmp}/runs.db", "train", str(CONFIG),
               "--set", f"teacher.epochs={epochs}", "--set", f"train.epochs={epochs}", "--json"]
        try:
            if busy == 0:
                burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                time.sleep(0.5)
            proc = subprocess.Popen(cmd, cwd=ROOT, env={**env, "KDCORE_ARTEFACT_ROOT": tmp},
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            if busy == "later":
                time.sleep(later_s)
                burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            out, _ = proc.communicate()
        finally:
            if burner is not None:
                burner.kill()
                burner.wait()
    if proc.returncode != 0:
        raise SystemExit(f"kdcore train failed ({proc.returncode}): {' '.join(cmd)}")
    run = json.loads(out)
    summary = run.get("summary", run)
    return float(summary["seconds"]), summary.get("cpu_threads_wait", "?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--later", type=float, default=6.0, help="seconds before a 'busy later' process starts")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--markdown", type=Path, help="write the table into this file between its markers")
    args = parser.parse_args()

    times: dict[str, list[float]] = {name: [] for name, *_ in CASES}
    chosen: dict[str, str] = {}
    for repeat in range(args.repeats):
        for name, wait, watch, busy in CASES:
            seconds, policy = run_case(wait, watch, busy, args.epochs, args.later, args.threads)
            times[name].append(seconds)
            chosen[name] = policy
            print(f"[{repeat + 1}/{args.repeats}] {name}: {seconds:.1f} s (threads {policy})", flush=True)

    reference = statistics.median(times[CASES[0][0]])
    rows = ["| case | threads waited by | training s, median (min-max) | x idle default |", "|---|---|---|---|"]
    for name, *_ in CASES:
        t = times[name]
        rows.append(f"| {name} | {WAITS.get(chosen[name], chosen[name])} | {statistics.median(t):.1f} ({min(t):.1f}-{max(t):.1f}) | "
                    f"{statistics.median(t) / reference:.2f}x |")
    header = (f"Measured {datetime.date.today()} on {cpu_model()} ({cpu_flags()}), {args.threads} torch threads, "
              f"`examples/mnist_hinton.yaml` with {args.epochs} epoch(s) per phase, {args.repeats} repeats "
              f"in turn, busy process started {args.later:g} s after the command in the 'later' cases:")
    body = header + "\n\n" + "\n".join(rows)
    print(body)
    if args.markdown:
        put_block(args.markdown, BEGIN, END, body)


if __name__ == "__main__":
    main()
