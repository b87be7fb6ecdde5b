"""The New experiment form as a person uses it: nothing typed is lost, nothing stale is queued, every refusal
is one plain message. Driven headless with streamlit.testing, as tests/test_pages.py does."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the app's own packages (ui), as `streamlit run` would see them

from kdcore.store import Store  # noqa: E402
from tests.helpers import errors, new_experiment_with, no_exceptions, open_page  # noqa: E402


@pytest.fixture(autouse=True)
def empty_db(tmp_path, monkeypatch):
    monkeypatch.setenv("KDCORE_LOCAL_WORKERS", "0")  # nothing here trains: queued runs stay queued
    url = f"sqlite:///{tmp_path}/kdcore.db"
    monkeypatch.setenv("KDCORE_DB_URL", url)
    return url


def _away_and_back(at, page: str = "pages/runs.py"):
    at.switch_page(page).run()
    no_exceptions(at)
    at.switch_page("pages/new_experiment.py").run()
    no_exceptions(at)
    return at


def test_every_field_survives_a_visit_to_another_page():
    at = open_page("pages/new_experiment.py")
    at.selectbox(key="f.distill.method").set_value("dkd").run()
    at.number_input(key="f.distill.options.nckd_weight").set_value(2.0)
    at.slider(key="f.distill.temperature").set_value(6.0)
    at.slider(key="f.distill.alpha").set_value(0.4)
    at.number_input(key="f.train.epochs").set_value(7)
    at.text_input(key="f.name").set_value("kept run")
    at.text_input(key="f.tags").set_value("a, b")
    at.text_input(key="f.teacher.options").set_value("width: 48")
    at.text_input(key="ui.seeds").set_value("0-2")
    at.toggle(key="ui.sweep").set_value(True).run()
    at.text_input(key="ui.sweep_alpha").set_value("0.3, 0.6").run()
    no_exceptions(at)

    _away_and_back(at)
    kept = {name: at.session_state[name] for name in
            ("f.distill.method", "f.distill.options.nckd_weight", "f.distill.temperature", "f.distill.alpha",
             "f.train.epochs", "f.name", "f.tags", "f.teacher.options", "ui.seeds", "ui.sweep", "ui.sweep_alpha")}
    assert kept == {"f.distill.method": "dkd", "f.distill.options.nckd_weight": 2.0, "f.distill.temperature": 6.0,
                    "f.distill.alpha": 0.4, "f.train.epochs": 7, "f.name": "kept run", "f.tags": "a, b",
                    "f.teacher.options": "width: 48", "ui.seeds": "0-2", "ui.sweep": True,
                    "ui.sweep_alpha": "0.3, 0.6"}
    assert at.number_input(key="f.train.epochs").value == 7  # the widget shows it, not only the state


def test_a_sweep_field_hidden_and_shown_again_keeps_what_was_typed():
    at = new_experiment_with(**{"ui.sweep": True})
    at.text_input(key="ui.sweep_t").set_value("1, 3").run()
    at.toggle(key="ui.sweep").set_value(False).run()
    at.toggle(key="ui.sweep").set_value(True).run()
    no_exceptions(at)
    assert at.text_input(key="ui.sweep_t").value == "1, 3"


@pytest.mark.parametrize("arch", ["resnet8", "resnet18", "mlp"])
def test_changing_the_teacher_architecture_starts_from_its_own_default_options(arch):
    at = open_page("pages/new_experiment.py")
    assert at.text_input(key="f.teacher.options").value == "{width: 96}"  # the demo's teacher
    at.selectbox(key="f.teacher.arch").set_value(arch).run()
    no_exceptions(at)
    assert at.text_input(key="f.teacher.options").value == ""
    assert "teacher.options" not in errors(at)
    at.selectbox(key="f.teacher.arch").set_value("small_cnn").run()  # back to the demo's: its options again
    assert at.text_input(key="f.teacher.options").value == "{width: 96}"


def test_changing_the_student_architecture_starts_from_its_own_default_options():
    at = open_page("pages/new_experiment.py")
    at.selectbox(key="f.student.arch").set_value("small_cnn").run()
    assert at.text_input(key="f.student.options").value == ""
    assert "student.options" not in errors(at)


def test_an_option_a_torchvision_model_does_not_take_is_named_in_plain_words():
    at = new_experiment_with(**{"f.teacher.arch": "resnet18", "f.teacher.options": "width: 96"})
    shown = errors(at)
    assert "resnet18 takes no option 'width'" in shown
    assert "__init__" not in shown and "unexpected keyword" not in shown


def test_errors_beside_fields_show_underscores_and_stars_as_typed():
    at = new_experiment_with(**{"f.teacher.arch": "mobilenet_v2", "f.teacher.options": "__width__: 2"})
    source = "\n".join(e.value for e in at.error)  # the Markdown the page sends
    assert "mobilenet\\_v2" in source and "\\_\\_width\\_\\_" in source  # escaped: Markdown draws them as typed
    assert "mobilenet_v2 takes no option '__width__'" in errors(at)


@pytest.mark.parametrize("field, path", [("f.train.epochs", "train.epochs"), ("f.train.batch_size", "train.batch_size"),
                                         ("f.teacher.epochs", "teacher.epochs")])
def test_a_zero_typed_in_a_number_field_is_marked_and_blocks_launch(field, path):
    at = open_page("pages/new_experiment.py")
    at.number_input(key=field).set_value(0).run()
    no_exceptions(at)
    assert path in errors(at)
    assert at.button(key="ui.launch").disabled
    assert Store().count_runs() == 0


def test_number_fields_carry_no_bounds_the_browser_would_enforce_by_keeping_the_old_value():
    # Chromium does not send a number outside a widget's min/max: the field turns red and the previous value
    # stays in the session, so Launch would queue what is no longer on screen. The config's checks bound them.
    at = new_experiment_with(**{"f.distill.method": "dkd", "f.teacher.source": "train", "ui.own_training": True})
    bounded = [n.key for n in at.number_input if n.key.startswith("f.") and (n.proto.has_min or n.proto.has_max)]
    assert bounded == []
    whole = {n.key for n in at.number_input if n.proto.data_type == n.proto.INT}  # shown as 7, not 7.00
    assert {"f.train.epochs", "f.train.batch_size", "f.teacher.epochs", "f.train.early_stopping_patience",
            "f.dataset.augment.crop_padding", "f.teacher.augment.crop_padding"} <= whole


def test_a_method_option_shows_a_rounded_value():
    at = new_experiment_with(**{"f.distill.method": "dkd"})
    warmup = at.number_input(key="f.distill.options.warmup")
    assert warmup.format == "%.4g"  # the browser shows a bare "%g" as 0.08333333333333333


def _captions(at) -> str:
    return "\n".join(c.value for c in at.caption)


def test_a_sweep_typo_shows_one_message_that_names_the_value():
    at = new_experiment_with(**{"ui.sweep": True})
    at.text_input(key="ui.sweep_t").set_value("2, hot").run()
    shown = errors(at)
    assert shown.count("`sweep") == 1 and "'hot' is not a number" in shown, shown
    assert "give at least one" not in shown
    assert at.button(key="ui.launch").disabled


@pytest.mark.parametrize("field, typed", [("ui.sweep_t", "4, 4"), ("ui.sweep_alpha", "0.5, 0.9, 0.5")])
def test_a_value_given_twice_in_a_sweep_is_refused_not_queued_as_identical_runs(field, typed):
    at = new_experiment_with(**{"ui.sweep": True})
    at.text_input(key=field).set_value(typed).run()
    assert "given more than once" in errors(at)
    assert at.button(key="ui.launch").disabled


def test_fix_the_fields_marked_in_red_names_them_and_goes_once_they_are_fixed():
    at = new_experiment_with(**{"ui.sweep": True})
    assert "Fix the fields" not in _captions(at)
    at.text_input(key="ui.sweep_t").set_value("2, hot")
    at.number_input(key="f.train.epochs").set_value(0).run()
    assert "Fix the fields marked in red to launch: `train.epochs`, `sweep.T`." in _captions(at)
    at.text_input(key="ui.sweep_t").set_value("2, 8").run()
    assert "`sweep.T`" not in _captions(at) and "`train.epochs`" in _captions(at)
    at.number_input(key="f.train.epochs").set_value(3).run()
    assert "Fix the" not in _captions(at) and not at.button(key="ui.launch").disabled


def test_an_image_folder_path_does_not_carry_over_into_another_datasets_root(tmp_path):
    at = open_page("pages/new_experiment.py")
    at.selectbox(key="f.dataset.name").set_value("imagefolder").run()
    at.text_input(key="f.dataset.root").set_value(str(tmp_path / "pets")).run()
    at.selectbox(key="f.dataset.name").set_value("mnist").run()
    no_exceptions(at)
    assert at.text_input(key="f.dataset.root").value == ""


def test_the_dkd_formula_shows_the_configured_weights_rounded_and_wrapped():
    at = new_experiment_with(**{"f.distill.method": "dkd"})
    at.number_input(key="f.distill.options.nckd_weight").set_value(2.0)
    at.number_input(key="f.distill.options.tckd_weight").set_value(0.5)
    at.slider(key="f.distill.temperature").set_value(4.0).run()
    formula = [line.value for line in at.latex]
    shown = " ".join(formula)
    assert r"2\cdot 16" in shown and r"0.5\cdot 16" in shown  # λ_nc and λ_tc with their values, times T² = 16
    assert r"\tfrac{e}{0.0833\cdot E}" in shown and "0.08333" not in shown  # warmup 20/240, rounded
    rows = [row for line in formula for row in line.split("\\\\")]
    assert max(len(row) for row in rows) < 200, max(rows, key=len)  # one term per row: nothing runs off the page
