"""Studies: a search's progress, where its settings lead, the best trial, and the confirmation over fresh seeds.

Everything comes from the store: a study started here, by `kdcore tune` or on another machine shows the same.
"""
import pandas as pd
import streamlit as st

from kdcore import charts, text
from kdcore.studies import charts as study_charts
from kdcore.studies.space import describe_spec
from ui import parts, state

REFRESH_S = 3.0

st.title("Studies")
names = state.study_names()
if not names:
    st.info("No studies yet. A study tries many settings (method, T, α, learning rate, …), chooses on the "
            "validation split, and confirms the best over seeds it never saw. Start one from **New experiment → "
            "Search for a setting that pays off**, or from a terminal: "
            "`kdcore tune examples/digits.yaml --space examples/spaces/digits.yaml --trials 20 --confirm-seeds 0-4`.",
            icon=":material/travel_explore:")
    st.stop()
if st.session_state.get("ui.study") not in names:
    st.session_state["ui.study"] = names[0]
name = st.selectbox("Study", names, key="ui.study")
first = state.study(name)
active = first is not None and (first["status"] == "running" or any(
    s in (first["confirmation"] or {}).get("statuses", {}) for s in ("queued", "running")))


def _value(value, objective: dict) -> str:
    if value is None:
        return "—"
    return text.points(value) if objective["in_points"] else text.pct(value, 2)


def _answer(d: dict) -> None:
    confirmation = d["confirmation"]
    gain = (confirmation or {}).get("aggregate", {}).get("kd_gain") if confirmation else None
    done = gain is not None and gain.get("ci95") is not None and gain["n"] >= len(confirmation["run_ids"])
    box = st.info
    if done:
        box = st.success if gain["ci95"][0] > 0 else st.warning
    box(f"**Answer:** {d['answer']}", icon=":material/insights:")


def _trials_table(d: dict) -> None:
    rows = [{"Trial": t["number"], "State": t["state"] + (f" (epoch {t['pruned_at_epoch']})" if t["pruned_at_epoch"]
                                                          else ""),
             "Value": _value(t["value"], d["objective"]), "Setting": t["setting"],
             "Run": f"#{t['run_id']}" if t["run_id"] else "—", "Time": text.duration(t["seconds"])}
            for t in reversed(d["trials"])]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                 column_config={"Value": st.column_config.TextColumn(f"{d['objective']['label']} (validation)")})
    run_ids = [t["run_id"] for t in d["trials"] if t["run_id"]]
    if run_ids:
        left, right = st.columns([3, 1], vertical_alignment="bottom")
        chosen = left.selectbox("A trial's run", run_ids, key="ui.study_run",
                                format_func=lambda r: next(f"trial {t['number']}: {t['setting']} (run #{r})"
                                                           for t in d["trials"] if t["run_id"] == r))
        if right.button("Open in Live", key="ui.study_open", icon=":material/monitoring:"):
            st.session_state["live_pick"] = chosen
            st.switch_page("pages/live.py")


def _confirmation(d: dict) -> None:
    st.subheader("Confirmation on fresh seeds")
    confirmation = d["confirmation"]
    if confirmation is None:
        complete = [t for t in d["trials"] if t["state"] == "complete"]
        if not complete:
            st.caption("Once a trial completes, its setting can be run again over seeds the search never saw.")
            return
        st.caption("The search chose on the validation split; the confirmation runs the chosen setting again over "
                   f"fresh seeds (the trials trained with seed {d['trial_seed']}) and measures its gain on test, "
                   "with a 95% interval across those seeds.")
        best = d["best"]["number"] if d["best"] else complete[0]["number"]
        a, b, c = st.columns([2, 1, 1], vertical_alignment="bottom")
        trial = a.selectbox("Trial", [t["number"] for t in complete], index=[t["number"] for t in complete].index(best),
                            format_func=lambda n: next(f"{n}: {t['setting']}" + (" (best)" if n == best else "")
                                                       for t in complete if t["number"] == n), key="ui.confirm_trial")
        seeds = b.text_input("Seeds", value="0-4", key="ui.confirm_seeds")
        if c.button("Confirm", type="primary", icon=":material/verified:", key="ui.confirm",
                    disabled=state.store().read_only):
            try:
                state.study_action("confirm", name, seeds=seeds, trial=trial)
                st.rerun()
            except ValueError as err:  # StudyError, a bad seed list
                st.error(str(err), icon=":material/error:")
        return
    report = state.group(confirmation["group"])
    st.caption(f"Trial {confirmation['trial']} ({confirmation['setting']}) over seeds {confirmation['seeds']}, "
               f"group “{confirmation['group']}”.")
    if report is not None:
        parts.group_card(report)
        frame = state.runs_frame()
        members = frame[(frame["group"] == confirmation["group"]) & (frame["status"] == "completed")]
        if not members.empty:
            st.plotly_chart(charts.group_dots(members, report["aggregate"]), key="study_confirm_dots")


def _actions(d: dict) -> None:
    read_only = state.store().read_only
    left, middle, right = st.columns(3)
    if d["status"] == "running":
        if left.button("Stop asking trials", icon=":material/stop_circle:", key="ui.study_stop", disabled=read_only):
            state.study_action("stop", name)
            st.rerun()
    elif d["status"] == "stopped":
        if left.button("Resume the study", icon=":material/play_circle:", key="ui.study_resume", disabled=read_only):
            state.study_action("resume", name)
            st.rerun()
    with left:
        st.download_button("Download the study's report (HTML)", data=lambda: state.study_report(name),
                           file_name=f"kdcore-study-{name}.html", mime="text/html", icon=":material/download:",
                           key="ui.study_report", on_click="ignore",
                           help="The study as one self-contained file (`kdcore report NAME`), for people who will "
                                "not open the dashboard")
    sure = middle.checkbox("Delete it with its runs", key="ui.study_delete_sure", disabled=read_only)
    if right.button("Delete the study", icon=":material/delete:", key="ui.study_delete", disabled=not sure):
        try:
            state.study_action("delete", name)
            st.session_state.pop("ui.study", None)
            st.rerun()
        except ValueError as err:
            st.error(str(err), icon=":material/error:")


@st.fragment(run_every=REFRESH_S if active else None)
def study_view() -> None:
    d = state.study(name)
    if d is None:
        st.warning(f"Study “{name}” is gone.", icon=":material/warning:")
        return
    objective = d["objective"]
    finished = sum(t["state"] not in ("queued", "running", "asked") for t in d["trials"])
    status = {"running": "running", "stopped": "stopped", "finished": "finished"}[d["status"]]
    st.caption(f"{status.capitalize()}{': ' + d['reason'] if d['reason'] else ''} · {d['dataset']} · "
               f"{d['sampler']} sampler, {d['pruner']} pruner, {d['parallel']} trial(s) at a time")
    st.markdown(f"**Objective:** {objective['label']}, read on the **validation** split only: "
                f"{objective['description']}.")
    st.progress(min(1.0, finished / max(1, d["n_trials"])), text=f"{finished} of {d['n_trials']} trials finished")
    _answer(d)
    cols = st.columns(4)
    counts = d["counts"]
    cols[0].metric("Complete", counts.get("complete", 0))
    cols[1].metric("Pruned", counts.get("pruned", 0), help="Stopped early: the student's validation accuracy lagged "
                                                            "what the other trials had at the same epoch")
    cols[2].metric("Failed or stopped", sum(counts.get(s, 0) for s in ("failed", "interrupted", "cancelled")))
    cols[3].metric(f"Best ({'pts' if objective['in_points'] else '%'})",
                   _value(d["best"]["value"], objective) if d["best"] else "—",
                   help=d["best"]["setting"] if d["best"] else None)
    st.plotly_chart(study_charts.history(d), key="study_history")
    st.plotly_chart(study_charts.parallel(d), key="study_parallel")
    left, right = st.columns([3, 2])
    left.plotly_chart(study_charts.importance(d), key="study_importance")
    with right:
        st.markdown("**Search space**")
        st.dataframe(pd.DataFrame([{"Key": k, "Range": describe_spec(spec)}
                                   for k, spec in d["space"].items()]), hide_index=True, width="stretch")
    st.subheader("Trials")
    _trials_table(d)
    _confirmation(d)
    st.divider()
    _actions(d)


study_view()
