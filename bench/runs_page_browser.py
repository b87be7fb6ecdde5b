"""Times the Runs page in a real browser against a seeded store.

    python bench/seed_runs.py sqlite:////tmp/kd-bench/kdcore.db --runs 1000 --epochs 50
    python bench/runs_page_browser.py sqlite:////tmp/kd-bench/kdcore.db

Starts the dashboard on that store, opens Home once (imports, caches), then
measures from clicking "Runs" until the runs table is drawn and the script run
is over, and from selecting two rows until their overlaid curves are drawn.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
from ui.serve import CHROMIUM_ARGS, serve_dashboard  # noqa: E402

IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url", help="SQLAlchemy URL of a seeded store")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with serve_dashboard(args.url) as base:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            page.goto(base)
            page.get_by_role("button", name="Run the demo").wait_for()
            table, overlay = [], []
            for _ in range(args.repeats):
                page.get_by_role("link", name="Home").first.click()
                page.wait_for_selector(IDLE)
                start = time.perf_counter()
                page.get_by_role("link", name="Runs").first.click()
                page.get_by_text("runs shown").wait_for()
                page.wait_for_selector(IDLE)
                table.append(time.perf_counter() - start)
                box = page.locator('[data-testid="stDataFrame"]').first.bounding_box()
                start = time.perf_counter()
                for row in (0, 1):
                    page.mouse.click(box["x"] + 16, box["y"] + 35 + 35 * row + 17)
                    page.wait_for_selector(IDLE)
                page.get_by_text("2 selected").wait_for()
                page.wait_for_selector(".js-plotly-plot")
                overlay.append(time.perf_counter() - start)
            count = page.get_by_text("runs shown").inner_text()
            browser.close()
    print(f"{count}")
    print(f"Runs page, click to interactive table: median {statistics.median(table):.2f} s, max {max(table):.2f} s")
    print(f"select two runs to overlay drawn:       median {statistics.median(overlay):.2f} s, max {max(overlay):.2f} s")


if __name__ == "__main__":
    main()
