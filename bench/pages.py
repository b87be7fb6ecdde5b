"""How long a person waits for the dashboard's pages, measured in headless Chromium.

    .venv/bin/python bench/pages.py                          # 1,000 runs, 5 visits of each page
    .venv/bin/python bench/pages.py --runs 1000 --repeats 5 --markdown docs/benchmarks.md

1. A real small run: `kdcore train examples/digits.yaml --seeds 0,1` with one epoch per phase, in a
   template store (a seed group of two real runs, their metric rows and summaries).
2. The bench store: those two runs' records copied --runs times through kdcore's store API
   (create_run, mark_running, add_metrics, finish_run), each pair in its own group.
3. Cold load: the dashboard started as `make run` starts it (`python -m ui.launch`); the moment it
   answers /_stcore/health a fresh browser opens it. Timed from the navigation: the first visible text
   in the page's main area, and Home ready ("Run the demo" drawn, script run over).
4. Runs: from clicking "Runs" in the sidebar (Home open before) until the table's caption
   ("… runs shown") is drawn and the script run is over.
5. Report: from clicking "Report" (Home open before) until the report's first chart is drawn in its frame.
6. The demo: from clicking "Run the demo" on Home, the dashboard's worker idle, until the Live page draws
   the run's first points.

Medians and maxima over --repeats visits; the cold load is one per dashboard start (--cold-repeats).
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
from kdcore.configure import build_config  # noqa: E402
from kdcore.store import Store  # noqa: E402
from bench.machine import cpu_model, print_table  # noqa: E402
from ui.serve import CHROMIUM_ARGS, serve_dashboard  # noqa: E402

IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
MAIN_HAS_TEXT = ("() => { const m = document.querySelector('[data-testid=\"stMain\"]');"
                 " return !!m && m.innerText.trim().length > 0; }")
LIVE_POINTS = ("() => Array.from(document.querySelectorAll('.js-plotly-plot'))"  # plotly's own count of points drawn
               ".some(el => (el._fullData || []).some(t => (t._length || 0) > 0))")
REPORT_CHART = ("() => Array.from(document.querySelectorAll('iframe')).some(f => {"
                " try { return f.contentDocument.querySelector('.js-plotly-plot .main-svg'); }"
                " catch (e) { return false; } })")


def template(folder: Path) -> Store:
    """A store holding a real two-seed group of the digits demo, one epoch per phase."""
    url = f"sqlite:///{folder}/template/kdcore.db"
    subprocess.run([sys.executable, "-m", "kdcore", "--db", url, "train", "examples/digits.yaml", "--seeds", "0,1",
                    "--set", "teacher.epochs=1", "--set", "train.epochs=1", "--json"],
                   cwd=ROOT, check=True, capture_output=True)
    return Store(url)


def copy_runs(source: Store, target: Store, count: int) -> float:
    """Copies `count` runs of `source` (its runs in turn, each group renamed per round) into `target`
    through the store API; returns the seconds it took."""
    start = time.perf_counter()
    runs = sorted(source.list_runs(), key=lambda r: r.id)
    metrics = {r.id: source.metrics_frame([r.id]).drop(columns="run_id").to_dict("records") for r in runs}
    for i in range(count):
        run = runs[i % len(runs)]
        config = json.loads(run.config_json)
        if config.get("group"):
            config["group"] = f"{config['group']}-{i // len(runs)}"
        run_id = target.create_run(build_config(config))
        target.mark_running(run_id, run.device or "cpu")
        target.add_metrics(run_id, metrics[run.id])
        target.finish_run(run_id, run.status, run.summary, error=run.error)
    return time.perf_counter() - start


def _browser_page(p):
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(300_000)
    return browser, page


def cold_load(url: str) -> dict:
    """Seconds from starting the dashboard to health, and from opening it to first text and to Home ready."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser, page = _browser_page(p)  # started before the server, so its start is not timed
        start = time.perf_counter()
        with serve_dashboard(url, start_timeout=300) as base:
            healthy = time.perf_counter() - start
            start = time.perf_counter()
            page.goto(base, wait_until="commit")
            page.wait_for_function(MAIN_HAS_TEXT, polling=50)
            first_text = time.perf_counter() - start
            page.get_by_role("button", name="Run the demo").wait_for()
            page.wait_for_selector(IDLE)
            ready = time.perf_counter() - start
        browser.close()
    return {"health_s": healthy, "first_text_s": first_text, "home_ready_s": ready}


def first_live_point(page) -> float:
    """Seconds from clicking "Run the demo" on Home (its worker idle) until Live draws the run's first points."""
    page.get_by_role("link", name="Home").first.click()
    page.get_by_role("button", name="Run the demo").wait_for()
    page.wait_for_selector(IDLE)
    start = time.perf_counter()
    page.get_by_role("button", name="Run the demo").click()
    page.get_by_role("heading", name="Live").first.wait_for()
    page.wait_for_function(LIVE_POINTS, polling=50)
    return time.perf_counter() - start


def page_visits(url: str, repeats: int) -> dict:
    """Seconds per visit of Runs and of Report, each from a click on its link with Home open before, then the
    first live point of the demo."""
    from playwright.sync_api import sync_playwright

    runs, report, shown = [], [], ""
    with serve_dashboard(url, start_timeout=300) as base, sync_playwright() as p:
        browser, page = _browser_page(p)
        page.goto(base)
        page.get_by_role("button", name="Run the demo").wait_for()
        for _ in range(repeats):
            for times, link, done in ((runs, "Runs", lambda: page.get_by_text("runs shown").wait_for()),
                                      (report, "Report", lambda: page.wait_for_function(REPORT_CHART, polling=50))):
                page.get_by_role("link", name="Home").first.click()
                page.get_by_role("button", name="Run the demo").wait_for()
                page.wait_for_selector(IDLE)
                start = time.perf_counter()
                page.get_by_role("link", name=link).first.click()
                done()
                page.wait_for_selector(IDLE)
                times.append(time.perf_counter() - start)
                if link == "Runs":
                    shown = page.get_by_text("runs shown").inner_text()
        live = first_live_point(page)
        browser.close()
    return {"runs": runs, "report": report, "shown": shown, "live": live}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1000, help="runs in the bench store (default 1000)")
    ap.add_argument("--repeats", type=int, default=5, help="visits of each page (default 5)")
    ap.add_argument("--cold-repeats", type=int, default=2, help="dashboard starts for the cold load (default 2)")
    ap.add_argument("--markdown", metavar="FILE", help="append the table to FILE")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        source = template(Path(tmp))
        url = f"sqlite:///{tmp}/bench/kdcore.db"
        copied = copy_runs(source, Store(url), args.runs)
        print(f"copied {args.runs} runs in {copied:.1f} s", file=sys.stderr, flush=True)
        cold = [cold_load(url) for _ in range(args.cold_repeats)]
        visits = page_visits(url, args.repeats)
    rows = [("cold load: first visible text", [c["first_text_s"] for c in cold]),
            ("cold load: Home ready", [c["home_ready_s"] for c in cold]),
            (f"Runs page, {visits['shown']}", visits["runs"]),
            ("Report page, a run's report drawn", visits["report"]),
            ("Run the demo (worker idle) to its first live point drawn", [visits["live"]])]
    lines = ["| measured in Chromium | median | max | visits |", "|---|---|---|---|"]
    lines += [f"| {name} | {statistics.median(t):.2f} s | {max(t):.2f} s | {len(t)} |" for name, t in rows]
    header = (f"{datetime.date.today()}, {cpu_model()}, server start to health "
              f"{statistics.median(c['health_s'] for c in cold):.1f} s: `python bench/pages.py --runs {args.runs} "
              f"--repeats {args.repeats} --cold-repeats {args.cold_repeats}`")
    print_table(header, lines, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
