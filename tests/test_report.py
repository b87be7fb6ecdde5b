"""The shareable report: `kdcore report` writes one HTML file that opens offline, and the Report page shows it.

A real tiny digits run and a real two-seed group are trained once through the CLI on a
temporary SQLite store; Chromium opens the written files with every non-file request aborted.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from kdcore.store import Store
from tests.helpers import STALL_S, no_exceptions

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "teacher.epochs=2", "--set", "train.epochs=2"]


def _kdcore(db: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdcore", "--db", db, *args], cwd=cwd, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A store holding one real tiny digits run and a real two-seed group."""
    tmp = tmp_path_factory.mktemp("report")
    db = f"sqlite:///{tmp}/runs/kdcore.db"
    one = _kdcore(db, "train", "examples/digits.yaml", *TINY, "--json")
    assert one.returncode == 0, one.stderr[-2000:]
    group = _kdcore(db, "train", "examples/digits.yaml", "--seeds", "0,1", *TINY, "--json")
    assert group.returncode == 0, group.stderr[-2000:]
    return {"db": db, "tmp": tmp, "run": json.loads(one.stdout)["id"], "group": json.loads(group.stdout)["group"]}


@pytest.fixture(scope="module")
def written(stored):
    """{"run": path, "group": path} of the reports `kdcore report` wrote, each into a folder of its own."""
    out = {}
    for kind, target in (("run", str(stored["run"])), ("group", stored["group"])):
        folder = stored["tmp"] / f"out-{kind}"
        folder.mkdir()
        made = _kdcore(stored["db"], "report", target, "-o", "r.html", cwd=folder)
        assert made.returncode == 0, made.stderr[-2000:]
        assert [p.name for p in folder.iterdir()] == ["r.html"]  # one file, nothing beside it
        out[kind] = folder / "r.html"
    return out


class _Links(HTMLParser):
    """Every URL the document would fetch: src of any tag, href of <link>, and the figures it draws."""

    def __init__(self):
        super().__init__()
        self.fetched: list[tuple[str, str]] = []
        self.images: list[str] = []
        self.figures = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("src", "srcset", "data", "poster"):
            if attrs.get(name):
                self.fetched.append((tag, attrs[name]))
        if tag == "link" and attrs.get("href"):
            self.fetched.append((tag, attrs["href"]))
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if "plotly-graph-div" in (attrs.get("class") or ""):
            self.figures += 1


def _links(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


# ---- the file -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["run", "group"])
def test_report_file_fetches_nothing_from_a_network(written, kind):
    links = _links(written[kind])
    assert links.figures >= 3
    network = [(tag, url) for tag, url in links.fetched if re.match(r"(?i)\s*(https?:)?//", url)]
    assert not network, network
    # the only things it loads are its own images, as data: URIs
    assert all(url.startswith("data:") for _, url in links.fetched), links.fetched
    html = written[kind].read_text(encoding="utf-8")
    assert html.count("<script") - html.count("<script>window.add") >= 1
    assert len(re.findall(r"<script[^>]*>\s*/\*\*\s*\n?\s*\* plotly\.js", html)) <= 1  # plotly.js inlined once


def test_run_report_says_the_setup_gain_sizes_and_config_in_words(stored, written):
    html = written["run"].read_text(encoding="utf-8")
    run = Store(stored["db"]).get_run(stored["run"])
    s = run.summary
    from kdcore import text

    for words in ("small_cnn", "mlp", "digits", "soft", "T = 4", "α = 0.9", "2 epochs",
                  text.points(s["kd_gain"]), "95% interval", "parameters", "MACs / image", "FLOPs / image",
                  "Training curves", "softmax(z / T)", "Per class", "Expected calibration error", "The run&#x27;s config",
                  "temperature: 4.0"):
        assert words in html, words
    images = _links(written["run"]).images
    assert len(images) == 4 and all(i.startswith("data:image/png;base64,") for i in images)  # 4 test images


def test_group_report_shows_the_interval_across_seeds(stored, written):
    from kdcore.experiments import group_report
    from kdcore.stats import describe_spread

    html = written["group"].read_text(encoding="utf-8")
    report = group_report(Store(stored["db"]).list_runs(group=stored["group"]))
    assert "over 2 seeds (95% interval" in describe_spread(report["aggregate"]["kd_gain"])
    assert describe_spread(report["aggregate"]["kd_gain"]) in html.replace("&#x27;", "'")
    assert "The seeds" in html and html.count("<tr>") >= 2 + 2  # a row per seed, and the size table


# ---- the CLI's refusals ------------------------------------------------------------------------------
def test_unknown_run_or_group_is_a_clear_error(stored, tmp_path):
    run = _kdcore(stored["db"], "report", "9999", "-o", str(tmp_path / "x.html"))
    assert run.returncode == 1 and "no run #9999" in run.stderr, run.stderr
    group = _kdcore(stored["db"], "report", "no such group", "-o", str(tmp_path / "x.html"))
    assert group.returncode == 1 and "no study or group named 'no such group'" in group.stderr, group.stderr
    assert "Traceback" not in run.stderr + group.stderr
    assert not (tmp_path / "x.html").exists()


def test_a_run_that_did_not_complete_is_refused(stored, tmp_path):
    from kdcore.configure import load_config

    store = Store(stored["db"])
    queued = store.create_run(load_config(ROOT / "examples" / "digits.yaml"))
    store.request_cancel(queued)  # never started: no worker may take it while the other tests run
    made = _kdcore(stored["db"], "report", str(queued), "-o", str(tmp_path / "x.html"))
    assert made.returncode == 1 and f"run #{queued} is cancelled, not completed" in made.stderr, made.stderr
    assert not (tmp_path / "x.html").exists()


def test_report_module_runs_without_streamlit():
    code = "import sys, kdcore.report, kdcore.cli; assert 'streamlit' not in sys.modules, 'streamlit imported'"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


# ---- in a browser, offline ---------------------------------------------------------------------------
def _offline(page) -> tuple[list[str], list[str]]:
    """Aborts every request that is not for a local file; returns (the aborted URLs, console errors) as they come."""
    aborted, errors = [], []

    def route(r):
        if r.request.url.startswith("file:"):
            r.continue_()
        else:
            aborted.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return aborted, errors


@pytest.mark.browser
@pytest.mark.parametrize("kind", ["run", "group"])
def test_report_opens_offline_and_draws_every_chart(stored, written, page, kind):
    from kdcore import text

    aborted, errors = _offline(page)
    figures = _links(written[kind]).figures
    page.goto(written[kind].as_uri())
    # plotly draws each figure into .main-svg elements once its script has run
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {figures}")
    assert page.locator(".js-plotly-plot").count() == figures
    gain = page.locator("#gain").inner_text()
    store = Store(stored["db"])
    if kind == "run":
        s = store.get_run(stored["run"]).summary
        low, high = s["kd_gain_ci95"]
        assert text.points(s["kd_gain"]).removesuffix(" pts").replace("-", "−") in gain
        assert f"95% interval {text.points_range(low, high)}" in gain
    else:
        assert "over 2 seeds (95% interval" in gain
    body = page.locator("body").inner_text()
    assert "latency, batch 1" in body and "Latency is the median time of one forward pass" in body
    assert re.search(r"\d ms", body), "no latency in ms"
    assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    assert not aborted, aborted
    assert not errors, errors


# ---- the dashboard's Report page ---------------------------------------------------------------------
def _report_page(db: str, monkeypatch, present_param: bool = False):
    sys.path.insert(0, str(ROOT))  # the app's own packages (ui), as `streamlit run` sees them
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("KDCORE_DB_URL", db)
    monkeypatch.setenv("KDCORE_LOCAL_WORKERS", "thread")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=STALL_S)
    if present_param:
        at.query_params["present"] = "1"
    at.run()
    at.switch_page("pages/report.py").run()
    no_exceptions(at)
    return at


def _controls(at) -> int:
    return len(at.selectbox) + len(at.radio) + len(at.toggle) + len(at.get("download_button")) + len(at.text_input)


def test_report_page_shows_a_run_and_offers_the_download(stored, monkeypatch):
    at = _report_page(stored["db"], monkeypatch)
    assert len(at.get("iframe")) == 1
    downloads = at.get("download_button")
    assert [d.proto.label for d in downloads] == ["Download report (HTML)"]
    at.selectbox(key="report_run").set_value(stored["run"]).run()
    no_exceptions(at)
    assert [d.proto.label for d in at.get("download_button")] == ["Download report (HTML)"]
    at.radio(key="report_kind").set_value("A group").run()
    no_exceptions(at)
    assert at.selectbox(key="report_group").value == stored["group"]
    assert len(at.get("iframe")) == 1 and len(at.get("download_button")) == 1


@pytest.mark.parametrize("how", ["toggle", "query"])
def test_presentation_mode_shows_only_the_report(stored, monkeypatch, how):
    at = _report_page(stored["db"], monkeypatch, present_param=how == "query")
    if how == "toggle":
        assert _controls(at) > 0
        at.toggle(key="report_present_toggle").set_value(True).run()
        no_exceptions(at)
        assert at.query_params["present"] == ["1"] or at.query_params["present"] == "1"
    assert _controls(at) == 0  # no pickers, no toggle, no download: the report alone
    assert len(at.get("iframe")) == 1
    assert [b.label for b in at.button] == ["Leave presentation mode"]
    at.run()  # stays a presentation on the next rerun
    assert _controls(at) == 0 and len(at.get("iframe")) == 1
    at.button[0].click().run()
    no_exceptions(at)
    assert len(at.get("download_button")) == 1 and len(at.selectbox) == 1


@pytest.mark.browser
def test_presentation_mode_hides_the_sidebar_in_a_browser(stored, page):
    from ui.serve import serve_dashboard

    with serve_dashboard(stored["db"], log_path=stored["tmp"] / "streamlit.log", start_timeout=STALL_S) as url:
        page.goto(f"{url}/report?present=1")
        frame = page.frame_locator("iframe").first
        frame.locator("#gain").wait_for(timeout=STALL_S * 1000)
        assert page.locator('[data-testid="stSidebar"]').is_hidden()
        assert page.get_by_role("combobox").count() == 0
        assert page.get_by_text("Download report (HTML)").count() == 0
        assert "KD gain" in frame.locator("#gain").inner_text()
        page.get_by_role("button", name="Leave presentation mode").click()
        page.get_by_role("button", name="Download report (HTML)").wait_for(timeout=STALL_S * 1000)
        page.locator('[data-testid="stSidebar"]').wait_for(state="visible")  # the hiding style is gone


def test_a_group_named_with_digits_is_read_as_that_group(tmp_path):
    from kdcore.configure import build_config
    from kdcore.report import ReportError, resolve

    store = Store(f"sqlite:///{tmp_path}/runs.db", artefact_root=tmp_path)
    store.create_run(build_config({"group": "2026"}))
    with pytest.raises(ReportError, match="group '2026' has no completed run yet"):
        resolve(store, "2026")
    with pytest.raises(ReportError, match="no run #7 in this store"):
        resolve(store, "7")
