"""The kdcore dashboard: page config, the shared sidebar and the page router.

    streamlit run app.py
"""
from pathlib import Path

import streamlit as st

from kdcore.store import StoreError
from ui import parts, state

# the icon from a file served by the dashboard: a ":material/…:" page icon is fetched from a font CDN (not offline)
ICON = Path(__file__).parent / "ui" / "favicon.png"
st.set_page_config(page_title="kdcore · knowledge distillation", page_icon=str(ICON), layout="wide")

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
