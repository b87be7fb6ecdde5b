"""What a person waits for: the runs table read without re-parsing every run, a loading view at once, plotly.js
sent once, the worker woken by a submit, and a stale heartbeat said in words. Timings are bench/pages.py's;
these tests check the behaviours, waiting on state, never on fixed seconds."""
from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from plotly.offline import get_plotlyjs

from kdcore.configure import build_config
from kdcore.store import Store
import kdcore.store.frames as frames
from tests.helpers import STALL_S, open_page, wait_while_progressing

ROOT = Path(__file__).resolve().parents[1]
TINY = {"dataset": {"name": "digits"}, "teacher": {"arch": "tiny_cnn", "epochs": 1}, "student": {"arch": "mlp_tiny"},
        "train": {"epochs": 1, "batch_size": 256}}


def _store_with_damaged_and_tagged_runs(tmp_path) -> tuple[Store, dict]:
    store = Store(f"sqlite:///{tmp_path}/runs/kdcore.db")
    ids = {}
    for name, seed in (("a", 0), ("b", 1), ("c", 2), ("broken", 3)):
        ids[name] = store.create_run(build_config({**TINY, "name": name, "tags": ["x"], "group": "g",
                                                   "train": {**TINY["train"], "seed": seed}}))
    store.mark_running(ids["a"], "cpu")
    store.finish_run(ids["a"], "completed", {"kd_gain": 0.02, "kd_gain_ci95": [-0.01, 0.05], "kd_gain_p_value": 0.3,
                                             "eval_precision": "fp32", "teacher_from_run": ids["b"]})
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE runs SET config_json = '[1]', summary_json = 'not json', tags = '{oops', "
                             "live_json = '[' WHERE id = ?", (ids["broken"],))
    return store, ids


def test_the_runs_table_matches_runs_frame_and_parses_only_the_rows_that_changed(tmp_path, monkeypatch):
    store, ids = _store_with_damaged_and_tagged_runs(tmp_path)
    parsed = []
    real = frames._parsed
    monkeypatch.setattr(frames, "_parsed", lambda texts: parsed.append(texts) or real(texts))

    table = store.runs_table()
    pd.testing.assert_frame_equal(table, store.runs_frame()[table.columns])
    assert list(table.columns) == list(store.runs_frame().columns)
    assert len(parsed) == 4
    assert table.set_index("id").loc[ids["broken"], "damaged"] == ["config_json", "summary_json", "live_json", "tags"]

    parsed.clear()
    store.runs_table()
    assert parsed == []  # nothing changed: nothing parsed again

    store.update_run(ids["b"], tags=["y", "z"])
    store.finish_run(ids["c"], "failed", {"kd_gain": -0.5})
    store.delete_run(ids["a"])
    table = store.runs_table()
    assert len(parsed) == 2  # the retagged and the finished run only
    pd.testing.assert_frame_equal(table, store.runs_frame()[table.columns])
    assert table.set_index("id").loc[ids["b"], "tags"] == ["y", "z"]
    assert ids["a"] not in set(table["id"])


# ---- the ETA and a stale heartbeat -----------------------------------------------------------------------
def test_the_eta_after_a_resume_is_paced_from_the_resume_not_from_the_epochs_trained_before(tmp_path):
    from kdcore.engine.events import Event
    from kdcore.jobs.live import LiveState
    from kdcore.jobs.recorder import Recorder

    store = Store(f"sqlite:///{tmp_path}/runs/kdcore.db")
    run_id = store.create_run(build_config(TINY))
    live = LiveState(run_id=run_id, status="running", run_started=time.time())
    record = Recorder(store, live)
    record(Event("plan", info={"phases": ["teacher", "student"], "steps": {"teacher": 100, "student": 100}}))
    # resumed in the student phase at its step 0: the teacher's 100 steps were trained by an earlier attempt
    record(Event("phase", phase="student", epoch=0, step=0, info={"epochs": 10, "steps_per_epoch": 10,
                                                                 "resumed_from_epoch": 0}))
    record(Event("step", phase="student", epoch=5, step=50, metrics={"images_per_s": 100.0}))
    live.run_started -= 10.0  # as if this attempt had begun 10 s ago
    live.pace_since -= 10.0
    # 50 steps in 10 s since the resume, 50 left: 10 s, not 10 s x 25% / 75% (the run's share done overall)
    assert abs(live.eta_s - 10.0) < 0.5, live.eta_s


def _running_run_with_old_heartbeat(tmp_path, age_s: int) -> tuple[Store, int]:
    store = Store(f"sqlite:///{tmp_path}/runs/kdcore.db")
    run_id = store.create_run(build_config({**TINY, "name": "orphan"}))
    store.claim("gone-host:4242", run_id=run_id)
    store.heartbeat(run_id, "gone-host:4242", live={"phase": "teacher", "epoch": 1, "epochs": 2, "step": 5,
                                                    "steps_per_epoch": 10, "run_started": time.time() - 60,
                                                    "phases": ["teacher"], "planned_steps": {"teacher": 20}})
    with store.engine.begin() as conn:  # its worker died age_s ago, within the lease's grace
        conn.exec_driver_sql(f"UPDATE runs SET heartbeat_at = datetime('now', '-{age_s} seconds') WHERE id = ?",
                             (run_id,))
    return store, run_id


def test_a_stale_heartbeat_is_said_in_words_and_no_time_left_is_guessed(tmp_path, monkeypatch):
    from kdcore.jobs import JobManager

    store, run_id = _running_run_with_old_heartbeat(tmp_path, age_s=30)
    snap = JobManager(store, workers="none").snapshot(run_id)
    assert snap.status == "running"
    assert snap.stale_note().startswith("No heartbeat since ")
    assert int(re.search(r"\((\d+) s ago\)", snap.stale_note()).group(1)) >= 30  # its age, at least as old as set
    assert snap.eta_s is None

    fresh, fresh_id = _running_run_with_old_heartbeat(tmp_path / "fresh", age_s=0)
    fresh_snap = JobManager(fresh, workers="none").snapshot(fresh_id)
    assert fresh_snap.stale_note() is None and fresh_snap.eta_s is not None

    monkeypatch.setenv("KDCORE_DB_URL", store.url)
    monkeypatch.setenv("KDCORE_LOCAL_WORKERS", "0")
    at = open_page("pages/live.py")
    assert any(w.value.startswith("No heartbeat since ") for w in at.warning), [w.value for w in at.warning]


# ---- the worker wakes on a submit ------------------------------------------------------------------------
class _PipeChild:
    """What JobManager.wake writes to of a worker process: its stdin, here a pipe read in this process."""

    def __init__(self, write_end):
        self.stdin = write_end

    def poll(self):
        return None


def test_a_dashboard_worker_process_starts_a_submitted_run_on_the_submit_not_at_its_next_poll(tmp_path):
    from kdcore.jobs import JobManager, Worker
    from kdcore.jobs.manager import wake_from_parent

    store = Store(f"sqlite:///{tmp_path}/runs/kdcore.db")
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    wake, stop, interrupt = threading.Event(), threading.Event(), threading.Event()
    wake_from_parent(wake, os.fdopen(read_end, "rb"))
    # polls once an hour: only a wake can start the run within this test
    worker_store, claims = Store(store.url), []
    claim = worker_store.claim
    worker_store.claim = lambda *a, **k: claims.append(claim(*a, **k)) or claims[-1]
    worker = Worker(worker_store, "cpu", name="woken", poll_s=3600)
    thread = threading.Thread(target=worker.serve, args=(stop, interrupt), kwargs={"wake": wake}, daemon=True)
    thread.start()
    wait_while_progressing(store, lambda: claims == [None], "the worker's first look at the empty queue")
    manager = JobManager(store, workers="none")
    manager._children = [_PipeChild(os.fdopen(write_end, "wb"))]
    run_id = manager.submit(build_config(TINY))
    try:
        wait_while_progressing(store, lambda: store.get_run(run_id).status != "queued", "the woken worker's claim")
    finally:
        interrupt.set()
        stop.set()
        wake.set()
        thread.join(60)
    assert store.get_run(run_id).attempt == 1


# ---- the Runs page builds the open tab only ---------------------------------------------------------------
def test_the_runs_page_builds_only_the_open_tab(tmp_path, monkeypatch):
    store, _ = _store_with_damaged_and_tagged_runs(tmp_path)
    monkeypatch.setenv("KDCORE_DB_URL", store.url)
    monkeypatch.setenv("KDCORE_LOCAL_WORKERS", "0")
    at = open_page("pages/runs.py")
    assert "runs_frontier" not in {chart.key for chart in at.get("plotly_chart")}  # Groups is open
    at.session_state["runs_tab"] = "Scatter"
    at.run()
    assert [chart.key for chart in at.get("plotly_chart")] == ["runs_frontier"]


# ---- the Report page: plotly.js once ------------------------------------------------------------------------
def _completed_run(tmp_path) -> tuple[Store, int]:
    from kdcore.jobs import run_here

    store = Store(f"sqlite:///{tmp_path}/runs/kdcore.db")
    run_id, status = run_here(store, build_config({**TINY, "name": "reported"}))
    assert status == "completed"
    return store, run_id


def test_the_report_page_loads_plotly_js_from_the_dashboard_and_the_download_still_inlines_it(tmp_path,
                                                                                              monkeypatch):
    from kdcore.report import build_report, with_plotly_inlined

    store, run_id = _completed_run(tmp_path)
    monkeypatch.setenv("KDCORE_DB_URL", store.url)
    monkeypatch.setenv("KDCORE_LOCAL_WORKERS", "0")
    at = open_page("pages/report.py")
    srcdoc = at.get("iframe")[0].proto.srcdoc
    src = re.search(r'<script type="text/javascript" src="(app/static/plotly-[\d.]+\.min\.js)"></script>', srcdoc)
    assert src, srcdoc[:600]
    assert "plotly.js" not in srcdoc.split("<body")[0].replace(src.group(1), "")  # not inlined as well
    served = ROOT / "static" / src.group(1).split("/")[-1]
    assert served.read_text(encoding="utf-8") == get_plotlyjs()
    # the file people download is the one `kdcore report` writes: plotly.js inlined, nothing else changed
    stamped = lambda page: re.sub(r"generated \d{4}-\d\d-\d\d \d\d:\d\d", "generated then", page)  # noqa: E731
    assert stamped(with_plotly_inlined(build_report(store, run_id, plotly_src=src.group(1), latency=False),
                                       src.group(1))) == stamped(build_report(store, run_id, latency=False))


# ---- in Chromium: the loading view, and plotly.js fetched once by the Report page ----------------------------
MAIN_TEXTS = """
window.__mainTexts = [];
new MutationObserver(() => {
  const main = document.querySelector('[data-testid="stMain"]');
  const text = main ? main.innerText.trim() : "";
  if (text && window.__mainTexts[window.__mainTexts.length - 1] !== text) window.__mainTexts.push(text);
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


@pytest.mark.browser
def test_a_fresh_dashboard_shows_a_loading_view_first_and_its_report_fetches_plotly_js_by_address(tmp_path, page):
    from ui.serve import serve_dashboard

    store, _ = _completed_run(tmp_path)
    with serve_dashboard(store.url, log_path=tmp_path / "streamlit.log", start_timeout=STALL_S) as url:
        page.add_init_script(MAIN_TEXTS)  # every text the main area shows, from the first
        page.goto(url)
        page.get_by_role("button", name="Run the demo").wait_for(timeout=STALL_S * 1000)
        texts = page.evaluate("window.__mainTexts")
        assert texts and texts[0].startswith("Starting kdcore"), texts[:3]
        assert not page.get_by_text("Starting kdcore").count()  # gone once the page is there

        fetched = []
        page.on("response", lambda r: fetched.append((r.url, r.status)) if "plotly" in r.url else None)
        page.get_by_role("link", name="Report").first.click()
        page.frame_locator("iframe").first.locator(".js-plotly-plot .main-svg").first.wait_for(
            timeout=STALL_S * 1000)
        assert any("/app/static/plotly-" in u and status in (200, 304) for u, status in fetched), fetched
        assert page.evaluate("() => document.querySelector('iframe').srcdoc.length") < 1_000_000


def test_a_runs_first_step_rows_are_stored_at_once_for_the_live_page(tmp_path):
    from kdcore.engine.events import Event
    from kdcore.jobs.live import LiveState
    from kdcore.jobs.recorder import Recorder

    store = Store(f"sqlite:///{tmp_path}/runs/kdcore.db")
    run_id = store.create_run(build_config(TINY))
    record = Recorder(store, LiveState(run_id=run_id, status="running", run_started=time.time()))
    record(Event("plan", info={"phases": ["teacher"], "steps": {"teacher": 100}}))
    record(Event("phase", phase="teacher", info={"epochs": 10, "steps_per_epoch": 10}))
    assert store.metrics_frame([run_id]).empty
    record(Event("step", phase="teacher", epoch=1, step=2, metrics={"train_loss": 2.3, "images_per_s": 100.0}))
    assert set(store.metrics_frame([run_id])["name"]) == {"train_loss", "images_per_s"}  # not 2 s or an epoch later
    record(Event("step", phase="teacher", epoch=1, step=4, metrics={"train_loss": 2.2}))
    assert len(store.metrics_frame([run_id])) == 2  # later rows are batched as before
