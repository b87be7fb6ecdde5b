"""The Runs page and the report on a real run of two teachers; the run service the pages act through; a stored T
the form's old slider could not hold."""
import re
import sys
from pathlib import Path

import pytest
import streamlit as st

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the app's own packages (ui), as `streamlit run` would see them

from kdcore.cli import main  # noqa: E402
from kdcore.config import ConfigError  # noqa: E402
from kdcore.configure import build_config  # noqa: E402
from kdcore.jobs import run_here  # noqa: E402
from kdcore.jobs.service import ActionRefused, RunService  # noqa: E402
from kdcore.report import build_report  # noqa: E402
from kdcore.store import Store  # noqa: E402
from tests.helpers import no_exceptions, open_page, select_first_run  # noqa: E402

TWO = {"name": "two teachers", "dataset": {"name": "digits", "val_fraction": 0.15},
       "teachers": [{"arch": "tiny_cnn", "epochs": 1}, {"arch": "mlp", "options": {"hidden": [32]}, "epochs": 1}],
       "student": {"arch": "mlp_tiny"}, "train": {"epochs": 1, "batch_size": 256, "seed": 0, "device": "cpu"}}
ONE = {"name": "one teacher", "dataset": {"name": "digits"}, "teacher": {"arch": "tiny_cnn", "epochs": 1},
       "student": {"arch": "mlp_tiny"}, "train": {"epochs": 1, "batch_size": 256, "device": "cpu"}}


@pytest.fixture(scope="module")
def two_teacher_store(tmp_path_factory):
    """A real store: a completed run of two teachers (newest, so the table's first row) after one of one teacher."""
    url = f"sqlite:///{tmp_path_factory.mktemp('runs_page')}/kdcore.db"
    store = Store(url)
    one, status = run_here(store, build_config(ONE))
    assert status == "completed"
    two, status = run_here(store, build_config(TWO))
    assert status == "completed", store.get_run(two).error
    return {"url": url, "one": one, "two": two}


@pytest.fixture
def runs_db(two_teacher_store, monkeypatch):
    monkeypatch.setenv("KDCORE_DB_URL", two_teacher_store["url"])
    monkeypatch.setenv("KDCORE_LOCAL_WORKERS", "0")  # nothing here trains: a queued run stays queued
    return two_teacher_store


def test_the_calibration_view_shows_every_teacher(runs_db):
    at = select_first_run(open_page("pages/runs.py"))
    at.radio(key="runs_detail_view").set_value("Calibration and per class").run()
    no_exceptions(at)
    eces = [m.label for m in at.metric]
    assert eces[:4] == ["Teacher ECE", "Teacher 2 ECE", "Student ECE", "Baseline ECE"], eces
    specs = [c.proto.spec for c in at.get("plotly_chart")]
    reliability = next(s for s in specs if "perfectly calibrated" in s)
    per_class = next(s for s in specs if "Test accuracy per class" in s)
    for phase in ("teacher (ECE", "teacher 2 (ECE", "student (ECE", "baseline (ECE"):
        assert phase in reliability, phase
    assert all(f'"name":"{p}"' in per_class for p in ("teacher", "teacher 2", "baseline", "student"))


def test_the_teacher_filter_finds_a_run_by_any_of_its_teachers(runs_db):
    at = open_page("pages/runs.py")
    options = at.multiselect(key="runs_filter_teacher_arch").options
    assert {"tiny_cnn", "mlp"} <= set(options) and "tiny_cnn + mlp" not in options
    at.multiselect(key="runs_filter_teacher_arch").set_value(["mlp"]).run()
    assert list(at.dataframe[0].value["id"]) == [runs_db["two"]]  # only the run with an mlp teacher
    at.multiselect(key="runs_filter_teacher_arch").set_value(["tiny_cnn"]).run()
    assert list(at.dataframe[0].value["id"]) == [runs_db["two"], runs_db["one"]]  # both have a tiny_cnn teacher


def test_the_reports_calibration_shows_every_teacher(runs_db):
    page = build_report(Store(runs_db["url"]), runs_db["two"], latency=False)
    calibration = page[page.index("<h2>Calibration"):]
    for phase in ("teacher", "teacher 2", "baseline", "student"):
        assert f"ECE · {phase}<" in calibration, phase


def test_a_cli_run_at_t_30_reopens_in_new_experiment_at_t_30(runs_db, capsys):
    # the config allows T up to 100; the form's slider used to stop at 20 and clamp the stored 30
    assert main(["--db", runs_db["url"], "submit", str(ROOT / "examples" / "digits.yaml"),
                 "--set", "distill.temperature=30", "--set", "name=hot"]) == 0
    run_id = int(capsys.readouterr().out.split()[0])
    store = Store(runs_db["url"])
    assert store.get_run(run_id).temperature == 30
    st.cache_data.clear()  # the runs list is cached for 2 s: the page must see the run just submitted
    at = open_page("pages/runs.py")
    at.text_input(key="runs_search").set_value("hot").run()
    select_first_run(at)
    at.button(key=f"restart_{run_id}").click().run()
    no_exceptions(at)
    assert at.title[0].value == "New experiment"
    assert at.slider(key="f.distill.temperature").value == 30
    at.switch_page("pages/new_experiment.py").run()  # AppTest stays on the page it opened; a browser follows
    assert at.slider(key="f.distill.temperature").value == 30
    at.button(key="ui.launch").click().run()  # what it queues is what the form shows
    assert not at.error, [e.value for e in at.error]
    queued = max(store.list_runs(), key=lambda r: r.id)
    assert queued.id != run_id and queued.temperature == 30
    for stale in (queued.id, run_id):  # leave the module's store as it was for the next tests
        RunService(store).cancel(stale)
        store.delete_run(stale)


def test_the_distributions_slider_holds_a_stored_t_beyond_20(tmp_path):
    from ui.form import t_slider_range

    low, high = t_slider_range(30.0)
    assert low <= 30.0 <= high and high == 100.0  # the config's upper bound, read from DistillConfig
    assert t_slider_range(0.2)[0] == 0.2  # a stored T under one step stays reachable; 0 itself is never offered


# ---- the service --------------------------------------------------------------------------------------
def test_the_service_resumes_only_what_can_go_on(runs_db, tmp_path):
    store = Store(f"sqlite:///{tmp_path}/kd.db")
    service = RunService(store)
    run_id = service.submit(build_config(ONE))
    with pytest.raises(ActionRefused, match="only an interrupted, cancelled or failed run"):
        service.resume(run_id)  # still queued
    assert service.cancel(run_id) and store.get_run(run_id).status == "cancelled"
    assert service.resume_problem(run_id) is None
    service.resume(run_id)
    assert store.get_run(run_id).status == "queued"
    assert service.cancel(run_id)
    store.finish_run(run_id, "failed", error="training diverged: the loss is nan at epoch 1")
    problem = service.resume_problem(run_id)
    if problem is not None:  # the worker's one rule says why (a diverged run would diverge again)
        with pytest.raises(ActionRefused):
            service.resume(run_id)
    assert service.resume_problem(10_000) == "run 10000 is not stored"


def test_the_service_checks_before_it_queues_and_queues_all_or_none(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/kd.db")
    service = RunService(store)
    woke = []
    service._wake = lambda: woke.append(1)
    good = build_config(ONE)
    bad = build_config({**ONE, "teacher": {"arch": "tiny_cnn", "source": "run", "run_id": 42}})
    with pytest.raises(ConfigError, match="42"):
        service.submit_many([good, bad])
    assert store.list_runs() == [] and not woke  # nothing queued, not even the good one
    ids = service.submit_many([good, good.model_copy(update={"name": "second"})])
    assert [store.get_run(i).status for i in ids] == ["queued", "queued"] and woke


def test_the_service_edits_and_refuses_to_delete_an_active_run(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/kd.db")
    service = RunService(store)
    run_id = service.submit(build_config(ONE))
    with pytest.raises(ActionRefused):
        service.delete(run_id)  # queued
    with pytest.raises(ActionRefused, match="empty"):
        service.rename(run_id, "  ")
    service.rename(run_id, "renamed")
    service.tag(run_id, ["b", " a", "", "b"])
    service.annotate(run_id, "why")
    run = store.get_run(run_id)
    assert (run.name, run.tag_list, run.notes) == ("renamed", ["a", "b"], "why")
    service.cancel(run_id)
    service.delete(run_id)
    assert store.list_runs() == []


def test_pages_never_write_to_the_store_themselves():
    # every change a person makes goes through kdcore.jobs.service (one set of rules for each action)
    writes = re.compile(r"\.(create_run|finish_run|update_run|delete_run|requeue|request_cancel|submit|"
                        r"submit_many|cancel)\(")
    for path in [ROOT / "app.py", *sorted((ROOT / "pages").glob("*.py"))]:
        found = [line for line in path.read_text().splitlines()
                 if writes.search(line) and "service()" not in line]
        assert not found, (path.name, found)


def test_the_kl_and_entropy_curves_reach_a_stored_t_above_20():
    from ui.state import curve_temperatures

    assert curve_temperatures()[-1] == 20 and curve_temperatures(30)[-1] >= 30 and curve_temperatures(100)[-1] >= 100
    assert curve_temperatures(30)[:39] == curve_temperatures()  # the usual range drawn as finely as before
