"""Studies in the dashboard (AppTest): the New experiment form's search mode and the Studies page, on real runs.

The dashboard's worker runs as a thread here (it also drives studies, as `kdcore worker` does).
"""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdcore.store import Store  # noqa: E402
from tests.helpers import errors, new_experiment_with, no_exceptions, open_page, wait_while_progressing  # noqa: E402

QUICK = {"f.teacher.arch": "small_cnn", "f.teacher.options": "width: 16", "f.teacher.epochs": 1,
         "f.student.arch": "tiny_cnn", "f.student.options": "", "f.train.epochs": 3, "f.train.batch_size": 256}
SPACE = "distill.method: {choices: [soft, dist]}\ndistill.alpha: {low: 0.3, high: 0.9}\n"


@pytest.fixture
def store(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/runs/kdcore.db"
    monkeypatch.setenv("KDCORE_DB_URL", url)
    monkeypatch.setenv("KDCORE_LOCAL_WORKERS", "thread")
    return Store(url)


def _search_form(**values):
    at = new_experiment_with(**QUICK)
    at.toggle(key="ui.search").set_value(True).run()
    for key, value in values.items():
        widget = at.text_area(key=key) if key == "ui.search_space" else (
            at.number_input(key=key) if key == "ui.search_trials" else at.text_input(key=key))
        widget.set_value(value).run()
    no_exceptions(at)
    return at


def test_a_bad_search_space_or_taken_name_blocks_the_launch_and_names_why(store):
    at = _search_form(**{"ui.search_space": "distill.alpha: {low: 0.9, high: 0.1}\n"})
    assert "distill.alpha: low (0.9) is above high (0.1)" in errors(at)
    assert at.button(key="ui.launch").disabled
    at.text_area(key="ui.search_space").set_value("distill.nope: {low: 1, high: 2}\n").run()
    assert "distill.nope: unknown key" in errors(at) and at.button(key="ui.launch").disabled
    at.text_area(key="ui.search_space").set_value(SPACE).run()
    at.text_input(key="ui.search_confirm").set_value("999-1001").run()
    assert "includes seed 1000, which the trials train with" in errors(at)
    at.text_input(key="ui.search_confirm").set_value("0,1").run()
    assert not errors(at) and not at.button(key="ui.launch").disabled
    assert store.list_studies() == []  # nothing stored while the form was wrong
    from kdcore.configure import build_config
    from kdcore.studies import create_study

    create_study(store, "taken", build_config({"dataset": {"name": "digits"}}), {"distill.alpha": {"low": 0.1,
                                                                                               "high": 0.9}}, trials=1)
    at.text_input(key="ui.search_name").set_value("taken").run()
    assert "a study named “taken” exists already" in errors(at) and at.button(key="ui.launch").disabled


def test_search_mode_starts_a_study_that_the_dashboards_worker_asks_runs_and_confirms(store):
    at = _search_form(**{"ui.search_space": SPACE, "ui.search_trials": 4, "ui.search_confirm": "0,1",
                         "ui.search_name": "from the form"})
    assert at.button(key="ui.launch").label == "Start the study (4 trials)"
    at.button(key="ui.launch").click().run()
    no_exceptions(at)
    study = store.get_study("from the form")
    assert study.n_trials == 4 and study.objective == "val_kd_gain" and study.confirm_seeds == "0,1"

    def confirmed() -> bool:
        s = store.get_study("from the form")
        runs = store.list_runs(group=s.confirm_group) if s.confirm_group else []
        return len(runs) == 2 and all(r.status == "completed" for r in runs)

    wait_while_progressing(store, confirmed, "the study's trials and its confirmation")
    study = store.get_study("from the form")
    page = open_page("pages/studies.py")
    assert page.selectbox(key="ui.study").value == "from the form"
    shown = [m.value for m in page.success] + [m.value for m in page.warning]
    assert any("over scratch (95% interval" in m and "2 fresh seeds" in m for m in shown), shown
    assert len(page.get("plotly_chart")) >= 4  # best so far, parallel coordinates, importance, the seeds' dots
    assert "4 of 4 trials finished" in page.get("progress")[0].proto.text
    runs_page = open_page("pages/runs.py")  # the confirmation is a seed group; the trials are not repeats of one
    offered = runs_page.selectbox(key="runs_group").options
    assert study.confirm_group in offered and study.group not in offered, offered


def test_a_teachers_own_training_reaches_its_config_its_summary_and_back_into_the_form(store):
    at = new_experiment_with(**{**QUICK, "f.train.epochs": 1})
    at.toggle(key="ui.own_training").set_value(True).run()
    at.number_input(key="f.teacher.augment.crop_padding").set_value(2).run()
    at.number_input(key="f.teacher.train.lr").set_value(0.0005).run()
    no_exceptions(at)
    at.button(key="ui.launch").click().run()
    run = store.list_runs()[0]
    config = run.config
    assert config["teacher"]["augment"]["crop_padding"] == 2 and config["dataset"]["augment"]["crop_padding"] == 0
    assert config["teacher"]["train"] == {"lr": 0.0005, "weight_decay": 0.0} and config["train"]["lr"] != 0.0005
    wait_while_progressing(store, lambda: store.get_run(run.id).status == "completed", "the run")
    summary = store.get_run(run.id).summary
    assert summary["teacher_augment"]["crop_padding"] == 2 and summary["teacher_train"]["lr"] == 0.0005
    again = open_page("pages/new_experiment.py")
    again.selectbox(key="ui.source_run").set_value(run.id).run()
    again.button(key="ui.fill").click().run()
    no_exceptions(again)
    assert again.toggle(key="ui.own_training").value is True
    assert again.number_input(key="f.teacher.augment.crop_padding").value == 2
