"""The dashboard's pages, driven headless with streamlit.testing: they render, validate, and launch real jobs.

Each test points $KDCORE_DB_URL at a temporary SQLite file before building the app;
the seeded store holds bench/seed_runs.py's runs plus one real (tiny) digits run.
"""
import base64
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the app's own packages (ui, bench), as `streamlit run` would see them

from streamlit.testing.v1 import AppTest  # noqa: E402

from bench.seed_runs import seed  # noqa: E402
from kdcore.configure import build_config  # noqa: E402
from kdcore.distill import METHODS  # noqa: E402
from kdcore.distill.base import describe  # noqa: E402
from kdcore.engine.checkpoint import save_checkpoint  # noqa: E402
from kdcore.experiments import expand  # noqa: E402
from kdcore.jobs import run_here  # noqa: E402
from kdcore.models import create_model  # noqa: E402
from kdcore import text  # noqa: E402
from kdcore.store import ACTIVE, Store  # noqa: E402
from kdcore.losses import ensemble_softened, softened  # noqa: E402
from ui import state  # noqa: E402
from tests.helpers import (changed_option, errors, method_terms, new_experiment_with, no_exceptions,  # noqa: E402
                           open_page, wait_while_progressing)

PAGES = ["pages/home.py", "pages/new_experiment.py", "pages/live.py", "pages/runs.py", "pages/distributions.py"]
TINY = {"dataset": {"name": "digits"}, "teacher": {"arch": "tiny_cnn", "epochs": 1}, "student": {"arch": "mlp_tiny"},
        "train": {"epochs": 1, "batch_size": 256}}
# the New experiment form set for a run of seconds on digits: CNNs on both sides, so feature methods have maps
QUICK_FORM = {"f.teacher.arch": "small_cnn", "f.teacher.options": "width: 16", "f.teacher.epochs": 1,
              "f.student.arch": "tiny_cnn", "f.student.options": "", "f.train.epochs": 1, "f.train.batch_size": 256,
              "f.baseline": False}


def _real_run(store: Store, name: str = "real tiny run") -> int:
    run_id, status = run_here(store, build_config({**TINY, "name": name}))
    assert status == "completed"
    return run_id


@pytest.fixture(autouse=True)
def worker_threads(monkeypatch):
    # these tests drive pages, not the worker layout: a thread per test store, not a process
    monkeypatch.setenv("KDCORE_LOCAL_WORKERS", "thread")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('seeded')}/kdcore.db"
    seed(url, runs=20, epochs=50, datasets=("digits", "mnist"))
    store = Store(url)
    group = expand(build_config({**TINY, "name": "tiny seeds"}), seeds=[0, 1], group="tiny seeds")
    group_ids = []
    for cfg in group:
        run_id, status = run_here(store, cfg)
        assert status == "completed"
        group_ids.append(run_id)
    failed = store.create_run(build_config({**TINY, "name": "doomed"}))
    store.finish_run(failed, "failed", error="teacher.checkpoint: the file is not a checkpoint\n\n"
                                               "Traceback (most recent call last):\n  File \"x.py\", line 1")
    return {"url": url, "real": _real_run(store), "failed": failed, "group": "tiny seeds", "group_ids": group_ids}


@pytest.fixture
def seeded_db(seeded, monkeypatch):
    monkeypatch.setenv("KDCORE_DB_URL", seeded["url"])
    return seeded


@pytest.fixture
def empty_db(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/kdcore.db"
    monkeypatch.setenv("KDCORE_DB_URL", url)
    return url


@pytest.fixture
def manager():
    """The app's job manager for the current store; jobs a test leaves are cancelled at its end."""
    from ui import state

    mgr = state.manager()
    yield mgr
    for run_id in mgr.active():
        mgr.cancel(run_id)
    for run_id in mgr.store.list_runs(status=ACTIVE):
        mgr.wait(run_id.id)


def _launch(at: AppTest) -> AppTest:
    button = at.button(key="ui.launch")
    assert not button.disabled, errors(at)
    button.click().run()
    no_exceptions(at)
    return at


# ---- every page renders ----------------------------------------------------------------------------
@pytest.mark.parametrize("page", PAGES)
def test_page_renders_on_an_empty_store(empty_db, page):
    at = open_page(page)
    assert at.title, "every page has a title"
    assert not errors(at)


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_on_a_seeded_store(seeded_db, page):
    at = open_page(page)
    assert not errors(at) or page == "pages/live.py"  # Live may show the failed run's message


def test_home_lists_the_latest_runs_and_the_sidebar_names_the_device(seeded_db):
    at = open_page("pages/home.py")
    assert len(at.dataframe[0].value) == 10
    sidebar = " ".join(c.value for c in at.sidebar.caption)
    assert f"torch {torch.__version__}" in sidebar and "Queue: idle" in sidebar


# ---- New experiment: validation beside the fields -------------------------------------------------
def test_a_config_error_appears_and_blocks_launch(empty_db):
    at = new_experiment_with(**{"f.train.lr": 0.0})
    assert "train.lr" in errors(at) and "greater than 0" in errors(at)
    assert at.button(key="ui.launch").disabled
    assert Store().count_runs() == 0


def test_bad_model_options_are_reported(empty_db):
    at = new_experiment_with(**{"f.student.options": "depth: [oops"})
    assert "student.options" in errors(at)


def test_an_upload_that_is_not_a_checkpoint_is_refused(empty_db):
    at = new_experiment_with(**{"f.teacher.source": "checkpoint"})
    at.file_uploader(key="ui.checkpoint").upload("teacher.pt", b"not a checkpoint at all").run()
    no_exceptions(at)
    assert "teacher.checkpoint" in errors(at) and "teacher.pt" in errors(at)  # named, with kdcore's reason
    assert at.button(key="ui.launch").disabled


@pytest.mark.parametrize("arch, classes, message", [("tiny_cnn", 10, "'tiny_cnn' model"), ("small_cnn", 100, "100 classes")])
def test_a_checkpoint_for_another_architecture_or_class_count_is_refused(empty_db, tmp_path, arch, classes, message):
    path = tmp_path / "other.pt"
    save_checkpoint(path, create_model(arch, classes, 1, 8), arch=arch, num_classes=classes, in_channels=1,
                    image_size=8)
    at = new_experiment_with(**{"f.teacher.source": "checkpoint", "f.teacher.arch": "small_cnn"})
    at.file_uploader(key="ui.checkpoint").upload("other.pt", path.read_bytes()).run()
    assert message in errors(at)


def test_a_missing_dataset_is_reported(empty_db, tmp_path):
    at = new_experiment_with(**{"f.dataset.name": "cifar10", "f.dataset.root": str(tmp_path / "nothing")})
    assert "missing" in errors(at)
    assert at.button(key="ui.launch").disabled


def test_an_uploaded_zip_of_class_folders_becomes_the_image_folder(empty_db):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for cls in ("cats", "dogs"):
            for i in range(3):
                image = io.BytesIO()
                Image.new("RGB", (12, 12), (40 * i, 0, 0)).save(image, format="PNG")
                archive.writestr(f"pets/{cls}/{i}.png", image.getvalue())
    at = new_experiment_with(**{"f.dataset.name": "imagefolder", "ui.images_from": "zip"})
    at.file_uploader(key="ui.zip").upload("pets.zip", buffer.getvalue(), "application/zip").run()
    no_exceptions(at)
    assert any("found 2 classes" in s.value for s in at.success), errors(at)
    assert list((Path(Store().artefact_root) / "uploads").glob("*-pets/pets/cats/0.png"))


def test_a_zip_reaching_outside_its_folder_is_refused(empty_db):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../escape.png", b"x")
    at = new_experiment_with(**{"f.dataset.name": "imagefolder", "ui.images_from": "zip"})
    at.file_uploader(key="ui.zip").upload("evil.zip", buffer.getvalue(), "application/zip").run()
    assert "outside its folder" in errors(at)


def test_the_loss_formula_shows_the_chosen_numbers(empty_db):
    at = new_experiment_with(**{"f.distill.temperature": 8.0, "f.distill.alpha": 0.25})
    formula = " ".join(line.value for line in at.latex)
    assert "0.75" in formula and "0.25" in formula and "64" in formula and "z_t/8" in formula


def test_start_from_a_stored_run_fills_the_form(seeded_db):
    at = open_page("pages/new_experiment.py")
    at.selectbox(key="ui.source_run").set_value(seeded_db["real"])
    at.button(key="ui.fill").click().run()
    no_exceptions(at)
    assert at.session_state["f.teacher.arch"] == "tiny_cnn"
    assert at.session_state["f.train.batch_size"] == 256


# ---- launching ------------------------------------------------------------------------------------------
def test_launch_queues_the_run_and_opens_live(empty_db, manager):
    at = new_experiment_with(**{"f.teacher.epochs": 1, "f.train.epochs": 1, "f.name": "launched"})
    _launch(at)
    assert at.title[0].value == "Live"
    runs = Store().list_runs()
    assert [r.name for r in runs] == ["launched"]
    assert runs[0].status in (*ACTIVE, "completed")
    assert manager.snapshot(runs[0].id) is not None

    second_tab = open_page("pages/live.py")  # a new session sees the same job: state lives in the manager
    assert any(f"#{runs[0].id}" in s.value for s in second_tab.subheader)


def test_home_demo_button_queues_the_demo(empty_db, manager):
    at = open_page("pages/home.py")
    at.button[0].click().run()
    no_exceptions(at)
    assert at.title[0].value == "Live"
    (run,) = Store().list_runs()
    assert run.name == "digits demo" and run.temperature == 4 and run.alpha == 0.9
    manager.cancel(run.id)


def _queue_sweep(manager, group: str, alphas: str, temperatures: str | None = None, **form):
    """Fills the sweep fields of the New-experiment page, launches, and returns the group's stored runs."""
    at = new_experiment_with(**{"ui.sweep": True, **form})
    if temperatures is not None:
        at.text_input(key="ui.sweep_t").set_value(temperatures)
    at.text_input(key="ui.sweep_alpha").set_value(alphas)
    at.text_input(key="ui.sweep_group").set_value(group)
    at.run()
    for run_id in manager.active():
        manager.cancel(run_id)
    _launch(at)
    return at, Store().list_runs(group=group)


def test_a_sweep_queues_one_run_per_pair_in_one_group(empty_db, manager):
    _, runs = _queue_sweep(manager, "grid", "0.5", temperatures="2, 4")
    assert sorted(r.temperature for r in runs) == [2.0, 4.0] and {r.alpha for r in runs} == {0.5}


def test_a_sweep_for_a_method_without_t_sweeps_alpha_only(empty_db, manager):
    at, runs = _queue_sweep(manager, "alpha only", "0.5, 0.9", **{"f.distill.method": "hard"})
    assert not [t for t in at.text_input if t.key == "ui.sweep_t"]
    assert len(runs) == 2 and {r.alpha for r in runs} == {0.5, 0.9} and len({r.temperature for r in runs}) == 1


def test_seeds_queue_one_run_per_seed_in_one_group_sharing_one_teacher(empty_db, manager):
    at = new_experiment_with()
    at.text_input(key="ui.seeds").set_value("3-5").run()
    for run_id in manager.active():
        manager.cancel(run_id)
    assert at.button(key="ui.launch").label == "Queue 3 runs"
    _launch(at)
    runs = Store().list_runs()
    assert len({r.group for r in runs}) == 1 and runs[0].group
    assert sorted(r.config["train"]["seed"] for r in runs) == [3, 4, 5]
    assert {r.config["teacher"]["seed"] for r in runs} == {3}


def test_a_bad_seed_list_is_reported(empty_db):
    at = new_experiment_with()
    at.text_input(key="ui.seeds").set_value("0-x").run()
    assert "'0-x' is not a seed" in errors(at)
    assert at.button(key="ui.launch").disabled


def test_a_bad_sweep_value_is_reported(empty_db):
    at = new_experiment_with(**{"ui.sweep": True})
    at.text_input(key="ui.sweep_t").set_value("2, hot").run()
    assert "'hot' is not a number" in errors(at)


# ---- Live ----------------------------------------------------------------------------------------------
def test_live_shows_a_failed_runs_reason_without_its_traceback(seeded_db):
    at = open_page("pages/live.py")
    at.selectbox(key="live_pick").set_value(seeded_db["failed"]).run()
    no_exceptions(at)
    assert "the file is not a checkpoint" in errors(at)
    assert "Traceback" not in errors(at)


def test_live_shows_the_summary_card_of_a_finished_run(seeded_db):
    at = open_page("pages/live.py")
    at.selectbox(key="live_pick").set_value(seeded_db["real"]).run()
    labels = [m.label for m in at.metric]
    assert "KD gain" in labels and "Student is smaller" in labels
    assert len(at.get("plotly_chart")) == 3
    verdict = " ".join(i.value for i in at.info) + " ".join(w.value for w in at.warning) + \
        " ".join(s.value for s in at.success)
    assert "95% interval" in verdict and "of 359 test images" in verdict


def test_runs_group_view_shows_mean_spread_interval_and_a_dot_per_seed(seeded_db):
    at = open_page("pages/runs.py")
    at.selectbox(key="runs_group").set_value(seeded_db["group"]).run()
    no_exceptions(at)
    text = " ".join(x.value for x in [*at.info, *at.success, *at.caption])
    assert "over 2 seeds" in text and "95% interval" in text and "1 teacher(s) trained" in text
    dots = [c for c in at.get("plotly_chart") if "n = 2 seeds" in c.proto.spec]
    assert len(dots) == 1 and all(f"seed {s}, run #{i}" in dots[0].proto.spec
                                  for s, i in zip((0, 1), seeded_db["group_ids"]))


# ---- Runs ------------------------------------------------------------------------------------------------
def _select_rows(at: AppTest, rows: list[int]) -> AppTest:
    at.session_state[at.dataframe[0].key] = {"selection": {"rows": rows, "columns": [], "cells": []}}
    at.run()
    no_exceptions(at)
    return at


def test_runs_filters_narrow_the_table(seeded_db):
    at = open_page("pages/runs.py")
    total = len(at.dataframe[0].value)
    at.multiselect(key="runs_filter_dataset").set_value(["digits"]).run()
    table = at.dataframe[0].value
    assert 0 < len(table) < total and set(table["dataset"]) == {"digits"}
    at.text_input(key="runs_search").set_value("real tiny").run()
    assert list(at.dataframe[0].value["name"]) == ["real tiny run"]


def test_the_runs_table_says_in_which_precision_each_run_trained(seeded_db):
    from kdcore.engine.device import cpu_runs_bf16

    table = open_page("pages/runs.py").dataframe[0].value
    real = table[table["name"] == "real tiny run"]
    assert list(real["precision"]) == ["bf16" if cpu_runs_bf16() else "fp32"]


def test_selecting_runs_shows_comparisons_and_the_detail(seeded_db):
    at = open_page("pages/runs.py")
    _select_rows(at, [0, 1, 2])  # newest first: the real run, the failed one, a seeded one
    drawn = set()
    for tab in ("Groups", "Frontier", "Curves", "Test accuracy", "Scatter"):  # only the open tab is built
        at.session_state["runs_tab"] = tab
        at.run()
        no_exceptions(at)
        drawn |= {chart.key for chart in at.get("plotly_chart")}
    assert {"runs_overlay", "runs_bars", "runs_pareto", "runs_frontier"} <= drawn, drawn
    assert any("#" in s.value for s in at.subheader)
    for view in ("Config", "Curves", "Test set", "Downloads"):
        at.radio(key="runs_detail_view").set_value(view).run()
        no_exceptions(at)
    assert "Student weights (.pt)" in [b.label for b in at.get("download_button")]
    assert {"Student as ONNX", "Student as torch.export (.pt2)"} <= {b.label for b in at.button}


def test_a_stored_run_opens_as_a_new_experiment(seeded_db):
    at = open_page("pages/runs.py")
    at.text_input(key="runs_search").set_value("real tiny").run()
    _select_rows(at, [0])
    at.button(key=f"restart_{seeded_db['real']}").click().run()
    no_exceptions(at)
    assert at.title[0].value == "New experiment"
    assert at.selectbox(key="f.teacher.arch").value == "tiny_cnn"


def test_rename_tags_and_notes_are_saved(empty_db):
    store = Store()
    run_id = store.create_run(build_config({**TINY, "name": "before"}))
    store.finish_run(run_id, "completed", {})
    at = _select_rows(open_page("pages/runs.py"), [0])
    at.text_input(key=f"edit_name_{run_id}").set_value("after")
    at.text_input(key=f"edit_tags_{run_id}").set_value("good, digits")
    at.text_area(key=f"edit_notes_{run_id}").set_value("keep this one")
    next(b for b in at.button if b.label == "Save").click().run()
    no_exceptions(at)
    run = store.get_run(run_id)
    assert (run.name, run.tag_list, run.notes) == ("after", ["digits", "good"], "keep this one")


def test_delete_asks_first_then_removes_the_run_and_its_files(empty_db):
    store = Store()
    run_id = _real_run(store)
    assert store.run_dir(run_id).is_dir()
    at = _select_rows(open_page("pages/runs.py"), [0])
    at.button(key=f"delete_{run_id}").click().run()
    assert "cannot be undone" in " ".join(w.value for w in at.warning)
    assert store.count_runs() == 1  # nothing is lost before the confirmation
    at.button(key=f"delete_yes_{run_id}").click().run()
    no_exceptions(at)
    assert store.count_runs() == 0 and not store.run_dir(run_id).exists()


# ---- Distributions ----------------------------------------------------------------------------------------
def test_distributions_recompute_from_the_logits_when_t_moves(seeded_db):
    at = open_page("pages/distributions.py")
    at.selectbox(key="dist_run").set_value(seeded_db["real"]).run()
    no_exceptions(at)
    assert len(at.get("plotly_chart")) == 5  # bars, curves vs T, similarity, two confusion matrices
    slider = at.slider(key=f"dist_T_{seeded_db['real']}")
    slider.set_value(12.0).run()
    no_exceptions(at)
    assert "T = 12" in at.get("plotly_chart")[0].proto.spec


def test_distributions_can_pick_an_image_the_student_gets_wrong(seeded_db):
    logits = torch.load(Store(seeded_db["url"]).run_dir(seeded_db["real"]) / "test_logits.pt", weights_only=True)
    wrong = (logits["student"].argmax(1) != logits["labels"]).nonzero().flatten().tolist()
    at = open_page("pages/distributions.py")
    at.selectbox(key="dist_run").set_value(seeded_db["real"]).run()
    at.toggle(key="dist_wrong").set_value(True).run()
    no_exceptions(at)
    assert wrong, "a one-epoch student gets some digits wrong"
    pick = wrong[min(1, len(wrong) - 1)]  # on the gallery's first page
    at.button(key=f"dist_pick_{pick}").click().run()
    no_exceptions(at)
    assert any(f"**#{pick}**" in m.value for m in at.markdown)


# ---- Distillation methods: the form is drawn from each method's declaration -----------------------------
def _option_widget(at: AppTest, option: dict):
    """The widget the form drew for a declared method option."""
    key = f"f.distill.options.{option['name']}"
    if "enum" in option:
        return at.selectbox(key=key)
    return {"boolean": at.toggle, "number": at.number_input, "integer": at.number_input}.get(
        option.get("type"), at.text_input)(key=key)


def _wait_done(run_id: int):
    store = Store()
    wait_while_progressing(store, lambda: store.get_run(run_id).status not in ACTIVE, f"run {run_id}")
    run = store.get_run(run_id)
    assert run.status == "completed", run.error
    return run


@pytest.mark.parametrize("method", METHODS.names())
def test_each_methods_form_comes_from_its_declaration_and_a_run_from_it_logs_the_methods_terms(empty_db, manager,
                                                                                              method):
    declared = describe(METHODS.get(method))
    at = new_experiment_with(**QUICK_FORM, **{"f.distill.method": method, "f.name": f"{method} from the page"})
    for option in declared["options"]:
        widget = _option_widget(at, option)
        assert widget.value == option["default"], option["name"]
        assert widget.help.startswith(option["help"])
        if "minimum" in option:  # said in the help; validation holds it (a widget bound would hide a typed value)
            assert f"from {option['minimum']:g}" in widget.help
        if "maximum" in option:
            assert f"to {option['maximum']:g}" in widget.help
    latex = " ".join(line.value for line in at.latex)
    assert text.wrapped(declared["formula"]) in latex and r"(1-\alpha)" in latex
    assert at.slider(key="f.distill.temperature").disabled == (not declared["uses_temperature"])

    changed = next(((o["name"], changed_option(o)) for o in declared["options"] if changed_option(o) is not None),
                   None)
    if changed:
        _option_widget(at, next(o for o in declared["options"] if o["name"] == changed[0])).set_value(changed[1])
        at.run()
    _launch(at)
    (run,) = Store().list_runs()
    options = run.config["distill"]["options"]
    assert set(options) == {o["name"] for o in declared["options"]}
    if changed:
        assert options[changed[0]] == pytest.approx(changed[1])

    run = _wait_done(run.id)
    curves = Store().metrics_frame([run.id], kind="epoch")
    student = curves[curves["phase"] == "student"]
    logged = {n.removeprefix("train_") for n in student["name"] if n.startswith("train_")} - {"loss", "acc"}
    assert logged == method_terms(build_config(run.config))
    values = student[student["epoch"] == 1].set_index("name")["value"]
    assert sum(values[f"train_{t}"] for t in logged) == pytest.approx(values["train_loss"], rel=1e-4)


def test_switching_method_resets_the_options_to_the_new_methods_defaults(empty_db):
    with_options = [describe(METHODS.get(m)) for m in METHODS.names() if describe(METHODS.get(m))["options"]]
    if len(with_options) < 2:
        pytest.skip("needs two registered methods with options")
    first, second = with_options[:2]
    at = new_experiment_with(**{"f.distill.method": first["name"]})
    option = next(o for o in first["options"] if changed_option(o) is not None)
    _option_widget(at, option).set_value(changed_option(option)).run()
    at.selectbox(key="f.distill.method").set_value(second["name"]).run()
    no_exceptions(at)
    assert not errors(at)  # no option of the first method left behind as an unknown key
    for o in second["options"]:
        assert _option_widget(at, o).value == o["default"]
    at.selectbox(key="f.distill.method").set_value(first["name"]).run()
    assert _option_widget(at, option).value == option["default"]


def test_an_invalid_method_option_is_shown_beside_the_options(empty_db):
    for name in METHODS.names():
        declared = describe(METHODS.get(name))
        bounded = [o for o in declared["options"] if "exclusiveMaximum" in o and o.get("type") == "number"]
        if bounded:
            break
    else:
        pytest.skip("no registered method has an option with an exclusive upper bound")
    option = bounded[0]
    at = new_experiment_with(**{"f.distill.method": name})
    _option_widget(at, option).set_value(float(option["exclusiveMaximum"])).run()
    assert f"distill.options.{option['name']}" in errors(at)
    assert at.button(key="ui.launch").disabled


# ---- several teachers, transfer, a student from a checkpoint --------------------------------------------
def test_a_two_teacher_form_writes_teachers_and_their_weights(empty_db, monkeypatch):
    monkeypatch.setenv("KDCORE_LOCAL_WORKERS", "0")  # queued, not trained: only the stored config matters here
    at = new_experiment_with(**QUICK_FORM)
    at.button(key="ui.add_teacher").click().run()
    at.selectbox(key="f.teachers.1.arch").set_value("tiny_cnn")
    at.radio(key="ui.combine").set_value("weights").run()
    at.number_input(key="f.distill.teacher_weights.1").set_value(3.0).run()
    no_exceptions(at)
    assert [m.label for m in at.metric].count("Parameters") == 3  # each teacher's size, and the student's
    _launch(at)
    (run,) = Store().list_runs()
    teachers = run.config["teachers"]
    assert [t["arch"] for t in teachers] == ["small_cnn", "tiny_cnn"] and teachers[0]["options"] == {"width": 16}
    assert run.config["distill"]["teacher_weights"] == [1.0, 3.0]


def test_removing_the_second_teacher_writes_a_single_teacher_again(empty_db, monkeypatch):
    monkeypatch.setenv("KDCORE_LOCAL_WORKERS", "0")
    at = new_experiment_with(**QUICK_FORM)
    at.button(key="ui.add_teacher").click().run()
    at.button(key="ui.remove_teacher.1").click().run()
    assert "ui.combine" not in [r.key for r in at.radio]  # nothing to combine with one teacher
    _launch(at)
    (run,) = Store().list_runs()
    assert run.config["teachers"] == [] and run.config["teacher"]["arch"] == "small_cnn"
    assert run.config["distill"]["teacher_weights"] is None


def _checkpoint(tmp_path, arch: str, classes: int, name: str = "other.pt") -> Path:
    path = tmp_path / name
    save_checkpoint(path, create_model(arch, classes, 1, 8), arch=arch, num_classes=classes, in_channels=1,
                    image_size=8)
    return path


def test_a_finetune_form_writes_finetune_epochs_and_accepts_another_class_count(empty_db, tmp_path, monkeypatch):
    monkeypatch.setenv("KDCORE_LOCAL_WORKERS", "0")
    path = _checkpoint(tmp_path, "tiny_cnn", 100)
    at = new_experiment_with(**{**QUICK_FORM, "f.teacher.source": "checkpoint", "f.teacher.arch": "tiny_cnn",
                                "f.teacher.options": ""})
    at.file_uploader(key="ui.checkpoint").upload("other.pt", path.read_bytes()).run()
    assert "100 classes" in errors(at)  # without fine-tuning, a head for 100 classes cannot serve 10
    at.toggle(key="ui.finetune").set_value(True).run()
    at.number_input(key="f.teacher.finetune_epochs").set_value(3)
    at.toggle(key="f.teacher.finetune_last_stage_only").set_value(True).run()
    assert "100 classes" not in errors(at), errors(at)  # fine-tuning gives it a new head
    _launch(at)
    (run,) = Store().list_runs()
    assert run.config["teacher"]["finetune_epochs"] == 3 and run.config["teacher"]["finetune_last_stage_only"]


def test_a_student_can_start_from_an_uploaded_checkpoint(empty_db, tmp_path, monkeypatch):
    monkeypatch.setenv("KDCORE_LOCAL_WORKERS", "0")
    path = _checkpoint(tmp_path, "tiny_cnn", 10, "student.pt")
    at = new_experiment_with(**QUICK_FORM, **{"ui.student_start": "checkpoint"})
    assert "student.checkpoint" in errors(at) and at.button(key="ui.launch").disabled  # nothing uploaded yet
    at.file_uploader(key="ui.student_checkpoint").upload("student.pt", path.read_bytes()).run()
    _launch(at)
    (run,) = Store().list_runs()
    assert run.config["student"]["checkpoint"].endswith("student.pt")


def test_a_two_teacher_run_trains_from_the_page_and_shows_each_teacher_and_the_ensemble(empty_db, manager):
    at = new_experiment_with(**QUICK_FORM, **{"f.name": "two teachers"})
    at.button(key="ui.add_teacher").click().run()
    at.selectbox(key="f.teachers.1.arch").set_value("tiny_cnn").run()
    _launch(at)
    (run,) = Store().list_runs()
    run = _wait_done(run.id)
    summary = run.summary
    assert "teacher2_test_acc" in summary and "ensemble_test_acc" in summary
    assert [t["phase"] for t in summary["teachers"]] == ["teacher", "teacher2"]

    live = open_page("pages/live.py")
    live.selectbox(key="live_pick").set_value(run.id).run()
    labels = [m.label for m in live.metric]
    assert "Ensemble test accuracy" in labels and "Teacher 2 · tiny_cnn" in labels

    state.runs_changed()  # the runs list is cached for a second: it may still hold the run as running
    dist = open_page("pages/distributions.py")
    dist.selectbox(key="dist_run").set_value(run.id).run()
    dist.radio(key=f"dist_teacher_{run.id}").set_value("ensemble").run()
    no_exceptions(dist)
    assert "ensemble" in dist.get("plotly_chart")[0].proto.spec

    runs = open_page("pages/runs.py")
    runs.text_input(key="runs_search").set_value("two teachers").run()
    _select_rows(runs, [0])
    runs.radio(key="runs_detail_view").set_value("Test set").run()
    shown = runs.radio(key="runs_cm_model").options
    assert "ensemble" in shown and "teacher 2" in shown
    runs.radio(key="runs_detail_view").set_value("Downloads").run()
    no_exceptions(runs)
    assert "Teacher 2 weights (.pt)" in [b.label for b in runs.get("download_button")]


def test_a_transfer_run_from_mnist_to_fashion_mnist_trains_from_the_page(empty_db, manager, shared_data):
    store = Store()
    mnist = {"name": "mnist teacher", "dataset": {"name": "mnist", "root": str(shared_data), "student_fraction": 0.02},
             "teacher": {"arch": "tiny_cnn", "epochs": 1}, "student": {"arch": "tiny_cnn"},
             "train": {"epochs": 1, "batch_size": 256}, "baseline": False}
    source, status = run_here(store, build_config(mnist))
    assert status == "completed"
    at = new_experiment_with(**{
        **QUICK_FORM, "f.name": "mnist to fashion", "f.dataset.name": "fashion_mnist",
        "f.dataset.root": str(shared_data),
        "f.dataset.student_fraction": 0.05, "f.teacher.arch": "tiny_cnn", "f.teacher.options": "",
        "f.teacher.source": "run"})
    at.selectbox(key="f.teacher.run_id").set_value(source).run()
    at.toggle(key="ui.finetune").set_value(True).run()
    at.number_input(key="f.teacher.finetune_epochs").set_value(1).run()
    _launch(at)
    run = _wait_done(max(r.id for r in store.list_runs()))
    assert run.config["teacher"]["finetune_epochs"] == 1
    summary = run.summary
    assert "teacher_pretrained_test_acc" in summary
    assert summary["teacher_test_acc"] > summary["teacher_pretrained_test_acc"]  # fine-tuning taught it Fashion

    live = open_page("pages/live.py")
    live.selectbox(key="live_pick").set_value(run.id).run()
    assert "before fine-tuning →" in " ".join(c.value for c in live.caption)


# ---- the summary card and Distributions with several teachers (stored results, no training) ----------------
def _stored_two_teacher_run(store: Store) -> int:
    config = build_config({**TINY, "teachers": [{"arch": "tiny_cnn", "epochs": 1},
                                                {"arch": "small_cnn", "source": "checkpoint", "checkpoint": "t.pt",
                                                 "finetune_epochs": 2}],
                           "distill": {"teacher_weights": [1.0, 3.0]}})
    run_id = store.create_run(config)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 10
    logits = {"labels": labels, **{phase: torch.randn(40, 10, generator=g)
                                   for phase in ("teacher", "teacher2", "student", "baseline")}}
    store.run_dir(run_id).mkdir(parents=True, exist_ok=True)
    torch.save(logits, store.run_dir(run_id) / "test_logits.pt")
    store.finish_run(run_id, "completed", {
        "teacher_test_acc": 0.91, "teacher2_test_acc": 0.87, "teacher2_pretrained_test_acc": 0.12,
        "ensemble_test_acc": 0.93, "student_test_acc": 0.8, "baseline_test_acc": 0.7, "kd_gain": 0.1,
        "teacher_params": 1000, "teacher2_params": 3000, "student_params": 100, "teacher_flops": 10,
        "teacher2_flops": 30, "student_flops": 2, "teacher_weights": [0.25, 0.75],
        "teachers": [{"phase": "teacher", "arch": "tiny_cnn", "source": "train", "test_acc": 0.91, "params": 1000,
                      "pretrained_test_acc": None, "finetune_epochs": 0},
                     {"phase": "teacher2", "arch": "small_cnn", "source": "t.pt", "test_acc": 0.87, "params": 3000,
                      "pretrained_test_acc": 0.12, "finetune_epochs": 2}]})
    return run_id


def test_the_summary_card_shows_each_teacher_the_ensemble_and_before_after_fine_tuning(empty_db):
    run_id = _stored_two_teacher_run(Store())
    at = open_page("pages/live.py")
    at.selectbox(key="live_pick").set_value(run_id).run()
    no_exceptions(at)
    metrics = {m.label: m for m in at.metric}
    assert metrics["Ensemble test accuracy"].value == "93.0%"
    assert metrics["Teacher · tiny_cnn"].value == "91.0%" and metrics["Teacher 2 · small_cnn"].value == "87.0%"
    assert metrics["Student is smaller"].value == "40.0×"  # both teachers' parameters against the student's
    assert "Teacher 2 · small_cnn: 12.0% before fine-tuning → 87.0% after 2 epochs" in \
        " ".join(c.value for c in at.caption)


def test_distributions_offer_each_teacher_and_their_ensemble_at_the_sliders_t(empty_db):
    store = Store()
    run_id = _stored_two_teacher_run(store)
    logits = torch.load(store.run_dir(run_id) / "test_logits.pt", weights_only=True)
    at = open_page("pages/distributions.py")
    picker = at.radio(key=f"dist_teacher_{run_id}")
    assert picker.options == ["teacher · tiny_cnn", "teacher 2 · small_cnn", "ensemble"]
    picker.set_value("ensemble").run()
    at.slider(key=f"dist_T_{run_id}").set_value(6.0).run()
    no_exceptions(at)
    idx = at.session_state[f"dist_image_{run_id}"]
    expected = ensemble_softened([logits["teacher"][idx], logits["teacher2"][idx]], [0.25, 0.75], 6.0)
    drawn = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
    assert drawn["name"] == "ensemble"
    y = drawn["y"]
    if isinstance(y, dict):  # plotly's typed-array form of a numpy array
        y = np.frombuffer(base64.b64decode(y["bdata"]), dtype=y["dtype"]).tolist()
    assert y == pytest.approx(expected.tolist(), abs=1e-6)
    assert y != pytest.approx(softened(logits["teacher"][idx], 6.0).tolist(), abs=1e-3)


def test_a_stored_two_teacher_run_with_method_options_fills_the_form_and_launches_the_same(empty_db, monkeypatch):
    monkeypatch.setenv("KDCORE_LOCAL_WORKERS", "0")
    method = next((describe(METHODS.get(m)) for m in METHODS.names()
                   if any(changed_option(o) is not None for o in describe(METHODS.get(m))["options"])), None)
    if method is None:
        pytest.skip("no registered method has options")
    option = next(o for o in method["options"] if changed_option(o) is not None)
    store = Store()
    stored = build_config({**TINY, "teachers": [{"arch": "tiny_cnn", "epochs": 1}, {"arch": "small_cnn", "epochs": 2}],
                           "distill": {"method": method["name"], "options": {option["name"]: changed_option(option)},
                                       "teacher_weights": [2.0, 1.0]}})
    store.finish_run(store.create_run(stored), "completed", {})
    at = open_page("pages/new_experiment.py")
    at.button(key="ui.fill").click().run()
    no_exceptions(at)
    assert at.selectbox(key="f.teachers.1.arch").value == "small_cnn"
    assert _option_widget(at, option).value == pytest.approx(changed_option(option))
    _launch(at)
    launched = max(Store().list_runs(), key=lambda r: r.id).config
    assert [t["arch"] for t in launched["teachers"]] == ["tiny_cnn", "small_cnn"]
    assert launched["distill"]["teacher_weights"] == [2.0, 1.0]
    assert launched["distill"]["options"] == stored.distill.options


def test_two_teachers_that_would_train_alike_are_pointed_out(empty_db):
    at = new_experiment_with(**{**QUICK_FORM, "f.teacher.options": ""})
    at.button(key="ui.add_teacher").click().run()
    assert any("would train to the same weights" in w.value for w in at.warning)
    at.selectbox(key="f.teachers.1.arch").set_value("tiny_cnn").run()
    assert not any("would train to the same weights" in w.value for w in at.warning)


# ---- Runs: calibration, per class and the frontier ---------------------------------------------------------
def test_runs_calibration_view_shows_three_eces_the_charts_and_what_distillation_fixed(seeded_db):
    at = open_page("pages/runs.py")
    at.text_input(key="runs_search").set_value("real tiny").run()
    _select_rows(at, [0])
    at.radio(key="runs_detail_view").set_value("Calibration and per class").run()
    no_exceptions(at)
    eces = {m.label: m.value for m in at.metric if m.label.endswith(" ECE")}
    assert set(eces) == {"Teacher ECE", "Student ECE", "Baseline ECE"} and all(v.endswith("%") for v in eces.values())
    specs = [c.proto.spec for c in at.get("plotly_chart")]
    assert any("perfectly calibrated" in s for s in specs)
    assert any("Test accuracy per class" in s for s in specs) and any("KD gain per class" in s for s in specs)
    logits = torch.load(Store(seeded_db["url"]).run_dir(seeded_db["real"]) / "test_logits.pt", weights_only=True)
    right = logits["labels"]
    fixed = int(((logits["student"].argmax(1) == right) & (logits["baseline"].argmax(1) != right)).sum())
    assert any(f"Distillation fixed {fixed} test images" in m.value for m in at.markdown)
    broken = int(((logits["student"].argmax(1) != right) & (logits["baseline"].argmax(1) == right)).sum())
    assert fixed + broken > 0, "a one-epoch student and baseline disagree on some digits"
    assert len(at.get("image")) == min(fixed, 24) + min(broken, 24)  # a gallery page each


def test_runs_frontier_tab_draws_the_pareto_front_of_the_latest_runs_dataset(seeded_db):
    at = open_page("pages/runs.py")
    at.session_state["runs_tab"] = "Frontier"  # only the open tab is built
    at.run()
    assert at.selectbox(key="runs_pareto_dataset").value == "digits"  # the real run, the newest, is on digits
    chart = at.get("plotly_chart")
    pareto = [c for c in chart if "Pareto front" in c.proto.spec]
    assert len(pareto) == 1 and "distilled student" in pareto[0].proto.spec and "real tiny run" in pareto[0].proto.spec
    for x_axis in ("flops", "macs"):
        at.selectbox(key="runs_pareto_x").set_value(x_axis).run()
        no_exceptions(at)
    assert "2 × MACs" in " ".join(at.selectbox(key="runs_pareto_x").options)
    at.selectbox(key="runs_pareto_dataset").set_value("mnist").run()
    no_exceptions(at)
    assert any("Pareto front" in c.proto.spec and "mnist" in c.proto.spec for c in at.get("plotly_chart"))


def test_the_summary_card_says_flops_are_twice_macs_and_shows_batch_one_latency_when_measured(empty_db):
    store = Store()
    run_id = store.create_run(build_config({**TINY, "name": "measured"}))
    store.finish_run(run_id, "completed", {
        "teacher_test_acc": 0.95, "student_test_acc": 0.9, "baseline_test_acc": 0.85, "kd_gain": 0.05,
        "teacher_params": 1000, "student_params": 100, "teacher_flops": 4000, "student_flops": 400,
        "teacher_macs": 2000, "student_latency_ms_b1": 0.25, "teacher_latency_ms_b1": 1.5, "latency_threads": 1})
    at = _select_rows(open_page("pages/runs.py"), [0])
    no_exceptions(at)
    metrics = {m.label: m for m in at.metric}
    assert metrics["Student latency (batch 1)"].value == "0.25 ms"
    assert metrics["Teacher latency (batch 1)"].value == "1.5 ms"
    assert "1 thread" in metrics["Student latency (batch 1)"].help
    assert "2 × MACs" in metrics["Student is cheaper"].help
    captions = " ".join(c.value for c in at.caption)
    assert "student 400 FLOPs = 200 MACs" in captions and "teacher 4 k FLOPs = 2 k MACs" in captions
