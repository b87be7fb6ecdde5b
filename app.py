"""The kdcore dashboard: page config, the shared sidebar and the page router.

    streamlit run app.py
"""
import sys
from pathlib import Path

import streamlit as st

# the icon from a file served by the dashboard: a ":material/…:" page icon is fetched from a font CDN (not offline)
ICON = Path(__file__).parent / "ui" / "favicon.png"
st.set_page_config(page_title="kdcore · knowledge distillation", page_icon=str(ICON), layout="wide")

# A fresh server's first page imports PyTorch, pandas and plotly: 20 s on a busy 2-core machine, which showed
# as a blank page. A loading view is sent before those imports, and cleared once they are done.
if "ui.state" not in sys.modules:
    loading = st.empty()
    with loading.container():
        st.title("Starting kdcore…")
        with st.spinner("Loading PyTorch, pandas and plotly, once per server start. The dashboard opens as soon "
                        "as they are loaded.", show_time=True):
            from ui import parts, state  # noqa: F401
    loading.empty()

from kdcore.store import StoreError  # noqa: E402
from ui import parts, state  # noqa: E402

page = st.navigation([
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/new_experiment.py", title="New experiment", icon=":material/add_circle:"),
    st.Page("pages/live.py", title="Live", icon=":material/monitoring:"),
    st.Page("pages/runs.py", title="Runs", icon=":material/table_rows:"),
    st.Page("pages/studies.py", title="Studies", icon=":material/travel_explore:"),
    st.Page("pages/distributions.py", title="Distributions", icon=":material/bar_chart:"),
    st.Page("pages/report.py", title="Report", icon=":material/summarize:"),
])

read_only = state.store().read_only  # opened first, so a fault of the store shows in place of the page
try:
    with st.sidebar:
        st.caption(f":material/memory: {state.device_line()}")
        if read_only:
            st.caption(":material/lock: Read-only store: runs can be viewed, not launched, changed or deleted")
        parts.queue_line()
    page.run()
except StoreError as err:  # not a kdcore store, damaged, or a write to a read-only one: its reason, not a traceback
    state.show_store_error(err)
