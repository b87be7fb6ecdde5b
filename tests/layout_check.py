"""Draws plotly figures in a real Chromium and reports what a reader would find unreadable: text cut off at the
figure's edge, a legend over the plot, its ticks or a title, an axis title over the data or the ticks.

Used by tests/test_chart_layout.py (the builders of kdcore/charts.py and kdcore/studies/charts.py) and by the
dashboard walks.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ui.serve import serve_streamlit

ROOT = Path(__file__).resolve().parents[1]

# The geometry, read from the drawn SVG: boxes of the figure, of each plot area (its drag cover), of tick labels,
# axis and figure titles, and the legend; problems come back as sentences.
GEOMETRY_JS = r"""
(el) => {
  const box = (n) => { const r = n.getBoundingClientRect(); return {x0: r.left, y0: r.top, x1: r.right, y1: r.bottom}; };
  const named = (n, what) => Object.assign(box(n), {what: what + ' "' + (n.textContent || '').trim().slice(0, 40) + '"'});
  const visible = (n) => { const r = n.getBoundingClientRect(); return r.width > 0 && r.height > 0 &&
                           (n.textContent || '').trim() !== '' && getComputedStyle(n).opacity !== '0'; };
  const svg = box(el.querySelector('.main-svg'));
  const plots = Array.from(el.querySelectorAll('.draglayer .nsewdrag')).map((n) => Object.assign(box(n), {what: 'the plot area'}));
  const ticks = Array.from(el.querySelectorAll('.xaxislayer-above text, .yaxislayer-above text'))
                     .filter(visible).map((n) => named(n, 'tick label'));
  const titles = Array.from(el.querySelectorAll('.infolayer g[class^="g-"][class$="title"] text')).filter(visible)
                     .map((n) => named(n, n.closest('g').getAttribute('class').includes('gtitle') ? 'the title' : 'axis title'));
  const axisTitles = titles.filter((t) => t.what.startsWith('axis'));
  const legendNode = el.querySelector('.infolayer .legend');
  const legend = legendNode && legendNode.querySelector('.legendtext') ? [Object.assign(box(legendNode.querySelector('.bg') || legendNode), {what: 'the legend'})] : [];
  const overlap = (a, b) => Math.min(a.x1, b.x1) - Math.max(a.x0, b.x0) > 1 && Math.min(a.y1, b.y1) - Math.max(a.y0, b.y0) > 1;
  const problems = [];
  for (const t of ticks.concat(titles, legend)) {
    if (t.x0 < svg.x0 - 1 || t.x1 > svg.x1 + 1 || t.y0 < svg.y0 - 1 || t.y1 > svg.y1 + 1)
      problems.push(t.what + ' is cut off at the edge of the figure');
  }
  for (const l of legend)
    for (const o of plots.concat(ticks, titles)) if (overlap(l, o)) problems.push('the legend covers ' + o.what);
  for (const t of ticks)
    for (const o of plots) if (overlap(t, o)) problems.push(t.what + ' covers ' + o.what);
  for (const a of axisTitles)
    for (const o of plots.concat(ticks)) if (overlap(a, o)) problems.push(a.what + ' covers ' + o.what);
  const smallest = plots.length ? Math.min(...plots.map((p) => p.y1 - p.y0)) : null;
  return {problems: problems, plot_height: smallest, ticks: ticks.length};
}
"""


def plotly_page(tmp_path: Path) -> Path:
    """An empty page that loads plotly.js from a file beside it, to draw figures into."""
    from plotly.offline import get_plotlyjs

    (tmp_path / "plotly.min.js").write_text(get_plotlyjs())
    page = tmp_path / "figures.html"
    page.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><script src="plotly.min.js"></script></head>'
                    '<body style="margin:0;font-family:sans-serif"><div id="fig"></div></body></html>')
    return page


def draw(page, fig, width: int) -> dict:
    """Draws `fig` `width` px wide in the open plotly page; returns its geometry (problems, plot_height)."""
    spec = json.loads(fig.to_json())
    page.evaluate("([spec, width]) => { const el = document.getElementById('fig'); Plotly.purge(el);"
                  " el.style.width = width + 'px';"
                  " return Plotly.newPlot(el, spec.data, spec.layout, {responsive: false}); }", [spec, width])
    return page.evaluate(GEOMETRY_JS, page.query_selector("#fig"))


def chart_problems(page, selector: str) -> dict:
    """The geometry of the plotly chart inside `selector` on a Streamlit page, once it is drawn."""
    chart = page.locator(f"{selector} .js-plotly-plot").first
    chart.wait_for()
    page.wait_for_function("(el) => el && el._fullLayout && el.querySelector('.main-svg')", arg=chart.element_handle())
    return chart.evaluate(GEOMETRY_JS)


@contextmanager
def serve_script(script: Path, log_path: Path, start_timeout: float = 120.0) -> Iterator[str]:
    """`streamlit run script` on a free local port, from the repository root; yields its base URL."""
    with serve_streamlit(["-m", "streamlit", "run", str(script)], {}, log_path, start_timeout) as url:
        yield url