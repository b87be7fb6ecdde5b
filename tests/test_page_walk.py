"""Every page, as a person sees it in Chromium, with a seed group, a sweep, a two-teacher run and a failed run stored.

On each page (and each tab of Runs) it looks for what a reader trips over: a chart tick label cut by its chart's
edge, a metric tile whose value is truncated, raw exception text, and the word "None" where a value is missing.
"""
from __future__ import annotations

import re
import threading
from urllib.parse import quote
from pathlib import Path

import pytest

from kdcore.configure import build_config, load_config
from kdcore.experiments import expand
from kdcore.jobs import RunService, Worker
from kdcore.store import Store
from tests.helpers import STALL_S
from ui.serve import serve_dashboard

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.browser

PAGES = [("Home", "Knowledge distillation"), ("New experiment", "New experiment"), ("Live", "Live"),
         ("Runs", "Runs"), ("Studies", "Studies"), ("Distributions", "Distributions"), ("Report", "Report")]
RAW_ERROR = re.compile(r"Traceback \(most recent call last\)|Error: |KeyError|TypeError|Could this error message "
                       r"be improved|add_safe_globals")


def _short(path: str, **train) -> object:
    """An example config cut to two epochs a phase, every teacher's too."""
    data = load_config(ROOT / path).model_dump(mode="json", exclude_unset=True)
    for teacher in [data.get("teacher") or {}, *data.get("teachers", [])]:
        teacher["epochs"] = 2
    data["train"] = {**data.get("train", {}), "epochs": 2, **train}
    return build_config(data)


@pytest.fixture(scope="module")
def walked_store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("walk")
    store = Store(f"sqlite:///{tmp}/runs/kdcore.db")
    service = RunService(store, here=False)
    service.submit_many(expand(_short("examples/digits.yaml"), seeds=[0, 1]))
    service.submit_many(expand(_short("examples/digits.yaml"), temperatures=[2.0, 6.0]))
    service.submit(_short("examples/two_teachers.yaml"))
    # w <- -9 w at each step: the loss overflows and the run fails as diverged
    service.submit(_short("examples/digits.yaml", optimizer="sgd", lr=10.0, momentum=0.0, weight_decay=1.0,
                          batch_size=32, epochs=3))
    Worker(store, device="cpu").run(threading.Event(), exit_when_idle=True)
    statuses = sorted(r.status for r in store.list_runs())
    assert statuses.count("completed") == 5 and statuses.count("failed") == 1, statuses
    return store, tmp


def _problems(page) -> list[str]:
    """What on the page now (and in its frames: the report is one) would trip a reader up, in words."""
    found = []
    for frame in page.frames:
        found += _frame_problems(frame)
    return found


def _frame_problems(frame) -> list[str]:
    found = frame.evaluate("""() => {
        const out = [];
        for (const plot of document.querySelectorAll('.js-plotly-plot')) {
            if (!plot.offsetParent) continue;  // on a hidden tab
            const svg = plot.querySelector('svg.main-svg');
            if (!svg) continue;
            const frame = svg.getBoundingClientRect();
            const title = (plot.layout && plot.layout.title && plot.layout.title.text) || 'a chart';
            for (const tick of plot.querySelectorAll('.xtick text, .ytick text, .x2tick text, .y2tick text')) {
                const box = tick.getBoundingClientRect();
                if (!tick.textContent.trim() || box.width === 0) continue;
                if (box.left < frame.left - 1 || box.right > frame.right + 1 || box.top < frame.top - 1
                    || box.bottom > frame.bottom + 1)
                    out.push(`tick label "${tick.textContent}" cut by the edge of "${title}"`);
            }
        }
        for (const value of document.querySelectorAll('[data-testid="stMetricValue"]')) {
            const inner = value.querySelector('div') || value;
            if (inner.scrollWidth > inner.clientWidth + 1 || value.scrollWidth > value.clientWidth + 1)
                out.push(`tile value "${value.textContent}" truncated`);
        }
        for (const err of document.querySelectorAll('[data-testid="stException"]'))
            out.push(`exception shown: ${err.textContent.slice(0, 200)}`);
        return out;
    }""")
    main = frame.locator("[data-testid='stMain']")
    text = main.first.inner_text() if main.count() else frame.locator("body").inner_text()
    found += [f"raw error text: …{text[max(0, m.start() - 60):m.end() + 60]}…" for m in RAW_ERROR.finditer(text)]
    found += [f'"None" shown: …{text[max(0, m.start() - 60):m.end() + 60]}…' for m in re.finditer(r"\bNone\b", text)]
    return found


def _idle(page):
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=STALL_S * 1000)


def test_every_page_reads_without_clipped_ticks_truncated_tiles_raw_errors_or_none(walked_store, page):
    store, tmp = walked_store
    seen: dict[str, list[str]] = {}
    with serve_dashboard(store.url, log_path=tmp / "streamlit.log", start_timeout=STALL_S) as url:
        page.set_viewport_size({"width": 1400, "height": 900})
        page.goto(url)
        page.get_by_role("link", name="Home").first.wait_for(timeout=STALL_S * 1000)
        for link, heading in PAGES:
            page.get_by_role("link", name=link).first.click()
            page.get_by_role("heading", name=heading).first.wait_for(timeout=STALL_S * 1000)
            _idle(page)
            page.wait_for_timeout(500)  # plotly lays out its ticks after the script run ends
            seen[link] = _problems(page)
            if link == "Runs":
                for tab in page.get_by_role("tab").all():
                    tab.click()
                    _idle(page)
                    page.wait_for_timeout(500)
                    seen[f"Runs / {tab.inner_text()}"] = _problems(page)
        # the report of a two-teacher run, of a sweep and of a seed group, as the Report page shows them
        runs = store.list_runs()
        two = next(r.id for r in runs if r.config.get("teachers"))
        groups = {r.group for r in runs if r.group}
        for query in [f"run={two}", *(f"group={quote(g)}" for g in sorted(groups))]:
            page.goto(f"{url}/report?{query}")
            page.get_by_role("heading", name="Report").first.wait_for(timeout=STALL_S * 1000)
            _idle(page)
            page.frame_locator("iframe").first.locator(".js-plotly-plot").first.wait_for(timeout=STALL_S * 1000)
            page.wait_for_timeout(1000)
            seen[f"Report?{query}"] = _problems(page)
    assert len([k for k in seen if k.startswith("Report?")]) == 3
    problems = {where: found for where, found in seen.items() if found}
    assert not problems, "\n".join(f"{where}: {p}" for where, found in problems.items() for p in found)
