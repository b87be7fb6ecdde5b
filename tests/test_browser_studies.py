"""A study from the dashboard in a real Chromium: search mode in New experiment, the Studies page's charts, and
the confirmation over fresh seeds. The dashboard's own worker process asks and runs the trials.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from kdcore.store import Store
from tests.helpers import STALL_S, wait_while_progressing
from ui.serve import serve_dashboard

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.browser
SPACE = "distill.method: {choices: [soft, dist]}\ndistill.alpha: {low: 0.3, high: 0.9}\n"


def _idle(page, timeout=STALL_S * 1000):
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=timeout)


def _type(page, label: str, value: str) -> None:
    field = page.get_by_label(label, exact=True).first
    field.fill(value)
    field.press("Enter" if field.evaluate("e => e.tagName") == "INPUT" else "Control+Enter")
    _idle(page)


def test_a_study_started_in_the_browser_draws_its_charts_and_confirms_its_best_trial(tmp_path, page):
    db = f"sqlite:///{tmp_path}/runs/kdcore.db"
    store = Store(db)
    with serve_dashboard(db, log_path=tmp_path / "streamlit.log", start_timeout=STALL_S) as url:
        page.goto(url)
        page.get_by_role("button", name="Run the demo").wait_for(timeout=STALL_S * 1000)  # the first load imports torch
        page.get_by_role("link", name="New experiment").first.click()
        page.get_by_role("heading", name="New experiment").first.wait_for()
        _idle(page)
        _type(page, "Teacher epochs", "3")
        _type(page, "Student epochs", "8")
        page.get_by_text("Search for a setting that pays off").click()
        _idle(page)
        _type(page, "Search space (YAML)", SPACE)
        _type(page, "Trials", "4")
        _type(page, "Confirm over seeds", "")
        _type(page, "Study name", "in the browser")
        page.get_by_role("button", name="Start the study (4 trials)").click()
        page.get_by_role("heading", name="Studies").first.wait_for(timeout=STALL_S * 1000)

        wait_while_progressing(store, lambda: store.list_studies() and store.get_study("in the browser").status
                               == "finished", "the study's four trials")
        # the page refreshes itself while the study runs: the charts that need complete trials draw
        page.wait_for_selector(".js-plotly-plot .parcoords", timeout=STALL_S * 1000)
        page.wait_for_selector(".js-plotly-plot .barlayer .point", timeout=STALL_S * 1000)
        assert page.locator(".js-plotly-plot .parcoords .axis-title").count() >= 3  # method, α, the objective

        _type(page, "Seeds", "0,1")
        page.get_by_role("button", name="Confirm", exact=True).click()
        _idle(page)

        def confirmed() -> bool:
            study = store.get_study("in the browser")
            runs = store.list_runs(group=study.confirm_group) if study.confirm_group else []
            return len(runs) == 2 and all(r.status == "completed" for r in runs)

        wait_while_progressing(store, confirmed, "the confirmation's two seeds")
        # the answer, once the page has read both seeds: the gain over scratch with its interval
        page.get_by_text("2 fresh seeds)").first.wait_for(timeout=STALL_S * 1000)
        answer = page.get_by_text("Answer:").first.locator("xpath=..").inner_text()
        assert "over scratch (95% interval" in answer and "confirming" not in answer, answer
