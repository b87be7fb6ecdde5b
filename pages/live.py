"""Live: the queue, the running job's progress and curves, and the result when it ends.

Everything shown comes from the store: a run executed by this dashboard's worker, by
`kdcore worker` on another machine or by `kdcore train` shows and cancels the same way.
"""
from typing import Optional

import pandas as pd
import streamlit as st

from kdcore.jobs import LiveState
from kdcore.jobs.service import ActionRefused
from kdcore import charts, text
from ui import parts, state

LIVE_REFRESH_S = 2.0  # each refresh redraws three charts: at 1 s the demo ran at 0.83x the CLI's speed, at 2 s 0.93x

st.title("Live")

runs = state.runs_frame()
labels = {int(r.id): text.run_label(r.id, r.name, r.status) for r in runs.head(200).itertuples()}
picked = st.selectbox("Show", [None, *labels], format_func=lambda r: "The running job, else the latest run"
                      if r is None else labels[r], key="live_pick")


def _shown_run_id(mgr) -> Optional[int]:
    if picked is not None:
        return picked
    active = mgr.active()
    if active:
        return active[0]
    fresh = state.runs_frame()
    return int(fresh["id"].iloc[0]) if not fresh.empty else None


def _resume(run_id: int) -> None:
    try:
        state.service().resume(run_id)  # a worker picks it up and goes on from its last saved epoch
    except ActionRefused as err:  # resumed from another tab, or its folder went, since the button was drawn
        st.session_state["live_refused"] = str(err)
    st.session_state["live_pick"] = run_id
    state.runs_changed()


def _cancel(run_id: int) -> None:
    state.service().cancel(run_id)
    st.session_state["live_pick"] = run_id  # stay on the cancelled run rather than jump to the next one
    state.runs_changed()


def _queue(mgr) -> None:
    active = mgr.active()
    if not active:
        return
    st.subheader("Queue")
    running = set(mgr.running())
    for run_id in active:
        run = state.get_run(run_id)
        left, right = st.columns([6, 1], vertical_alignment="center")
        status = "running" if run_id in running else "queued"
        where = f" · {run.worker.rsplit(':', 1)[0] if run.worker else ''}" if run and status == "running" else ""
        left.markdown(f"{text.STATUS_ICONS.get(status, '')} **#{run_id}** {run.name if run else ''} · {status}{where}")
        right.button("Cancel", key=f"cancel_{run_id}", icon=":material/stop:", on_click=_cancel, args=(run_id,),
                     disabled=bool(run and run.cancel_requested))


def _progress(snap: LiveState) -> None:
    current = snap.phases.index(snap.phase) if snap.phase in snap.phases else -1
    st.markdown("Phases: " + " → ".join(
        f"**{p}**" if i == current else (f"{p} ✓" if i < current else p) for i, p in enumerate(snap.phases)))
    if not snap.phase:
        st.progress(0.0, text="Loading the data…")
        return
    eta = text.duration(snap.eta_s) if snap.eta_s is not None else "—"
    total_steps = snap.epochs * snap.steps_per_epoch
    st.progress(snap.run_progress, text=(
        f"{snap.phase}: epoch {snap.epoch}/{snap.epochs} · step {snap.step}/{total_steps} · "
        f"{snap.images_per_s:,.0f} images/s · whole run {snap.run_progress:.0%}, about {eta} left"))


def _charts(history: pd.DataFrame, run_id: int) -> None:
    if history.empty:
        st.caption("No curves recorded for this run.")
        return
    # loss and accuracy have a panel per phase: each across the page; agreement (the student's alone) beside a note
    # a stable key and uirevision keep the user's zoom while the data refreshes
    st.plotly_chart(charts.loss_parts(history, uirevision=run_id), key=f"live_loss_{run_id}")
    st.plotly_chart(charts.accuracy(history, uirevision=run_id), key=f"live_accuracy_{run_id}")
    left, right = st.columns([2, 1])
    left.plotly_chart(charts.agreement(history, uirevision=run_id), key=f"live_agreement_{run_id}")
    right.caption("Training curves are the mean over each tenth of an epoch, so they run on across epochs; each "
                  "phase counts its own steps. A panel's axis leaves out its first steps' loss when that lies far "
                  "above the rest (the chart's Autoscale button shows them).")


def _panel(run_id: int, mgr) -> None:
    run = state.get_run(run_id)
    if run is None:
        st.warning(f"Run {run_id} is no longer stored.")
        return
    snap = mgr.snapshot(run_id)
    status = run.status
    st.subheader(f"{text.STATUS_ICONS.get(status, '')} #{run.id} {run.name}")
    st.caption(f"{run.dataset} · {text.teachers_line(run.config, run.teacher_arch)} → {run.student_arch} · "
               f"{text.method_line(run.config, run.method)} · "
               f"T = {run.temperature:g} · α = {run.alpha:g} · {status}"
               + (f" · {run.device}" if run.device else "") + (f" · worker {run.worker}" if run.worker else ""))
    if status == "queued":
        queued = mgr.queued()
        position = queued.index(run_id) + 1 if run_id in queued else 1
        st.info(f"Waiting in the queue, position {position}.", icon=":material/hourglass_top:")
        return
    if status == "running":
        if run.cancel_requested:
            st.info("Cancelling: the worker stops it at its next step.", icon=":material/stop_circle:")
        if snap.stale_note():  # a dead or hung worker: said, and no time left is guessed
            st.warning(snap.stale_note(), icon=":material/heart_broken:")
        _progress(snap)
        history = pd.DataFrame(snap.history, columns=["phase", "kind", "step", "epoch", "name", "value"])
    else:
        history = state.metrics([run_id])
    _charts(history, run_id)
    if status != "running":
        parts.outcome(run.status, run.error)
        if status in ("interrupted", "cancelled", "failed"):
            refused = st.session_state.pop("live_refused", None)
            if refused:
                st.warning(refused, icon=":material/block:")
            problem = state.service().resume_problem(run_id)
            st.button("Resume", key=f"resume_{run_id}", icon=":material/play_circle:", on_click=_resume,
                      args=(run_id,), disabled=problem is not None,
                      help=problem or "Go on from its last saved epoch; finished phases are not run again")
        parts.summary_card(run.summary)
    if run.group:
        _group(run.group)


def _group(name: str) -> None:
    report = state.group(name)
    if report is None:
        return
    done = report["statuses"].get("completed", 0)
    st.markdown(f"**Group** {name} · {done} of {len(report['run_ids'])} runs completed")
    if done:
        parts.group_card(report)
    st.page_link("pages/runs.py", label="The group on the Runs page", icon=":material/table_rows:")


def _anything_active(mgr, run_id: Optional[int]) -> bool:
    return bool(mgr.active()) or (run_id is not None and state.is_active(state.get_run(run_id)))


mgr = state.manager()
polling = _anything_active(mgr, _shown_run_id(mgr))


@st.fragment(run_every=LIVE_REFRESH_S if polling else None)
def live_view() -> None:
    mgr = state.manager()
    _queue(mgr)
    run_id = _shown_run_id(mgr)
    if run_id is None:
        st.info("Nothing has run yet. Start the demo from **Home** or set up a **New experiment**.")
        return
    _panel(run_id, mgr)
    if polling and not _anything_active(mgr, run_id):
        state.runs_changed()
        st.rerun()  # the last job ended: one full rerun shows its result and stops the polling
    elif not polling and _anything_active(mgr, run_id):
        st.rerun()  # a run was resumed or queued from within this fragment: a full rerun starts the polling


live_view()
