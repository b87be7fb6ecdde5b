"""Page parts shared by several pages: the run summary card, a failure in words, the sidebar queue."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from kdcore import charts, text
from kdcore.record.summary import PhaseResult, RunSummary, gain_sentence
from ui import state


# The table's columns, the KD gain first after the run: (label, how its cells read (kdcore.text.table_cell), help).
# Every cell is text, so a missing value reads "—" (Streamlit writes "None" in an empty number cell) and each
# kind of number reads one way; "Sort by" orders the rows by the numbers themselves.
RUNS_TABLE = {
    "id": ("Run", "int", None),
    "name": ("Name", "text", None),
    "status": ("Status", "text", None),
    "kd_gain": ("KD gain (pts)", "pts", "Student minus baseline test accuracy, in percentage points"),
    "kd_gain_interval": ("95% interval (pts)", "text", "Where the gain would likely fall on other test images like "
                                                       "these: the exact interval of McNemar's test, so it excludes 0 "
                                                       "exactly when p < 0.05"),
    "kd_gain_p_value": ("p", "p", "McNemar's exact test: the chance of a split of test images at least this uneven "
                                  "if the distilled student and the baseline were equally good"),
    "student_test_acc": ("Student test acc.", "pct", None),
    "baseline_test_acc": ("Baseline test acc.", "pct", None),
    "teachers": ("Teachers (test acc.)", "text", "Every teacher of the run with its own test accuracy"),
    "ensemble_test_acc": ("Ensemble test acc.", "pct", "Several teachers combined, as the student saw them"),
    "dataset": ("Dataset", "text", None),
    "student_arch": ("Student", "text", None),
    "method": ("Method", "text", None),
    "temperature": ("T", "number", None),
    "alpha": ("α", "number", None),
    "seed": ("Seed", "int", None),
    "group": ("Group", "text", None),
    "student_best_val_acc": ("Best val. acc.", "pct", "The student's best validation accuracy"),
    "student_params": ("Student params", "count", None),
    "student_flops": ("Student " + text.FLOPS_LABEL, "count", text.FLOPS_HELP),
    "student_latency_ms_b1": ("Student latency", "ms", "Median time of one forward pass at batch 1 with PyTorch, "
                                                       "measured where the run trained, at the end of the run"),
    "teacher_latency_ms_b1": ("Teacher latency", "ms", "The first teacher's, where a run has several"),
    "duration_s": ("Duration", "duration", None),
    "precision": ("Precision", "text", "bf16 or fp32: what the run trained and was evaluated in (train.amp, where "
                                       "the device computes bf16)"),
    "shares": ("Reuses", "text", "A teacher or baseline trained by another run of the same group, identical to what "
                                 "this run would have trained"),
}
def runs_table_text(frame: pd.DataFrame) -> pd.DataFrame:
    """The runs as the table shows them: each cell as text (kdcore.text.table_cell), tags as a list."""
    shown = pd.DataFrame(index=frame.index)
    for key, (_, kind, _) in RUNS_TABLE.items():
        if key in frame:
            shown[key] = [text.table_cell(v, kind) for v in frame[key]]
    # a run stored before the teachers list, or not finished: its architectures from the table's own column
    named = [t if isinstance(t, str) and not t[:1].isdigit() else
             " ".join(p for p in (a if isinstance(a, str) else "", t if isinstance(t, str) else "") if p) or "—"
             for t, a in zip(frame["teachers"], frame["teacher_arch"])]
    shown["teachers"] = named
    shown["id"] = frame["id"]
    shown["tags"] = frame["tags"]
    shown["created"] = frame["created_at"].dt.strftime("%Y-%m-%d %H:%M").fillna("—")
    return shown


def teachers_of(summary: dict) -> list[PhaseResult]:
    """The run's teachers in order, each with its arch, source and results (kdcore.record.summary's one rule)."""
    return RunSummary.from_stored(summary).teachers()


def _teacher_phases(teachers: list[PhaseResult]) -> list[str]:
    return [t.phase for t in teachers] or ["teacher"]  # a summary that names none: its one teacher's keys


def _teachers_total(summary: dict, teachers: list[PhaseResult], what: str):
    """The teachers' parameters or FLOPs together (the run's cost of teaching); None when one is unknown."""
    values = [summary.get(f"{p}_{what}") for p in _teacher_phases(teachers)]
    return None if any(text.missing(v) for v in values) else sum(values)


def _teachers_macs(summary: dict, teachers: list[PhaseResult]):
    """The teachers' multiply-adds per image together (`<phase>_macs`, else FLOPs / 2); None when one is unknown."""
    values = [text.macs_of(summary, p) for p in _teacher_phases(teachers)]
    return None if any(text.missing(v) for v in values) else sum(values)


def signed_delta(points: float, words: str) -> dict:
    """st.metric's delta for a signed gain in points, with the minus sign "−" (Streamlit reads only "-" as a fall,
    so its colour and arrow are set here)."""
    if text.missing(points):
        return {}
    fell = points < 0
    return dict(delta=f"{text.points(points)} {words}", delta_color="red" if fell else "green",
                delta_arrow="down" if fell else "up")


def cost_row(summary: dict, teachers: list[PhaseResult], t_flops, t_macs) -> None:
    """One line of the compression in both conventions (FLOPs = 2 × MACs), and the batch-1 latencies when measured."""
    if not text.missing(summary.get("student_flops")):
        st.caption(f"Per image: student {text.compact(summary.get('student_flops'))} FLOPs = "
                   f"{text.compact(text.macs_of(summary, 'student'))} MACs; "
                   f"{'teachers' if len(teachers) > 1 else 'teacher'} {text.compact(t_flops)} FLOPs = "
                   f"{text.compact(t_macs)} MACs (a multiply-add counts as 2 FLOPs; papers, thop and ptflops "
                   "report MACs).")
    student_ms = summary.get("student_latency_ms_b1")
    if text.missing(student_ms):
        return
    latencies = [summary.get(f"{p}_latency_ms_b1") for p in _teacher_phases(teachers)]
    teacher_ms = None if any(text.missing(v) for v in latencies) else sum(latencies)
    threads = summary.get("latency_threads")
    where = f"with {threads} thread{'s' if threads != 1 else ''}" if threads else "threads not recorded"
    cols = st.columns(3)
    cols[0].metric("Student latency (batch 1)", text.ms(student_ms),
                   help=f"Time of one forward pass on one image, {where}")
    cols[1].metric(("Teachers'" if len(teachers) > 1 else "Teacher") + " latency (batch 1)", text.ms(teacher_ms),
                   help=f"Time of one forward pass on one image, {where}"
                   + ("; the teachers' together" if len(teachers) > 1 else ""))
    cols[2].metric("Student is faster", text.ratio(teacher_ms, student_ms), help=f"At batch 1, {where}")


def summary_card(summary: dict) -> None:
    """Test accuracies, the KD gain with its interval in words, and how much smaller and cheaper the student is.

    With several teachers the first number is their ensemble's, and a row below gives each teacher's; a
    fine-tuned teacher shows its accuracy before and after fine-tuning on this dataset.
    """
    if not summary or "student_test_acc" not in summary:
        return
    gain = summary.get("kd_gain")
    ci = RunSummary.view(summary).gain_interval()  # the exact interval, also for runs stored with a bootstrap one
    teachers = teachers_of(summary)
    several = len(teachers) > 1
    t_params, t_flops = _teachers_total(summary, teachers, "params"), _teachers_total(summary, teachers, "flops")
    whose = f"the {len(teachers)} teachers' together" if several else "the teacher's"
    cols = st.columns(3) + st.columns(3)  # two rows of three: six tiles in a row cut values like "−4.46 pts"
    if several:
        weights = summary.get("teacher_weights")
        cols[0].metric("Ensemble test accuracy", text.pct(summary.get("ensemble_test_acc")),
                       help=f"The {len(teachers)} teachers' softened probabilities averaged "
                            + ("with weights " + ", ".join(f"{w:.2f}" for w in weights) if weights else "equally")
                            + ": what the student learned from")
    else:
        cols[0].metric("Teacher test accuracy", text.pct(summary.get("teacher_test_acc")),
                       help=f"Trained by run #{summary['teacher_from_run']} of this group and reused here"
                       if "teacher_from_run" in summary else None)
    cols[1].metric("Student test accuracy", text.pct(summary.get("student_test_acc")),
                   **signed_delta(gain, "vs baseline"))
    cols[2].metric("Baseline test accuracy", text.pct(summary.get("baseline_test_acc")),
                   help="The same student trained from scratch, without the teacher"
                   + (f"; trained by run #{summary['baseline_from_run']} and shared" if "baseline_from_run" in summary
                      else ""))
    cols[3].metric("KD gain", text.points(gain), help="Student minus baseline test accuracy, in percentage points; "
                   f"95% interval {text.points_range(*ci)}")
    cols[4].metric("Student is smaller", text.ratio(t_params, summary.get("student_params")),
                   help=f"{text.compact(summary.get('student_params'))} parameters against {whose} "
                        f"{text.compact(t_params)}")
    t_macs = _teachers_macs(summary, teachers)
    cols[5].metric("Student is cheaper", text.ratio(t_flops, summary.get("student_flops")),
                   help=f"In {text.FLOPS_LABEL}: {text.compact(summary.get('student_flops'), 'FLOPs')} "
                        f"({text.compact(text.macs_of(summary, 'student'), 'MACs')}) per image against {whose} "
                        f"{text.compact(t_flops, 'FLOPs')} ({text.compact(t_macs, 'MACs')}). {text.FLOPS_HELP}.")
    cost_row(summary, teachers, t_flops, t_macs)
    finetuned = [t for t in teachers if not text.missing(t.pretrained_test_acc)]
    if several or finetuned:
        teacher_row(teachers)
    own_training_note(summary)
    if not text.missing(gain):
        gain_verdict(summary)


def teacher_row(teachers: list[PhaseResult]) -> None:
    """Each teacher's test accuracy; a fine-tuned one's as before → after fine-tuning on this dataset."""
    cols = st.columns(max(len(teachers), 3))
    lines = []
    for col, t in zip(cols, teachers):
        name = charts.phase_label(t.phase).capitalize()
        label = name + (f" · {t.arch}" if t.arch else "")
        before, after = t.pretrained_test_acc, t.test_acc
        tuned = not text.missing(before)
        source = t.source
        gained = signed_delta(after - before, "from fine-tuning") if tuned and not text.missing(after) else {}
        col.metric(label, text.pct(after), **gained,
                   help=(f"Weights from {source}. " if source else "")
                   + (f"Before fine-tuning on this dataset {text.pct(before)}, after {text.pct(after)}" if tuned else ""))
        if tuned:
            epochs = t.finetune_epochs
            lines.append(f"{label}: {text.pct(before)} before fine-tuning → {text.pct(after)} after"
                         + (f" {epochs} epoch{'s' if epochs != 1 else ''} on this dataset" if epochs else ""))
    if lines:
        st.caption("Fine-tuned on this dataset before teaching: " + "; ".join(lines) + ".")


def own_training_note(summary: dict) -> None:
    """Which teachers trained with settings of their own (augmentation, learning rate), in a caption."""
    phases = [t.phase for t in teachers_of(summary)]
    notes = [f"{charts.phase_label(p).capitalize()}: {text.own_settings(summary, p)}" for p in phases
             if text.own_settings(summary, p)]
    if notes:
        st.caption("Trained with settings of its own, which the distilled student and its baseline did not get: "
                   + "; ".join(notes) + ".")


def gain_verdict(summary: dict) -> None:
    """The gain in words, and what its interval means."""
    discordant = summary.get("kd_gain_discordant") or {}
    words = gain_sentence(summary)
    p = summary.get("kd_gain_p_value")
    real = p is not None and p < 0.05 and "not distinguishable" not in words and "borderline" not in words
    (st.success if real and summary["kd_gain"] > 0 else st.warning if real else st.info)(
        f"**KD gain:** {words}", icon=":material/insights:")
    if discordant:
        st.caption(f"The student got {discordant.get('student_only', 0)} test images right that the baseline got "
                   f"wrong, and the baseline {discordant.get('baseline_only', 0)} the other way. The interval is where "
                   "the gain would likely fall on other test images like these (the exact interval of the same "
                   "test, so the two agree); p is the chance of a split at least this uneven if both students were equally good "
                   "(McNemar's exact test). A new seed can still move the gain: run several seeds for that.")


def group_card(report: dict) -> None:
    """A seed group's or sweep's answer: mean ± std over its completed runs, the interval, in words."""
    if report.get("swept"):  # a sweep has no spread over seeds of its own: each setting has one (Runs page)
        st.info(f"**KD gain:** {report['kd_gain_in_words']}.", icon=":material/grid_view:")
        return
    agg = report["aggregate"]
    done = report["statuses"].get("completed", 0)
    total = len(report["run_ids"])
    cols = st.columns(4)
    for col, (key, label) in zip(cols, [("teacher_test_acc", "Teacher"), ("student_test_acc", "Student"),
                                        ("baseline_test_acc", "Baseline"), ("kd_gain", "KD gain")]):
        a = agg.get(key)
        if not a:
            col.metric(label, "—")
            continue
        value = text.points(a["mean"]) if key == "kd_gain" else text.pct(a["mean"], 2)
        # the spread under the mean, not beside it: "71.52% ± 11.07" did not fit a tile
        spread = None if a["std"] is None else f"sd ± {100 * a['std']:.2f} pts"
        interval = None if not a["ci95"] else text.points_range(*a["ci95"]) if key == "kd_gain" else \
            f"{text.pct(a['ci95'][0], 2)} to {text.pct(a['ci95'][1], 2)}"  # one completed run: no interval
        col.metric(label, value, delta=spread, delta_color="off", delta_arrow="off",
                   help=None if interval is None else f"95% interval across seeds: {interval}; ± is the standard "
                                                      "deviation over seeds")
    gain = agg.get("kd_gain")
    above = gain and gain.get("ci95") and gain["ci95"][0] > 0
    (st.success if above else st.info)(f"**KD gain over seeds:** {report['kd_gain_in_words']}",
                                       icon=":material/insights:")
    st.caption(f"{done} of {total} runs completed · {report['teachers_trained']} teacher(s) trained for the group. "
               "Mean ± standard deviation over seeds; the interval is a Student-t 95% interval of the mean: where the "
               "average gain over many more seeds would likely fall.")


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
