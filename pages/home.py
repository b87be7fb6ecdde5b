"""Home: the one-click demo and the latest runs."""
import streamlit as st

from kdcore.experiments import expand
from ui import parts, state

DEMO_SEEDS = 5

st.title("Knowledge distillation")
st.markdown("Train a large **teacher**, then a small **student** that learns from the teacher's softened "
            "predictions as well as from the labels; the same student trained alone (the **baseline**) shows "
            "what the teacher added.")

demo = state.demo_config()
st.markdown(f"**The demo:** {demo.dataset.name}, a `{demo.teacher.arch}` teacher distilled into a "
            f"`{demo.student.arch}` student at T = {demo.distill.temperature:g}, α = {demo.distill.alpha:g}, "
            "with its baseline (the same student trained without the teacher).")
left, right, _ = st.columns([1, 1, 2])
read_only = state.store().read_only  # nothing can be queued: the sidebar says why
if left.button("Run the demo", type="primary", icon=":material/play_arrow:", disabled=read_only,
               help="One run, under a minute on two CPU cores. Its KD gain comes with a 95% interval over the test "
                    "images and a p-value: whether the gain is more than chance on this test set."):
    if state.launch([demo]):
        st.switch_page("pages/live.py")
if right.button(f"Run it over {DEMO_SEEDS} seeds", icon=":material/stacks:", disabled=read_only,
                help=f"{DEMO_SEEDS} runs in one group sharing one teacher: the mean gain with a 95% interval across "
                     "seeds, whether the gain survives a change of seed."):
    if state.launch(expand(demo, seeds=list(range(DEMO_SEEDS)))):
        st.switch_page("pages/live.py")
st.caption("A gain is real when its interval stays above zero. One run's interval covers the luck of the test "
           "images; a seed group's covers the luck of training too.")

st.subheader("Latest runs")
runs = state.runs_frame().head(10)
if runs.empty:
    st.info("No runs stored yet. Run the demo, or set one up under **New experiment**.")
else:
    shown = ["id", "name", "status", "kd_gain", "kd_gain_interval", "student_test_acc", "baseline_test_acc", "created"]
    # text cells read as on the Runs page: "—" for a missing value, never "None"
    st.dataframe(parts.runs_table_text(runs)[shown], hide_index=True, column_config={
        "id": st.column_config.NumberColumn("Run", format="#%d", width="small"),
        **{key: st.column_config.TextColumn(parts.RUNS_TABLE[key][0], help=parts.RUNS_TABLE[key][2])
           for key in shown[1:-1]},
        "created": st.column_config.TextColumn("Created")})
    st.page_link("pages/runs.py", label="All runs", icon=":material/table_rows:")
