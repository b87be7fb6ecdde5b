"""The Report page's address in presentation mode names the run or the group, so a reload shows the same report."""
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the app's own packages (ui), as `streamlit run` would see them

from kdcore.configure import build_config  # noqa: E402
from kdcore.experiments import expand  # noqa: E402
from kdcore.jobs import run_here  # noqa: E402
from kdcore.store import Store  # noqa: E402
from tests.helpers import no_exceptions  # noqa: E402

TINY = {"dataset": {"name": "digits"}, "teacher": {"arch": "tiny_cnn", "epochs": 1}, "student": {"arch": "mlp_tiny"},
        "train": {"epochs": 1, "batch_size": 256}}


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A store with two real tiny runs (the older one is not what the page shows first) and a two-seed group."""
    url = f"sqlite:///{tmp_path_factory.mktemp('report_url')}/kdcore.db"
    store = Store(url)
    ids = [run_here(store, build_config({**TINY, "name": name}))[0] for name in ("older", "newer")]
    for config in expand(build_config({**TINY, "name": "pair"}), seeds=[0, 1], group="pair"):
        run_here(store, config)
    return {"url": url, "older": ids[0], "group": "pair"}


def _report_page(url: str, monkeypatch, params: dict | None = None):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("KDCORE_DB_URL", url)
    monkeypatch.setenv("KDCORE_LOCAL_WORKERS", "0")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.query_params.update(params or {})
    at.run()
    at.switch_page("pages/report.py").run()
    no_exceptions(at)
    return at


def _heading(at) -> str:
    """The shown report's title, e.g. 'Run #1: older'."""
    return re.search(r"<h1>(.*?)</h1>", at.get("iframe")[0].proto.srcdoc)[1]


def _param(at, name):
    value = at.query_params.get(name)
    return value[0] if isinstance(value, list) else value


@pytest.mark.parametrize("kind", ["run", "group"])
def test_presentation_mode_address_names_the_run_or_group_and_a_reload_shows_it(stored, monkeypatch, kind):
    at = _report_page(stored["url"], monkeypatch)
    if kind == "run":
        at.selectbox(key="report_run").set_value(stored["older"]).run()
        want = str(stored["older"])
    else:
        at.radio(key="report_kind").set_value("A group").run()
        at.selectbox(key="report_group").set_value(stored["group"]).run()
        want = stored["group"]
    at.toggle(key="report_present_toggle").set_value(True).run()
    no_exceptions(at)
    assert _param(at, "present") == "1" and _param(at, kind) == want
    shown = _heading(at)

    reloaded = _report_page(stored["url"], monkeypatch, {name: _param(at, name) for name in at.query_params})
    assert _heading(reloaded) == shown  # a new session on that address: the same report
