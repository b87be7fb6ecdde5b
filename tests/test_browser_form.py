"""The New experiment form in a real Chromium, where the browser itself decides what reaches the server: a number
outside a widget's bounds is never sent, and a page visit drops the state of widgets it does not draw."""
from __future__ import annotations

import pytest

from kdcore.store import Store
from tests.helpers import STALL_S

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def dashboard(dashboard_without_worker):
    """The form's browser tests queue runs and check them in the store: no worker may take them (conftest.py)."""
    return dashboard_without_worker


def _idle(page, timeout=60_000):
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=timeout)


def _new_experiment(page, url):
    page.goto(f"{url}/new_experiment")
    page.get_by_role("heading", name="New experiment").first.wait_for(timeout=STALL_S * 1000)
    page.get_by_role("button", name="Launch").wait_for(timeout=STALL_S * 1000)
    _idle(page)


def _type(page, label: str, value: str):
    field = page.get_by_label(label, exact=True)
    field.fill(value)
    field.press("Tab")  # commits the value, as a person leaving the field does
    _idle(page)


def test_zero_epochs_typed_in_the_browser_blocks_launch_instead_of_queuing_the_old_value(dashboard, page):
    url, db = dashboard
    _new_experiment(page, url)
    _type(page, "Student epochs", "0")
    page.get_by_text("train.epochs").first.wait_for()  # marked beside the field, by the config's own check
    launch = page.get_by_role("button", name="Launch")
    assert launch.is_disabled()
    launch.click(force=True)  # a click on the disabled button queues nothing
    _idle(page)
    assert Store(db).count_runs() == 0


def test_what_was_typed_is_still_there_after_a_visit_to_another_page(dashboard, page):
    url, _ = dashboard
    _new_experiment(page, url)
    _type(page, "Run name", "kept in the browser")
    _type(page, "Student epochs", "7")
    page.get_by_role("link", name="Runs").first.click()
    page.get_by_role("heading", name="Runs").first.wait_for()
    _idle(page)
    page.get_by_role("link", name="New experiment").first.click()
    page.get_by_role("heading", name="New experiment").first.wait_for()
    _idle(page)
    assert page.get_by_label("Run name", exact=True).input_value() == "kept in the browser"
    assert page.get_by_label("Student epochs", exact=True).input_value() == "7"


def test_an_uploaded_teacher_checkpoint_survives_a_page_visit_and_goes_when_removed(dashboard, page, tmp_path):
    from kdcore.engine.checkpoint import save_checkpoint
    from kdcore.models import create_model

    url, _ = dashboard
    path = tmp_path / "teacher.pt"
    save_checkpoint(path, create_model("small_cnn", 10, 1, 8, width=96), arch="small_cnn", num_classes=10,
                    in_channels=1, image_size=8, options={"width": 96})
    _new_experiment(page, url)
    page.get_by_text("An uploaded checkpoint").first.click()
    _idle(page)
    required = page.get_by_text("teacher.checkpoint is required")
    required.first.wait_for()
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(str(path))
    required.first.wait_for(state="detached")
    _idle(page)

    page.get_by_role("link", name="Runs").first.click()
    page.get_by_role("heading", name="Runs").first.wait_for()
    _idle(page)
    page.get_by_role("link", name="New experiment").first.click()
    page.get_by_text("Using teacher.pt, uploaded before").wait_for()
    _idle(page)
    assert required.count() == 0

    page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(str(path))
    page.get_by_text("teacher.pt", exact=True).first.wait_for()
    _idle(page)
    page.get_by_role("button", name="Remove teacher.pt").click()
    required.first.wait_for()  # removed in the uploader: no longer used


def test_a_method_options_value_shows_rounded_in_the_browser(dashboard, page):
    url, _ = dashboard
    _new_experiment(page, url)
    page.get_by_label("Method").first.click()
    page.keyboard.type("Decoupled KD")
    page.keyboard.press("Enter")
    _idle(page)
    warmup = page.get_by_label("warmup", exact=True)
    warmup.wait_for()
    assert warmup.input_value() == "0.08333"  # 20/240 to 4 significant digits, not 0.08333333333333333
