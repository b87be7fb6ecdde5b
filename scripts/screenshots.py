"""Takes a screenshot of each dashboard page into docs/screenshots/.

Starts the app on a temporary database, clicks the demo's seed group and then the demo
once through the UI, runs a 12-trial study of the demo from the CLI, and visits every page
in headless Chromium, the Report page also in presentation mode. Waits follow the runs'
state in the store.

    .venv/bin/python scripts/screenshots.py                          # all of them
    .venv/bin/python scripts/screenshots.py report presentation      # only these (the same runs are made)
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
from kdcore.store import ACTIVE, Store  # noqa: E402
from ui.serve import CHROMIUM_ARGS, serve_dashboard  # noqa: E402

OUT = ROOT / "docs" / "screenshots"


def _settle(page, seconds: float = 2.0) -> None:
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=600_000)
    page.wait_for_timeout(seconds * 1000)  # plotly draws after the script run ends


def _wait(store: Store, done) -> None:
    while not done():
        time.sleep(1.0)


def _report_drawn(page) -> None:
    """Waits until the Report page's report has drawn its charts (it is in an iframe)."""
    _settle(page)
    frame = page.frame_locator("iframe").first
    frame.locator("#gain").wait_for(timeout=600_000)
    frame.locator(".js-plotly-plot .main-svg").last.wait_for(timeout=600_000)
    page.wait_for_timeout(1000)


def main(only: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)

    def shot(page, name: str) -> None:
        if not only or name in only:
            page.screenshot(path=str(OUT / f"{name}.png"), full_page=True)

    tmp = Path(tempfile.mkdtemp())
    db = f"sqlite:///{tmp}/runs/kdcore.db"
    store = Store(db)
    with serve_dashboard(db, start_timeout=600) as url:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1700})
            page.goto(url)
            page.get_by_role("button", name="Run it over").click(timeout=600_000)
            page.get_by_role("heading", name="Live").first.wait_for()
            _wait(store, lambda: len(store.list_runs(status=["completed"])) >= 2)
            _settle(page)
            shot(page, "live_running")
            _wait(store, lambda: not store.list_runs(status=ACTIVE))
            page.get_by_role("link", name="Home").first.click()
            page.get_by_role("button", name="Run the demo").click()
            page.get_by_role("heading", name="Live").first.wait_for()
            _wait(store, lambda: not store.list_runs(status=ACTIVE))
            page.reload()
            _settle(page, 4)
            shot(page, "live_summary")
            for name, link in [("home", "Home"), ("new_experiment", "New experiment"), ("runs", "Runs"),
                               ("distributions", "Distributions")]:
                page.get_by_role("link", name=link).first.click()
                _settle(page, 4)
                if name == "runs":
                    box = page.locator('[data-testid="stDataFrame"]').first.bounding_box()
                    for row in (0, 1):
                        page.mouse.click(box["x"] + 16, box["y"] + 35 + 35 * row + 17)
                        _settle(page)
                shot(page, name)
            page.get_by_role("link", name="Report").first.click()  # the newest completed run: the demo
            _report_drawn(page)
            shot(page, "report")
            page.get_by_text("Presentation mode").click()
            page.get_by_role("button", name="Leave presentation mode").wait_for(timeout=600_000)
            _report_drawn(page)
            shot(page, "presentation")
            page.get_by_role("button", name="Leave presentation mode").click()
            _settle(page)
            if not only or "studies" in only:  # a study of the demo, run from the CLI beside the dashboard's worker
                subprocess.run([sys.executable, "-m", "kdcore", "--db", db, "tune", "examples/digits.yaml", "--space",
                                "examples/spaces/digits.yaml", "--trials", "12", "--confirm-seeds", "0-2", "--name",
                                "digits study"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
                page.get_by_role("link", name="Studies").first.click()
                _settle(page, 6)
                shot(page, "studies")
            browser.close()
    print("wrote", ", ".join(sorted(only) if only else sorted(p.name for p in OUT.glob("*.png"))))


if __name__ == "__main__":
    main(sys.argv[1:])
