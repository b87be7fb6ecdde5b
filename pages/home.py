"""Home: the one-click demo and the latest runs."""
import streamlit as st

from ui import state

st.title("Knowledge distillation")
st.markdown("Train a large **teacher**, then a small **student** that learns from the teacher's softened "
            "predictions as well as from the labels; the same student trained alone (the **baseline**) shows "
            "what the teacher added.")

demo = state.demo_config()
st.markdown(f"**The demo:** {demo.dataset.name}, a `{demo.teacher.arch}` teacher distilled into a "
            f"`{demo.student.arch}` student at T = {demo.distill.temperature:g}, α = {demo.distill.alpha:g}, "
            "with its baseline; under a minute on two CPU cores.")
if st.button("Run the demo", type="primary", icon=":material/play_arrow:"):
    state.manager().submit(demo)
    state.runs_changed()
    st.switch_page("pages/live.py")

st.subheader("Latest runs")
runs = state.runs_frame().head(10)
if runs.empty:
    st.info("No runs stored yet. Run the demo, or set one up under **New experiment**.")
else:
    st.dataframe(
        runs[["id", "name", "status", "student_test_acc", "baseline_test_acc", "kd_gain", "created_at"]],
        hide_index=True,
        column_config={
            "id": st.column_config.NumberColumn("Run", format="#%d", width="small"),
            "name": "Name",
            "status": "Status",
            "student_test_acc": st.column_config.NumberColumn("Student test acc.", format="percent"),
            "baseline_test_acc": st.column_config.NumberColumn("Baseline test acc.", format="percent"),
            "kd_gain": st.column_config.NumberColumn("KD gain", format="percent",
                                                     help="Student minus baseline test accuracy"),
            "created_at": st.column_config.DatetimeColumn("Created", format="YYYY-MM-DD HH:mm"),
        },
    )
    st.page_link("pages/runs.py", label="All runs", icon=":material/table_rows:")
