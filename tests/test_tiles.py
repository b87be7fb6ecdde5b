"""Metric tiles in a real Chromium at 1400 × 900: the run card, the teachers' row, the latency row and the group
card show every value whole (they read "0.0438 …", "−4.46 …" and "71.52% ± 11.…"), in the wide layout the
dashboard uses and in Streamlit's centred one."""
from __future__ import annotations

import pytest

from tests.layout_check import serve_script

SCRIPT = '''
import streamlit as st
from ui import parts

st.set_page_config(layout=st.query_params.get("layout", "wide"))
st.sidebar.caption("Queue: idle")
summary = {
    "teachers": [{"phase": "teacher", "arch": "resnet18", "source": "torchvision"},
                 {"phase": "teacher2", "arch": "wrn_16_2"}],
    "teacher_test_acc": 0.9412, "teacher2_test_acc": 0.9301, "ensemble_test_acc": 0.9533,
    "teacher_pretrained_test_acc": 0.1012, "teacher_weights": [0.5, 0.5],
    "student_test_acc": 0.7152, "baseline_test_acc": 0.7598, "kd_gain": -0.04462, "kd_gain_ci95": [-0.0975, -0.0028],
    "kd_gain_p_value": 0.0512, "kd_gain_discordant": {"student_only": 120, "baseline_only": 168},
    "student_params": 75_258, "teacher_params": 11_689_512, "teacher2_params": 693_498,
    "student_flops": 2.3e7, "teacher_flops": 3.6e9, "teacher2_flops": 2.0e8,
    "student_latency_ms_b1": 0.04381, "teacher_latency_ms_b1": 12.873, "teacher2_latency_ms_b1": 0.671,
    "latency_threads": 2,
}
parts.summary_card(summary)
report = {"aggregate": {"teacher_test_acc": {"mean": 0.98871, "std": 0.00123, "n": 4, "ci95": [0.9867, 0.9907]},
                        "student_test_acc": {"mean": 0.71524, "std": 0.11071, "n": 4, "ci95": [0.5391, 0.8914]},
                        "baseline_test_acc": {"mean": 0.80496, "std": 0.00123, "n": 4, "ci95": [0.8030, 0.8069]},
                        "kd_gain": {"mean": -0.08976, "std": 0.11718, "n": 4, "ci95": [-0.2764, 0.0967]}},
          "statuses": {"completed": 4}, "run_ids": [1, 2, 3, 4], "teachers_trained": 1,
          "kd_gain_in_words": "-8.98 points over 4 seeds"}
parts.group_card(report)
'''

# the value's text box, wider than the tile shows: Streamlit cuts it with an ellipsis
TRUNCATED_JS = """() => Array.from(document.querySelectorAll('[data-testid="stMetricValue"]')).map((v) => {
    const inner = v.querySelector('div') || v;
    return [v.innerText, inner.scrollWidth > inner.clientWidth + 1 || v.scrollWidth > v.clientWidth + 1];
})"""


def _card(summary: dict) -> None:
    from ui import parts

    parts.summary_card(summary)


def test_a_negative_gain_reads_as_a_fall_with_the_minus_sign():
    from streamlit.testing.v1 import AppTest

    summary = {"student_test_acc": 0.7152, "baseline_test_acc": 0.7598, "kd_gain": -0.0446, "teacher_test_acc": 0.9}
    at = AppTest.from_function(_card, args=(summary,), default_timeout=60).run()
    student = next(m for m in at.metric if m.label == "Student test accuracy")
    gain = next(m for m in at.metric if m.label == "KD gain")
    assert gain.value == "−4.46 pts" and student.proto.delta == "−4.46 pts vs baseline"
    assert student.proto.color == student.proto.MetricColor.RED
    assert student.proto.direction == student.proto.MetricDirection.DOWN


@pytest.fixture(scope="module")
def tiles_url(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiles")
    (tmp / "tiles.py").write_text(SCRIPT)
    with serve_script(tmp / "tiles.py", tmp / "streamlit.log") as url:
        yield url


@pytest.mark.browser
@pytest.mark.parametrize("layout", ["wide", "centered"])
def test_no_metric_tile_cuts_its_value_short(tiles_url, page, layout):
    page.set_viewport_size({"width": 1400, "height": 900})
    page.goto(f"{tiles_url}/?layout={layout}")
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=120_000)
    page.wait_for_selector('[data-testid="stMetricValue"]')
    tiles = page.evaluate(TRUNCATED_JS)
    assert len(tiles) >= 12, tiles
    cut = [value for value, truncated in tiles if truncated]
    assert not cut, f"tile values cut short in the {layout} layout: {cut}"
