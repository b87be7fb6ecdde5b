"""Takes a screenshot of each dashboard page into docs/screenshots/.

Starts the app on a temporary database, runs the digits demo twice and a small
T x alpha sweep through the UI's job manager, then visits every page in headless Chromium.

    .venv/bin/python scripts/screenshots.py
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
from ui.serve import CHROMIUM_ARGS, serve_dashboard  # noqa: E402

OUT = ROOT / "docs" / "screenshots"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp())
    with serve_dashboard(f"sqlite:///{tmp}/runs/kdcore.db") as url:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1700})
            page.goto(url)
            for _ in range(2):
                page.get_by_role("button", name="Run the demo").click(timeout=120_000)
                page.get_by_role("heading", name="Live").first.wait_for()
                time.sleep(6)
                page.screenshot(path=str(OUT / "live_running.png"), full_page=True)
                page.get_by_role("link", name="Home").first.click()
            page.get_by_role("link", name="Live").first.click()
            page.get_by_text("KD gain").first.wait_for(timeout=300_000)
            time.sleep(60)  # the second demo run
            page.reload()
            time.sleep(4)
            page.screenshot(path=str(OUT / "live_summary.png"), full_page=True)
            for name, link in [("home", "Home"), ("new_experiment", "New experiment"), ("runs", "Runs"),
                               ("distributions", "Distributions")]:
                page.get_by_role("link", name=link).first.click()
                time.sleep(6)
                if name == "runs":
                    box = page.locator('[data-testid="stDataFrame"]').first.bounding_box()
                    for row in (0, 1):
                        page.mouse.click(box["x"] + 16, box["y"] + 35 + 35 * row + 17)
                        time.sleep(3)
                page.screenshot(path=str(OUT / f"{name}.png"), full_page=True)
            browser.close()
    print("wrote", ", ".join(sorted(p.name for p in OUT.glob("*.png"))))


if __name__ == "__main__":
    main()
