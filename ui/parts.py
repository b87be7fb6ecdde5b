"""Page parts shared by several pages: the run summary card, a failure in words, the sidebar queue."""
from __future__ import annotations

import streamlit as st

from ui import state, text


def summary_card(summary: dict) -> None:
    """Test accuracies, KD gain, and how much smaller and cheaper the student is."""
    if not summary or "student_test_acc" not in summary:
        return
    gain = summary.get("kd_gain")
    cols = st.columns(6)
    cols[0].metric("Teacher test accuracy", text.pct(summary.get("teacher_test_acc")))
    cols[1].metric("Student test accuracy", text.pct(summary.get("student_test_acc")),
                   delta=None if text.missing(gain) else f"{text.points(gain)} vs baseline")
    cols[2].metric("Baseline test accuracy", text.pct(summary.get("baseline_test_acc")),
                   help="The same student trained from scratch, without the teacher")
    cols[3].metric("KD gain", text.points(gain), help="Student minus baseline test accuracy, in percentage points")
    cols[4].metric("Student is smaller", text.ratio(summary.get("teacher_params"), summary.get("student_params")),
                   help=f"{text.compact(summary.get('student_params'))} parameters against the teacher's "
                        f"{text.compact(summary.get('teacher_params'))}")
    cols[5].metric("Student is cheaper", text.ratio(summary.get("teacher_flops"), summary.get("student_flops")),
                   help=f"{text.compact(summary.get('student_flops'), 'FLOPs')} per image against the teacher's "
                        f"{text.compact(summary.get('teacher_flops'), 'FLOPs')}")


def outcome(status: str, error: str | None) -> None:
    """A failed or stopped run's reason in words; the traceback folded away."""
    if status == "failed":
        st.error(f"This run failed: {text.headline(error) or 'no reason was recorded'}", icon=":material/error:")
        trace = text.traceback_of(error)
        if trace:
            with st.expander("Traceback"):
                st.code(trace, language="text")
    elif status == "cancelled":
        st.info("This run was cancelled before it finished.", icon=":material/stop_circle:")
    elif status == "interrupted":
        st.warning(text.headline(error) or "This run was interrupted.", icon=":material/warning:")


def queue_line() -> None:
    """The sidebar's queue state; polls while something runs."""
    polling = bool(state.manager().active())

    @st.fragment(run_every=2.0 if polling else None)
    def _line() -> None:
        mgr = state.manager()
        running, queued = mgr.running(), mgr.queued()
        if running or queued:
            st.caption(f"Queue: {len(running)} running, {len(queued)} waiting")
        else:
            st.caption("Queue: idle")
        if polling and not (running or queued):
            st.rerun()  # the last job ended: rerun the page once so nothing keeps polling

    _line()
