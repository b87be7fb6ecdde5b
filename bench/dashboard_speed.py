"""Does a run launched from the dashboard train as fast as the same run from the CLI?

    .venv/bin/python bench/dashboard_speed.py                     # idle machine, 3 alternating repeats
    .venv/bin/python bench/dashboard_speed.py --load 2 --repeats 1   # with 2 busy processes beside it
    .venv/bin/python bench/dashboard_speed.py --markdown docs/benchmarks.md

Three ways to run examples/digits.yaml, each with KDCORE_CPU_THREADS threads (default 1,
the dashboard worker's default on 2 cores), alternated --repeats times:

* cli: `kdcore train examples/digits.yaml` in its own process.
* dashboard, worker process: `streamlit run app.py` as `make run` starts it (its worker is a
  `kdcore worker` child process); headless Chromium clicks "Run the demo" on Home and stays
  on Live, which rereads the store every second, as a user would watch it.
* dashboard, worker thread: the same with KDCORE_LOCAL_WORKERS=thread, the worker a thread
  of the page server's own process.

Reported: the run's wall time (start to finish, as stored), each phase's median images/s
over the stored step windows (a window covers the steps, not the evaluation, checkpoints and
reporting between them), medians over repeats, and the speed against the CLI: the CLI's wall
time over the side's. `--load N` starts N processes that spin on the CPU for the whole bench,
the way other jobs load a shared machine.
"""
from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from kdcore.store import ACTIVE, Store  # noqa: E402
from bench.machine import print_table  # noqa: E402
from ui.serve import CHROMIUM_ARGS, serve_dashboard  # noqa: E402

CONFIG = "examples/digits.yaml"
PHASES = ("teacher", "student", "baseline")


def _spin() -> None:
    while True:
        pass


def _speeds(store: Store, run_id: int) -> dict:
    run = store.get_run(run_id)
    assert run.status == "completed", f"run {run_id} ended {run.status}: {run.error}"
    steps = store.metrics_frame([run_id], kind="step", names=["images_per_s"])
    out = {p: float(steps.loc[steps["phase"] == p, "value"].median()) for p in PHASES}
    out["wall_s"] = run.duration_s
    return out


def run_cli(env: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{tmp}/runs.db"
        subprocess.run([sys.executable, "-m", "kdcore", "--db", db, "train", CONFIG, "--json"], cwd=ROOT, env=env,
                       check=True, capture_output=True)
        store = Store(db)
        return _speeds(store, store.list_runs()[0].id)


def run_dashboard(env: dict, workers: str) -> dict:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{tmp}/runs.db"
        extra = {k: env[k] for k in ("KDCORE_CPU_THREADS",) if k in env}
        extra["KDCORE_LOCAL_WORKERS"] = workers
        with serve_dashboard(db, env=extra, start_timeout=600) as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.get_by_role("button", name="Run the demo").click(timeout=600_000)
            page.get_by_role("heading", name="Live").first.wait_for()
            store = Store(db)
            while not store.list_runs() or store.list_runs()[0].status in ACTIVE:
                time.sleep(0.5)
            browser.close()
            return _speeds(store, store.list_runs()[0].id)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="KDCORE_CPU_THREADS for every side (default 1)")
    ap.add_argument("--load", type=int, default=0, help="busy processes spinning beside the bench")
    ap.add_argument("--markdown", metavar="FILE", help="append the table to FILE")
    args = ap.parse_args(argv)
    env = dict(os.environ, KDCORE_CPU_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.load)]
    for s in spinners:
        s.start()
    sides = {"cli": lambda: run_cli(env), "dashboard, worker process": lambda: run_dashboard(env, "process"),
             "dashboard, worker thread": lambda: run_dashboard(env, "thread")}
    results: dict[str, list[dict]] = {name: [] for name in sides}
    try:
        for repeat in range(args.repeats):
            for name, side in sides.items():
                results[name].append(side())
                print(f"repeat {repeat + 1} {name}: {json.dumps(results[name][-1])}", file=sys.stderr, flush=True)
    finally:
        for s in spinners:
            s.terminate()
    med = {name: {k: statistics.median(r[k] for r in rs) for k in (*PHASES, "wall_s")} for name, rs in results.items()}
    lines = ["| side | run wall s | speed vs CLI | teacher img/s | student img/s | baseline img/s |",
             "|---|---|---|---|---|---|"]
    for name, m in med.items():
        lines.append(f"| {name} | {m['wall_s']:.1f} | {med['cli']['wall_s'] / m['wall_s']:.2f}x | {m['teacher']:,.0f} | "
                     f"{m['student']:,.0f} | {m['baseline']:,.0f} |")
    header = (f"{datetime.date.today()}, {args.threads} thread(s), load {args.load}, medians of {args.repeats}: "
              f"`python bench/dashboard_speed.py --repeats {args.repeats} --threads {args.threads} --load {args.load}`")
    print_table(header, lines, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
