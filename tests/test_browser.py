"""The dashboard in a real Chromium: one click for a live run, then compare and distributions.

Starts `streamlit run app.py` on a free port with a temporary database. Where Chromium is
missing the tests skip with the reason, unless KDCORE_REQUIRE_BROWSER=1 (CI), where they fail.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kdcore.configure import build_config
from kdcore.distill import METHODS
from kdcore.distill.base import describe
from kdcore.store import ACTIVE, Store
from tests.helpers import STALL_S, changed_option, method_terms, wait_while_progressing
from ui.serve import serve_dashboard

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    """(base URL, store URL) of a dashboard on a fresh store that already holds a real two-seed group."""
    tmp = tmp_path_factory.mktemp("dashboard")
    db = f"sqlite:///{tmp}/runs/kdcore.db"
    made = subprocess.run([sys.executable, "-m", "kdcore", "--db", db, "train", "examples/digits.yaml", "--seeds", "0,1",
                           "--set", "teacher.epochs=2", "--set", "train.epochs=2", "--json"],
                          cwd=ROOT, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr[-2000:]
    with serve_dashboard(db, log_path=tmp / "streamlit.log", start_timeout=STALL_S) as url:
        yield url, db


def _idle(page, timeout=60_000):
    """Waits until Streamlit has finished the current script run."""
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=timeout)


def _plot_data(page, index=0):
    """The traces' x and y values of the index-th plotly chart on the page, as JSON read from the DOM."""
    return page.evaluate(
        "(i) => { const el = document.querySelectorAll('.js-plotly-plot')[i];"
        " return el ? JSON.stringify(el.data.map(t => [t.x, t.y])) : null; }", index)


def _goto(page, link, heading):
    page.get_by_role("link", name=link).first.click()
    page.get_by_role("heading", name=heading).first.wait_for()
    _idle(page)


def test_demo_live_groups_runs_and_distributions_in_a_real_browser(dashboard, page):
    url, db = dashboard
    store = Store(db)
    group_runs = {r.id for r in store.list_runs()}
    page.goto(url)
    # the first load imports torch: wait as long as the server keeps answering
    page.get_by_role("button", name="Run the demo").wait_for(timeout=STALL_S * 1000)
    # Two demo runs: the second queues behind the first, and both are compared later.
    page.get_by_role("button", name="Run the demo").click()
    page.get_by_role("heading", name="Live").first.wait_for()
    _goto(page, "Home", "Knowledge distillation")
    page.get_by_role("button", name="Run the demo").click()
    page.get_by_role("heading", name="Live").first.wait_for()
    demo_runs = lambda: [r for r in store.list_runs() if r.id not in group_runs]  # noqa: E731
    wait_while_progressing(store, lambda: len(demo_runs()) == 2, "queueing two demo runs")

    # The live chart changes while the run is going: compare it with itself as steps are stored.
    page.wait_for_selector(".js-plotly-plot", timeout=STALL_S * 1000)
    first = _plot_data(page)
    wait_while_progressing(store, lambda: _plot_data(page) != first or all(r.status not in ACTIVE for r in demo_runs()),
                           "waiting for the live chart to move", pause=lambda: page.wait_for_timeout(1000))
    assert _plot_data(page) != first, "the live chart did not change while the run was going"

    # Both runs finish; the summary card shows the KD gain with its interval in words.
    wait_while_progressing(store, lambda: all(r.status not in ACTIVE for r in demo_runs()), "the two demo runs")
    assert [r.status for r in demo_runs()] == ["completed", "completed"]
    page.get_by_text("KD gain").first.wait_for()
    page.get_by_text("95% interval").first.wait_for()

    _goto(page, "Runs", "Runs")

    # The group: mean ± std over its two seeds, the interval, and a dot per seed.
    page.get_by_role("tab", name="Groups").click()
    page.get_by_text("over 2 seeds").first.wait_for()
    dots = page.evaluate("() => Array.from(document.querySelectorAll('.js-plotly-plot'))"
                         ".filter(el => (el.layout.title.text || '').includes('n = 2 seeds'))"
                         ".map(el => el.data.flatMap(t => t.customdata || t.hovertext || t.text || []))")
    assert dots, "the group's dot chart is missing"
    hover = " ".join(map(str, sum(dots, [])))
    assert "seed 0" in hover and "seed 1" in hover, hover[:500]

    # Select two rows in the table (the row-marker column at its left) and see the overlay.
    grid = page.locator('[data-testid="stDataFrame"]').first
    grid.wait_for()
    box = grid.bounding_box()
    for row in (0, 1):
        page.mouse.click(box["x"] + 16, box["y"] + 35 + 35 * row + 17)
        _idle(page)
    page.get_by_text("2 selected").wait_for()
    page.get_by_role("tab", name="Curves").click()  # built on opening: only the open tab is
    overlay = page.locator(".st-key-runs_overlay .js-plotly-plot").first
    overlay.wait_for()
    traces = overlay.evaluate("el => el.data.map(t => t.name)")
    assert len({name for name in traces}) >= 2, f"expected curves of two runs, got {traces}"

    # Distributions: moving the T slider changes the bars.
    _goto(page, "Distributions", "Distributions")
    page.wait_for_selector(".js-plotly-plot")
    before = _plot_data(page)
    slider = page.get_by_role("slider").first
    slider.focus()
    for _ in range(6):
        page.keyboard.press("ArrowRight")
    _idle(page)
    after = _plot_data(page)
    for _ in range(40):  # the page reruns once; no training runs now, so this cannot be slowed by one
        if after != before:
            break
        page.wait_for_timeout(500)
        after = _plot_data(page)
    assert after != before, "moving T did not change the softened distributions"


def _method_for_the_browser() -> dict:
    """dkd where it is registered, else the first method that reads logits only and has a number option, else soft."""
    declared = [describe(METHODS.get(m)) for m in METHODS.names()]
    numeric = [m for m in declared if m["cacheable"]
               and any(o.get("type") == "number" and changed_option(o) is not None for o in m["options"])]
    return next((m for m in declared if m["name"] == "dkd"), None) or (numeric[0] if numeric else
                                                                        describe(METHODS.get("soft")))


def _loss_legend(page) -> list[str]:
    """The entries of the live loss chart's legend, as drawn."""
    return page.evaluate(
        "() => Array.from(document.querySelectorAll('.js-plotly-plot'))"
        ".filter(el => (el.layout.title.text || '').includes('Loss parts'))"
        ".flatMap(el => Array.from(el.querySelectorAll('.legendtext')).map(n => n.textContent))")


def _choose(page, label: str, text: str) -> None:
    """Picks the option starting with `text` in the selectbox labelled `label`, by typing it as a user would."""
    page.locator('[data-testid="stSelectbox"]').filter(has_text=label).first.click()
    page.keyboard.type(text)
    page.get_by_role("option").filter(has_text=text.strip()).first.wait_for()
    page.keyboard.press("Enter")
    _idle(page)


def _set_number(page, label: str, value) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    _idle(page)


def test_a_method_with_options_is_set_up_and_its_terms_show_in_the_live_loss_chart(dashboard, page):
    url, db = dashboard
    store = Store(db)
    method = _method_for_the_browser()
    option = next((o for o in method["options"] if o.get("type") == "number" and changed_option(o) is not None), None)
    page.goto(url)
    page.get_by_role("heading", name="Knowledge distillation").wait_for(timeout=STALL_S * 1000)
    _goto(page, "New experiment", "New experiment")

    # the method picker lists each method by its title; its options appear with their defaults
    _choose(page, "Method", method["title"])
    if option is not None:
        page.get_by_label(option["name"], exact=True).wait_for()
        _set_number(page, option["name"], changed_option(option))
    _set_number(page, "Teacher epochs", 2)
    _set_number(page, "Student epochs", 3)
    page.get_by_label("Run name").fill(f"browser {method['name']}")
    page.get_by_label("Run name").press("Enter")
    _idle(page)
    page.get_by_role("button", name="Launch").click()
    page.get_by_role("heading", name="Live").first.wait_for()

    run = next(r for r in store.list_runs() if r.name == f"browser {method['name']}")
    if option is not None:
        assert run.config["distill"]["options"][option["name"]] == pytest.approx(changed_option(option))
    _choose(page, "Show", f"#{run.id} ")

    nice = {"ce": "CE on labels", "kd": "KD term"}
    expected = {f"student · {nice.get(t, t)}" for t in method_terms(build_config(run.config))}
    wait_while_progressing(store, lambda: expected <= set(_loss_legend(page)), "the method's terms in the legend",
                           pause=lambda: page.wait_for_timeout(1000))
    assert "student · total" in _loss_legend(page)
    wait_while_progressing(store, lambda: store.get_run(run.id).status not in ACTIVE, "the run finishing")
    assert store.get_run(run.id).status == "completed", store.get_run(run.id).error


def test_a_run_of_a_separate_worker_process_is_watched_live_and_cancelled_in_the_browser(dashboard_without_worker,
                                                                                         page):
    url, db = dashboard_without_worker
    store = Store(db)
    kdcore = [sys.executable, "-m", "kdcore", "--db", db]
    submitted = subprocess.run(kdcore + ["submit", "examples/digits.yaml", "--set", "teacher.epochs=2000", "--json"],
                               cwd=ROOT, capture_output=True, text=True, check=True)
    run_id = json.loads(submitted.stdout)["runs"][0]
    worker = subprocess.Popen(kdcore + ["worker", "--max-runs", "1"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, env=dict(os.environ, KDCORE_CPU_THREADS="1"))
    try:
        wait_while_progressing(store, lambda: store.get_run(run_id).status == "running"
                                and len(store.metrics_frame([run_id])) > 0, "the worker starting the run")
        page.goto(url)
        page.get_by_role("heading", name="Knowledge distillation").wait_for(timeout=STALL_S * 1000)
        page.get_by_text("no worker here").first.wait_for()
        _goto(page, "Live", "Live")
        page.get_by_text(f"worker {store.get_run(run_id).worker}").first.wait_for()
        page.get_by_text("whole run").first.wait_for()
        page.wait_for_selector(".js-plotly-plot")
        first = _plot_data(page)
        wait_while_progressing(store, lambda: _plot_data(page) != first, "the live chart moving",
                               pause=lambda: page.wait_for_timeout(1000))

        page.get_by_role("button", name="Cancel").first.click()
        wait_while_progressing(store, lambda: store.get_run(run_id).status != "running", "the cancel taking effect")
        assert store.get_run(run_id).status == "cancelled"
        page.get_by_text("This run was cancelled").first.wait_for()  # Live stays on the cancelled run
        wait_while_progressing(store, lambda: worker.poll() is not None, "the worker exiting after its one run")
        assert worker.returncode == 0
    finally:
        if worker.poll() is None:
            worker.kill()


def test_an_interrupted_run_is_resumed_from_the_browser(dashboard_without_worker, page):
    url, db = dashboard_without_worker
    store = Store(db)
    kdcore = [sys.executable, "-m", "kdcore", "--db", db]
    env = dict(os.environ, KDCORE_CPU_THREADS="1")
    # a run stopped for real: SIGTERM to `kdcore train` once its teacher has finished two epochs
    earlier = {r.id for r in store.list_runs()}  # the module's dashboard may hold other tests' runs
    train = subprocess.Popen(kdcore + ["train", "examples/digits.yaml"], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def teacher_epochs() -> list[int]:
        runs = [r for r in store.list_runs() if r.id not in earlier]
        if not runs:
            return []
        rows = store.metrics_frame([runs[0].id], kind="epoch", names=["val_acc"])
        return sorted(rows.loc[rows["phase"] == "teacher", "epoch"])

    wait_while_progressing(store, lambda: len(teacher_epochs()) >= 2, "the teacher's first epochs")
    run_id = max(r.id for r in store.list_runs() if r.id not in earlier)
    train.send_signal(signal.SIGTERM)
    wait_while_progressing(store, lambda: train.poll() is not None, "kdcore train stopping")
    assert store.get_run(run_id).status == "interrupted"

    page.goto(url)
    page.get_by_role("heading", name="Knowledge distillation").wait_for(timeout=STALL_S * 1000)
    _goto(page, "Live", "Live")
    page.get_by_text(f"#{run_id} ").first.wait_for()
    page.get_by_role("button", name="Resume").click()
    wait_while_progressing(store, lambda: store.get_run(run_id).status == "queued", "the run going back in the queue")
    worker = subprocess.Popen(kdcore + ["worker", "--exit-when-idle"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    wait_while_progressing(store, lambda: worker.poll() is not None, "the worker resuming the run")
    run = store.get_run(run_id)
    assert run.status == "completed" and run.attempt == 2
    assert teacher_epochs() == list(range(1, 31))  # each teacher epoch stored once, the stopped one replaced
    page.get_by_text("95% interval").first.wait_for(timeout=STALL_S * 1000)  # Live shows the finished run
