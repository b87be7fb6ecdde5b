"""Every chart builder drawn in a real Chromium, in the dashboard (Streamlit's plotly.js and theme, in a third of
the page and across it) and in the offline report (the plotly.js written into the HTML): no tick label, title or
legend is cut off at the figure's edge, the legend covers no data, ticks or titles, no axis title or tick label sits
on the data (of its own panel or the next), and the plot keeps room for the data (the report's "100%" read "%", legends sat on the x ticks, the
live loss chart with two teachers had a plot 50 px high)."""
from __future__ import annotations

import pytest

from tests.chart_samples import figures
from tests.layout_check import chart_problems, draw, plotly_page, serve_script

pytestmark = pytest.mark.browser

FIGURES = figures()
MIN_PLOT_PX = 120
# a panel per phase: drawn across the page, in Live and in the report, never in a third of it
ACROSS_ONLY = {"loss_parts", "accuracy"}
SCRIPT = """
import streamlit as st
from tests.chart_samples import figures

st.set_page_config(layout="wide")
for name, fig in figures().items():
    st.plotly_chart(fig, key=f"wide-{name}")
    left, _, _ = st.columns(3)
    left.plotly_chart(fig, key=f"narrow-{name}")
"""


def _verdict(name: str, where: str, geometry: dict) -> list[str]:
    found = [f"{name} {where}: {p}" for p in sorted(set(geometry["problems"]))]
    height = geometry["plot_height"]
    if height is not None and name != "empty" and height < MIN_PLOT_PX:
        found.append(f"{name} {where}: the plot area is {height:.0f} px high")
    return found


@pytest.fixture(scope="module")
def dashboard_charts(browser, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chart_page")
    (tmp / "charts.py").write_text(SCRIPT)
    with serve_script(tmp / "charts.py", tmp / "streamlit.log") as url:
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=120_000)
        yield page
        context.close()


@pytest.fixture(scope="module")
def report_page(browser, tmp_path_factory):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.goto(plotly_page(tmp_path_factory.mktemp("figures")).as_uri())
    yield page
    context.close()


def test_dashboard_charts_show_every_label_whole_with_legends_outside_the_plot(dashboard_charts):
    found = []
    for name in FIGURES:
        for where in ("wide",) if name in ACROSS_ONLY else ("wide", "narrow"):
            drawn = chart_problems(dashboard_charts, f".st-key-{where}-{name}")
            found += _verdict(name, f"in the dashboard, {where}", drawn)
    assert not found, "\n".join(found)


def _built_under(template: str) -> dict:
    """The figures as built in a process whose default plotly template is `template`: "plotly" in the CLI,
    Streamlit's own in the dashboard, where the Report page builds the offline HTML."""
    import plotly.io as pio

    if template == "streamlit":
        import streamlit.elements.plotly_chart  # noqa: F401 (registers Streamlit's template)
    before = pio.templates.default
    pio.templates.default = template
    try:
        return figures()
    finally:
        pio.templates.default = before


# 460 px: a chart in the report's two-column rows; 1040 px: one across the report
@pytest.mark.parametrize("width", [460, 1040])
@pytest.mark.parametrize("template", ["plotly", "streamlit"])
def test_report_charts_show_every_label_whole_with_legends_outside_the_plot(report_page, template, width):
    found = []
    for name, fig in _built_under(template).items():
        if width < 1000 and name in ACROSS_ONLY:
            continue
        found += _verdict(name, f"in the report ({template} template) at {width} px", draw(report_page, fig, width))
    assert not found, "\n".join(found)


def test_run_names_with_markup_show_as_typed_in_legends_ticks_and_hovers(report_page):
    from kdcore import charts
    from tests.chart_samples import history, runs_frame

    name = "<b>bold</b> & <i>run</i>"
    runs = runs_frame().assign(name=name)
    labels = {int(i): name for i in runs["id"]}
    curves = history(phases=("student", "baseline")).assign(run_id=1)
    for fig in (charts.overlay(curves, "val_acc", labels, phases=("student", "baseline")),
                charts.accuracy_bars(runs.head(2), labels)):
        draw(report_page, fig, 1040)
        shown = report_page.evaluate("() => Array.from(document.querySelectorAll("
                                     "'#fig .legendtext, #fig .xtick text')).map((n) => n.textContent)")
        assert any(name in s for s in shown), shown
        assert not report_page.query_selector("#fig .legendtext [style*='bold'], #fig .xtick [style*='bold']")
    # hovers are drawn from the same markup: the name's tags must not reach plotly as tags
    hovers = [str(t) for trace in charts.frontier(runs, "temperature", "kd_gain").data for t in trace.text]
    assert hovers and not any("<b>" in h for h in hovers), hovers
