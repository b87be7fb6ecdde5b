"""Report: a completed run or a group as the shareable HTML report (kdcore.report), and a presentation mode.

The page shows the very document `kdcore report` writes, so the two never differ.
Presentation mode (the toggle, or ?present=1 in the address) shows only the report,
wide and in big type: no sidebar, no pickers, no download button. Its address names the
run or group (&run=ID or &group=NAME), so a reload shows the same report.
"""
import streamlit as st

from kdcore import text
from kdcore.report import ReportError, build_report, with_plotly_inlined
from kdcore.store import default_url
from ui import state

HIDE_CHROME = """<style>
[data-testid="stSidebar"],[data-testid="stSidebarCollapsedControl"],[data-testid="stSidebarNav"],
header[data-testid="stHeader"]{display:none !important}
.block-container,[data-testid="stMainBlockContainer"]{max-width:100% !important;padding:0.5rem 1.5rem !important}
</style>"""


@st.cache_data(show_spinner="Building the report…", max_entries=8)
def _report(url: str, target: str, presentation: bool, stamp: str, plotly_src) -> str:
    # `stamp` (the runs' finish times) makes a changed group or a re-run build again
    return build_report(state.store(), target, presentation=presentation, plotly_src=plotly_src)


def _present(on: bool) -> None:
    # a plain session key, not the toggle's: the toggle is not drawn in presentation mode, and Streamlit
    # forgets the state of a widget it did not draw
    st.session_state["report_presenting"] = on
    for name in ("present", "run", "group"):
        st.query_params.pop(name, None)
    if on:  # the address names what is shown, so a reload in a meeting shows the same report
        kind, target = st.session_state.get("report_shown") or (None, None)
        st.query_params.update({"present": "1", **({"group": target} if kind == "A group" else
                                                   {"run": str(target)} if target is not None else {})})


params = st.query_params
present = params.get("present") == "1" or st.session_state.get("report_presenting", False)
runs = state.runs_frame()
done = runs[runs["status"] == "completed"]
if done.empty:
    st.title("Report")
    st.info("No completed run yet. Run the demo from **Home**, then come back here for its report.")
    st.stop()
groups = state.seed_groups(dict.fromkeys(done["group"].dropna()))  # newest first; a study's report is on Studies
run_labels = {int(r.id): text.run_label(r.id, r.name, r.status) for r in done.itertuples()}

# what to show: the address (?run=ID or ?group=NAME) first, then this session's pick, then the newest run
if params.get("group") in groups:
    st.session_state.setdefault("report_shown", ("A group", params["group"]))
elif (params.get("run") or "").isdigit() and int(params["run"]) in run_labels:
    st.session_state.setdefault("report_shown", ("A run", int(params["run"])))
shown = st.session_state.get("report_shown")
if shown is not None and not (shown[1] in groups if shown[0] == "A group" else shown[1] in run_labels):
    shown = None  # deleted since
if shown is not None and "report_kind" not in st.session_state:
    st.session_state.update(report_kind=shown[0], **{"report_group" if shown[0] == "A group" else "report_run": shown[1]})

if present:
    st.html(HIDE_CHROME)
    kind, target = shown or ("A run", next(iter(run_labels)))
else:
    st.title("Report")
    st.caption("The run or group in one self-contained HTML file for people who will not open the dashboard: the "
               "question and setup, the KD gain with its interval, accuracy, size and latency, curves, "
               "distributions, per-class results, calibration and the config. The same file as "
               "`kdcore report ID|GROUP -o report.html`.")
    a, b, c = st.columns([1, 3, 1])
    kind = a.radio("Report on", ["A run", "A group"], key="report_kind", horizontal=True,
                   disabled=not groups, help=None if groups else "No seed group or sweep has a completed run yet")
    if kind == "A group" and groups:
        target = b.selectbox("Group", groups, key="report_group")
    else:
        kind = "A run"
        target = b.selectbox("Completed run", list(run_labels), format_func=run_labels.get, key="report_run")
    st.session_state["report_shown"] = (kind, target)
    c.toggle("Presentation mode", value=False, key="report_present_toggle", on_change=_present, args=(True,),
             help="Only the report, wide and big, without the sidebar or any controls (also: ?present=1)")

members = done[done["group"] == target] if kind == "A group" else done[done["id"] == target]
stamp = ",".join(str(t) for t in members["finished_at"])
try:
    # plotly.js from the dashboard's static files, loaded once and cached by the browser, not 4.9 MB per visit
    plotly_src = state.plotly_src()
    html = _report(default_url(), str(target), present, stamp, plotly_src)
except ReportError as err:
    st.error(str(err))
    st.stop()

if present:
    st.button("Leave presentation mode", icon=":material/close_fullscreen:", type="tertiary",
              on_click=_present, args=(False,))
else:
    name = f"kdcore-group-{target}" if kind == "A group" else f"kdcore-run-{target}"
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name)
    # the file itself is self-contained (plotly.js inlined), built when asked for
    st.download_button("Download report (HTML)", file_name=f"{safe}.html", mime="text/html", on_click="ignore",
                       data=lambda: with_plotly_inlined(html, plotly_src) if plotly_src else html,
                       icon=":material/download:", key="report_download")
st.iframe(html, height="content")  # the frame grows to the report's own height
