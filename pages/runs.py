"""Runs: every stored run in one table; compare the selected ones; manage and inspect one.

The table comes from one query (Store.runs_table, each run's JSON parsed once); curves are read only for
the selected runs and only the open tab is built, so the page stays quick with thousands of runs stored.
"""
import hashlib

import numpy as np
import pandas as pd
import streamlit as st

from kdcore.analysis import (confusion_matrix, expected_calibration_error, fixed_and_broken, per_class_accuracy,
                             per_class_gain, reliability_table)
from kdcore.jobs.service import ActionRefused
from kdcore.record import RunSummary, phase_order, teacher_phases
from kdcore import charts, text
from kdcore.data import DatasetError
from ui import form, images, parts, state

TABLE = parts.RUNS_TABLE  # every cell as text, read one way (ui/parts.py says why)
COLUMNS = {**{key: st.column_config.TextColumn(label, help=about) for key, (label, _, about) in TABLE.items()},
           "id": st.column_config.NumberColumn("Run", format="#%d", width="small"),  # never missing: a number
           "name": st.column_config.TextColumn("Name", width="medium"),
           "tags": st.column_config.ListColumn("Tags"), "created": st.column_config.TextColumn("Created")}
SORTS = {"Newest first": ("id", False), "KD gain, highest first": ("kd_gain", False),
         "KD gain, lowest first": ("kd_gain", True), "Student test acc., highest first": ("student_test_acc", False),
         "p, smallest first": ("kd_gain_p_value", True), "Name": ("name", True)}


TEACHERS_JOINED = " + "  # how the store's teacher_arch column joins a run's several teachers
SCATTER_X = {"temperature": "temperature T", "alpha": "alpha α", "student_params": "student parameters",
             "student_flops": "student FLOPs per image (2 × MACs)"}
FRONTIER_X = {key: label for key, (label, _) in charts.FRONTIER_AXES.items()}
SCATTER_Y = {"student_test_acc": "student test accuracy", "kd_gain": "KD gain",
             "student_best_val_acc": "student best validation accuracy"}

st.title("Runs")
runs = state.runs_frame()
if runs.empty:
    st.info("No runs stored yet. Run the demo from **Home** or set up a **New experiment**.")
    st.stop()
labels = {int(i): f"#{i} {n}" for i, n in zip(runs["id"], runs["name"])}

# ---- filters and table -------------------------------------------------------------------------
cols = st.columns([3, 2, 2, 2, 2, 2, 2, 3])
search = cols[0].text_input("Search names", key="runs_search", placeholder="name contains…")


def archs_of(teacher_arch) -> set[str]:
    """A run's teacher architectures: its column lists several as "small_cnn + mlp"."""
    return set(teacher_arch.split(TEACHERS_JOINED)) if isinstance(teacher_arch, str) else set()


filters = {
    column: widget_col.multiselect(label, sorted(set().union(*runs[column].map(archs_of))) if column == "teacher_arch"
                                   else sorted(runs[column].dropna().unique()), key=f"runs_filter_{column}")
    for widget_col, (column, label) in zip(cols[1:], [("dataset", "Dataset"), ("teacher_arch", "Teacher"),
                                                      ("student_arch", "Student"), ("method", "Method"),
                                                      ("status", "Status")])
}
tags = sorted({t for ts in runs["tags"] for t in ts})
tag = cols[6].multiselect("Tag", tags, key="runs_filter_tag", placeholder="Choose" if tags else "No tags",
                          help=None if tags else "No run has a tag yet: add them in a run's Summary")

mask = pd.Series(True, index=runs.index)
if search:
    mask &= runs["name"].str.contains(search, case=False, regex=False)
for column, chosen in filters.items():
    if chosen and column == "teacher_arch":  # a run of several teachers is shown for any one of them
        mask &= runs[column].map(lambda arch: bool(archs_of(arch) & set(chosen)))
    elif chosen:
        mask &= runs[column].isin(chosen)
if tag:
    mask &= runs["tags"].map(lambda ts: bool(set(ts) & set(tag)))
view = runs[mask].reset_index(drop=True)

# the selection is by row position: a different set of rows starts a fresh selection
by, ascending = SORTS[cols[7].selectbox("Sort by", list(SORTS), key="runs_sort")]
view = view.sort_values(by, ascending=ascending, na_position="last", kind="stable").reset_index(drop=True)
table_key = "runs_table_" + hashlib.md5(view["id"].to_numpy().tobytes()).hexdigest()[:12]
event = st.dataframe(parts.runs_table_text(view)[list(COLUMNS)], key=table_key, on_select="rerun",
                     selection_mode="multi-row", hide_index=True, column_config=COLUMNS, height=380)
selected = [int(i) for i in view.iloc[event.selection.rows]["id"]] if len(view) else []
chosen_runs = view[view["id"].isin(selected)]

st.caption(f"{len(view)} of {len(runs)} runs shown · {len(selected)} selected")
left, right, _ = st.columns([2, 2, 4])
left.download_button("Table as CSV", data=lambda: view[[*TABLE, "tags", "created_at"]].to_csv(index=False),
                     file_name="runs.csv", mime="text/csv", on_click="ignore", icon=":material/download:")
right.download_button("Selected runs' curves as CSV",
                      data=lambda: state.store().metrics_frame(selected).to_csv(index=False),
                      file_name="curves.csv", mime="text/csv", on_click="ignore", disabled=not selected,
                      icon=":material/download:")

# ---- comparisons: one function per tab -------------------------------------------------------------------
def curves_tab(selected: list[int]) -> None:
    if not selected:
        st.caption("Select runs in the table to overlay their curves.")
        return
    curves = state.metrics(selected, kind="epoch")
    names = charts.metric_names(curves)  # a method's own loss terms too (train_tckd, train_hint, …)
    a, b, c = st.columns(3)
    metric = a.selectbox("Metric", names, format_func=charts.metric_label, index=names.index("val_acc"),
                         key="runs_metric")
    stored = list(dict.fromkeys(["student", "baseline", "teacher", *sorted(set(curves["phase"]), key=phase_order)]))
    phases = b.multiselect("Phases", stored, default=["student", "baseline"], format_func=charts.phase_label,
                           key="runs_phases")
    smoothing = c.slider("Smoothing", 0.0, 0.95, 0.0, step=0.05, key="runs_smoothing",
                         help="Exponential moving average; 0 = the raw values")
    st.plotly_chart(charts.overlay(curves, metric, labels, smoothing, phases, uirevision=metric),
                    key="runs_overlay")


def bars_tab(chosen_runs: pd.DataFrame) -> None:
    if chosen_runs.empty:
        st.caption("Select runs in the table to compare their test accuracy.")
    else:
        st.plotly_chart(charts.accuracy_bars(chosen_runs, labels), key="runs_bars")


def scatter_tab(view: pd.DataFrame, selected: list[int]) -> None:
    a, b = st.columns(2)
    x = a.selectbox("Against", list(SCATTER_X), format_func=SCATTER_X.get, index=2, key="runs_scatter_x")
    y = b.selectbox("Metric", list(SCATTER_Y), format_func=SCATTER_Y.get, key="runs_scatter_y")
    st.plotly_chart(charts.frontier(view, x, y, selected, SCATTER_X[x], SCATTER_Y[y]), key="runs_frontier")
    st.caption("Every run shown in the table; the selected ones are outlined.")


def frontier_tab(view: pd.DataFrame) -> None:
    # one dataset at a time: accuracies on different test sets do not share an axis
    finished = view[view["status"] == "completed"]
    datasets = list(dict.fromkeys(finished["dataset"].dropna()))  # the most recent run's first
    if not datasets:
        st.caption("No completed runs among these yet: the frontier needs their test accuracies.")
        return
    a, b = st.columns(2)
    dataset = a.selectbox("Dataset", datasets, key="runs_pareto_dataset")
    points = state.frontier_points_of(dataset)
    points = points[points["run_id"].isin(finished["id"])]
    axes = [k for k in FRONTIER_X if k not in ("latency_ms_b1", "size_mb") or points[k].notna().any()]
    x_axis = b.selectbox("Cost", axes, format_func=FRONTIER_X.get, key="runs_pareto_x",
                         help=text.FLOPS_HELP + ". Latency appears once runs have measured it.")
    st.plotly_chart(charts.pareto_frontier(points, x_axis, dataset), key="runs_pareto")
    st.caption("Teacher (◆), baseline (■), distilled student (●) and its int8 ONNX (○, where `kdcore export "
               "--quantize int8` kept one) of each completed run in the table; the line joins the points no other "
               "point beats on both cost and accuracy. int8 students were timed by onnxruntime, so they are left "
               "off the PyTorch latency axis.")


def diff_tab(selected: list[int]) -> None:
    if len(selected) < 2:
        st.caption("Select two or more runs to see where their configs differ.")
        return
    table = state.config_table(selected)
    differs = table.astype(str).nunique(axis=1) > 1
    if differs.any():
        st.dataframe(table[differs].astype(str), width="stretch")
    else:
        st.caption("Their configs are identical.")


def groups_tab(view: pd.DataFrame) -> None:
    groups = state.seed_groups(dict.fromkeys(view["group"].dropna()))  # newest first; studies have their page
    if not groups:
        st.caption("No seed groups or sweeps among these runs; queue one from **New experiment** (Seeds, or a "
                   "sweep over T and α).")
        return
    group = st.selectbox("Group", groups, key="runs_group")
    report = state.group(group)
    members = runs[runs["group"] == group]
    swept = report["swept"] if report is not None else []
    if report is not None and not swept:  # repeats of one setting: its spread over seeds
        parts.group_card(report)
        st.plotly_chart(charts.group_dots(members, report["aggregate"]), key="runs_group_dots")
    elif report is not None:  # a sweep: one summary per setting (cell), never pooled across settings
        st.info(f"**KD gain:** {report['kd_gain_in_words']}.", icon=":material/grid_view:")
        st.dataframe(_cells_frame(report["cells"]), hide_index=True, width="stretch")
        if set(swept) <= {"distill.temperature", "distill.alpha"}:
            a, _ = st.columns([1, 3])
            value = a.radio("Heatmap of", ["kd_gain", "student_test_acc"], horizontal=True, key="runs_sweep_value",
                            format_func={"kd_gain": "KD gain", "student_test_acc": "student test accuracy"}.get)
            st.plotly_chart(charts.sweep_heatmap(members, value=value), key="runs_sweep")
        cells = {c["label"]: c for c in report["cells"]}
        cell = cells[st.selectbox("Setting", list(cells), key="runs_group_cell")]
        members = members[members["id"].isin(cell["run_ids"])]
        st.caption(f"**{cell['label']}:** {cell['kd_gain_in_words']}.")
        st.plotly_chart(charts.group_dots(members, cell["aggregate"]), key="runs_group_dots")
    a, b = st.columns([1, 3])
    curves = state.metrics(members["id"], kind="epoch")
    names = charts.metric_names(curves)
    metric = a.selectbox("Curve", names, format_func=charts.metric_label, index=names.index("val_acc"),
                         key="runs_group_metric")
    st.plotly_chart(charts.averaged_curves(curves, metric), key="runs_group_curves")
    shared = members.dropna(subset=["shares"])
    if not shared.empty:
        st.caption("Shared phases: " + "; ".join(f"#{i} reuses the {s}" for i, s in zip(shared["id"], shared["shares"])))


def _cells_frame(cells: list[dict]) -> pd.DataFrame:
    """A sweep's settings, one row each: seeds completed, mean KD gain and its interval across seeds."""
    rows = []
    for c in cells:
        gain = c["aggregate"].get("kd_gain") or {}
        rows.append({"Setting": c["label"], "Runs completed": f"{c['completed']} of {len(c['run_ids'])}",
                     "Mean KD gain": text.points(gain.get("mean")),
                     "95% interval across seeds": text.points_range(*gain["ci95"]) if gain.get("ci95") else "—",
                     "In words": c["kd_gain_in_words"]})
    return pd.DataFrame(rows)


TABS = {"Groups": lambda: groups_tab(view), "Frontier": lambda: frontier_tab(view),
        "Curves": lambda: curves_tab(selected), "Test accuracy": lambda: bars_tab(chosen_runs),
        "Scatter": lambda: scatter_tab(view, selected), "Config diff": lambda: diff_tab(selected)}
# Only the open tab is built and sent: every tab's charts on every visit took seconds to draw in the browser
for tab, draw in zip(st.tabs(list(TABS), key="runs_tab", on_change="rerun"), TABS.values()):
    if tab.open:
        with tab:
            draw()

# ---- one run ---------------------------------------------------------------------------------------
if not selected:
    st.stop()
st.divider()
detail_id = st.selectbox("Run details", selected, format_func=labels.get, key="runs_detail") \
    if len(selected) > 1 else selected[0]
run = state.get_run(detail_id)
if run is None:
    st.warning(f"Run {detail_id} is no longer stored.")
    st.stop()
st.subheader(labels.get(run.id, f"#{run.id}"))
st.caption(f"{run.status} · {run.dataset} · {text.teachers_line(run.config, run.teacher_arch)} → "
           f"{run.student_arch} · "
           f"{text.method_line(run.config, run.method)} · "
           f"T = {run.temperature:g} · α = {run.alpha:g} · created {run.created_at:%Y-%m-%d %H:%M}"
           + (f" · took {text.duration(run.duration_s)}" if run.duration_s else "")
           + (f" · {run.device}" if run.device else ""))

def edit_panel(run) -> None:
    """Rename, tag, annotate or delete, through the service (pages never write to the store themselves)."""
    with st.form(f"edit_{run.id}", border=False):
        name = st.text_input("Name", value=run.name, key=f"edit_name_{run.id}")
        tags = st.text_input("Tags", value=", ".join(run.tag_list), key=f"edit_tags_{run.id}",
                             placeholder="comma-separated")
        notes = st.text_area("Notes", value=run.notes, key=f"edit_notes_{run.id}")
        if st.form_submit_button("Save", icon=":material/save:"):
            try:
                state.service().edit(run.id, name=name, tags=tags.split(","), notes=notes)
            except ValueError as err:
                st.error(str(err))
            else:
                state.runs_changed()
                st.rerun()
    if st.session_state.get("runs_confirm_delete") != run.id:
        st.button("Delete this run", icon=":material/delete:", key=f"delete_{run.id}",
                  on_click=lambda: st.session_state.update(runs_confirm_delete=run.id))
        return
    st.warning(f"Delete run #{run.id}, its curves and its files (weights, logits)? This cannot be undone.")
    yes, no, _ = st.columns([1, 1, 4])
    if yes.button("Yes, delete it", type="primary", key=f"delete_yes_{run.id}"):
        st.session_state.pop("runs_confirm_delete", None)
        try:
            state.service().delete(run.id)
        except ActionRefused as err:  # still queued or running
            st.error(str(err))
        else:
            state.runs_changed()
            st.rerun()
    if no.button("Keep it", key=f"delete_no_{run.id}"):
        st.session_state.pop("runs_confirm_delete", None)
        st.rerun()


def summary_view(run) -> None:
    parts.outcome(run.status, run.error)
    if run.status in ("interrupted", "cancelled", "failed"):
        problem = state.service().resume_problem(run.id)
        if st.button("Resume", key=f"resume_{run.id}", icon=":material/play_circle:", disabled=problem is not None,
                     help=problem or "Go on from its last saved epoch; finished phases are not run again"):
            try:
                state.service().resume(run.id)
            except ActionRefused as err:  # resumed from elsewhere since the button was drawn
                st.error(str(err))
            else:
                state.runs_changed()
                st.session_state["live_pick"] = run.id
                st.switch_page("pages/live.py")
    parts.summary_card(run.summary)
    for flag in RunSummary.from_stored(run.summary).teacher_flags():  # the gain above then means little
        st.warning(flag[0].upper() + flag[1:] + ".", icon=":material/warning:")
    if run.notes:
        st.markdown(f"**Notes:** {run.notes}")
    if st.button("New experiment from this run", icon=":material/content_copy:", key=f"restart_{run.id}"):
        form.start_from(run.config)
        st.switch_page("pages/new_experiment.py")


def curves_view(run) -> None:
    figures = charts.all_curves(state.metrics([run.id]), uirevision=run.id)
    if not figures:
        st.caption("No curves were stored for this run.")
    for i in range(0, len(figures), 2):
        for j, (col, fig) in enumerate(zip(st.columns(2), figures[i:i + 2])):
            col.plotly_chart(fig, key=f"detail_curve_{run.id}_{i + j}")


def _teachers_in(logits: dict) -> list[str]:
    """Every teacher whose test logits the run stored, in order. Not the stored "ensemble": its logits only mean
    the ensemble softened at the run's T, so its confidence at T = 1 is no calibration of anything."""
    return teacher_phases(logits)


def test_set_view(run) -> None:
    logits = state.test_logits(run.id)
    if logits is None:
        st.caption("This run stored no test-set predictions.")
        return
    labels_t = logits["labels"]
    models = [m for m in ("student", *state.teacher_phases(logits), "baseline") if m in logits]
    num_classes = logits[models[0]].shape[1]
    names = state.class_names(run.config.get("dataset") or {}, num_classes)
    model = st.radio("Confusion matrix of", models, horizontal=True, key="runs_cm_model",
                     format_func=charts.phase_label)
    cm = confusion_matrix(logits[model], labels_t, num_classes).numpy()
    acc = {m: per_class_accuracy(logits[m], labels_t, num_classes).numpy() for m in models}
    left, right = st.columns(2)
    left.plotly_chart(charts.confusion(cm, names, f"{charts.phase_label(model)}: confusion on the test set"),
                      key="runs_cm")
    right.plotly_chart(charts.per_class(acc, names), key="runs_per_class")
    worst = np.argsort(acc["student"])[:3]
    st.caption("The student's weakest classes: " + ", ".join(f"{names[i]} ({text.pct(acc['student'][i])})"
                                                             for i in worst))


def calibration_view(run) -> None:
    logits = state.test_logits(run.id) if run.status == "completed" else None
    if logits is None:
        st.caption("Calibration and per-class results need a completed run with stored test-set predictions.")
        return
    labels_t = logits["labels"]
    models = [*_teachers_in(logits), *(m for m in ("student", "baseline") if m in logits)]  # every teacher
    num_classes = logits["student"].shape[1]
    names = state.class_names(run.config.get("dataset") or {}, num_classes)
    tables = {m: reliability_table(logits[m], labels_t) for m in models}
    eces = {m: expected_calibration_error(logits[m], labels_t) for m in models}
    st.subheader("Calibration")
    for col, m in zip(st.columns(max(3, len(models))), models):
        col.metric(f"{charts.phase_label(m).capitalize()} ECE", text.pct(eces[m]),
                   help="Expected calibration error over 15 equal-width confidence bins: the gap between how "
                        "sure the model is (its top softmax probability) and how often it is right, averaged "
                        "over the test images; 0 is perfectly calibrated")
    st.plotly_chart(charts.reliability_diagram(tables, eces), key="runs_reliability")
    st.subheader("Per class")
    acc = {m: per_class_accuracy(logits[m], labels_t, num_classes).numpy()
           for m in (*_teachers_in(logits), "baseline", "student") if m in logits}
    left, right = st.columns(2)
    left.plotly_chart(charts.per_class(acc, names), key="runs_calib_per_class")
    if "baseline" not in logits:
        right.caption("This run trained no baseline, so there is no per-class KD gain.")
        return
    right.plotly_chart(charts.class_gain_bars(per_class_gain(logits["student"], logits["baseline"], labels_t,
                                                             num_classes), names), key="runs_class_gain")
    fixed, broken = fixed_and_broken(logits["student"], logits["baseline"], labels_t)
    try:
        data = state.dataset(run.config["dataset"])
    except (DatasetError, OSError, ValueError, KeyError) as err:
        data = None
        st.caption(f"The test images cannot be shown ({text.headline(str(err))}).")
    s_pred, b_pred = logits["student"].argmax(1).tolist(), logits["baseline"].argmax(1).tolist()
    truth = labels_t.tolist()
    for title, indices, key in ((f"Distillation fixed {len(fixed)} test images", fixed, "fixed"),
                                (f"Distillation broke {len(broken)} test images", broken, "broken")):
        st.markdown(f"**{title}**: the "
                    + ("student gets them right and the baseline wrong" if key == "fixed"
                       else "baseline gets them right and the student wrong"))
        if data is not None and indices:
            images.gallery(lambda idx: data.denormalize(data.test.images(idx)), indices,
                           lambda i: f"#{i} {names[truth[i]]} · b {names[b_pred[i]]} · s {names[s_pred[i]]}",
                           key=f"runs_{key}_{run.id}")
    st.caption("Under each image: its number, true class, then the baseline's (b) and the student's (s) "
               "prediction. Their counts are the discordant pairs McNemar's test weighs.")


def int8_row(run, phase: str) -> None:
    """The phase's int8 ONNX, when `kdcore export --quantize int8` kept one, with how it compares with float32."""
    path, r = state.int8_file(run.id, phase)
    if path is None:
        if phase == "student":
            st.caption(f"No int8 student yet: `kdcore export {run.id} --format onnx --quantize int8` makes one, "
                       "calibrated on training images and checked on the test images.")
        return
    a, b = st.columns([1, 3])
    label = charts.phase_label(phase).capitalize()
    a.download_button(f"{label} as int8 ONNX", data=path.read_bytes, file_name=f"run{run.id}-{path.name}",
                      mime="application/octet-stream", on_click="ignore", key=f"dl_int8_{phase}_{run.id}",
                      icon=":material/download:")
    bound = "within" if r.get("within_bound") else "ABOVE (kept with --force)"
    b.caption(f"int8 (static, QDQ, calibrated on {r.get('calibration_images')} training images), checked on "
              f"{r.get('test_images')} test images: drop {r.get('drop_points', float('nan')):.2f} pts against float32, "
              f"{bound} the bound of {r.get('max_drop', float('nan')):g}")
    b.dataframe(pd.DataFrame(
        [{"file": f"{phase}, {kind} ONNX", "test accuracy": text.pct(r.get(f"{kind}_accuracy"), 2),
          "drop vs float32": "—" if kind == "fp32" else f"{r.get('drop_points', float('nan')):.2f} pts",
          "size": f"{r.get(f'{kind}_bytes', 0) / 2**20:.3g} MB",
          "latency, batch 1": f"{r.get(f'{kind}_latency_ms_b1', float('nan')):.3g} ms",
          "latency, batch 64": f"{r.get(f'{kind}_latency_ms_b64', float('nan')):.3g} ms"}
         for kind in ("fp32", "int8")]),
        hide_index=True, key=f"int8_table_{phase}_{run.id}")
    b.caption(f"Latency: onnxruntime on {r.get('latency_device') or 'the CPU'}, {r.get('latency_threads', '?')} "
              "thread(s), at export.")


def downloads_view(run) -> None:
    found = False
    teachers = [t.phase for t in parts.teachers_of(run.summary or {})] or ["teacher"]
    for phase in ("student", *teachers, "baseline"):
        path = state.weights_path(run.id, phase)
        if path is None:
            continue
        found = True
        st.download_button(f"{charts.phase_label(phase).capitalize()} weights (.pt)", data=path.read_bytes,
                           file_name=f"run{run.id}-{path.name}",
                           on_click="ignore", key=f"dl_{phase}_{run.id}", icon=":material/download:")
        int8_row(run, phase)
        if phase != "student":
            continue
        # Exports are built on request (seconds each), then checked against PyTorch on the test images
        for fmt, label, how in (("onnx", "ONNX", "run with onnxruntime, no PyTorch needed; the batch size is free"),
                                ("pt2", "torch.export (.pt2)", "load with torch.export.load(path).module(), "
                                                               "no kdcore needed")):
            a, b = st.columns([1, 3])
            wanted = f"export_wanted_{fmt}_{run.id}"  # not the button's key: a widget's state goes when it does
            if not st.session_state.get(wanted) and a.button(f"Student as {label}", key=f"export_{fmt}_{run.id}",
                                                               help=how, icon=":material/build:"):
                st.session_state[wanted] = True
            if not st.session_state.get(wanted):
                b.caption("Built and checked when asked for")
                continue
            try:
                with st.spinner(f"Exporting the student as {label} and checking it on the test images…"):
                    blob, check = state.exported(path, fmt, run.config["dataset"])
            except (DatasetError, OSError, ValueError, RuntimeError) as err:
                a.error(f"The {label} export failed: {text.headline(str(err))}")
                continue
            a.download_button(f"Student as {label}", data=blob, file_name=f"run{run.id}-student.{fmt}",
                              mime="application/octet-stream", on_click="ignore", key=f"dl_{fmt}_{run.id}",
                              icon=":material/download:", help=how)
            verdict = ("matches PyTorch" if check["ok"] else
                       "DIFFERS from PyTorch beyond the float32 tolerance: do not use it")
            b.caption(f"Checked on {check['images_checked']} test images: largest logit difference "
                      f"{check['max_abs_diff']:.2g}, {verdict}")
            for warning in check["warnings"]:
                b.warning(f"Exporter warning: {warning}", icon=":material/warning:")
    if not found:
        st.caption("This run stored no weights.")
    st.caption("Weights files hold {arch, num_classes, in_channels, image_size, options, state_dict}; "
               "read them with torch.load(path, weights_only=True).")


with st.expander("Rename, tag, annotate or delete", icon=":material/edit:"):
    edit_panel(run)

VIEWS = {"Summary": summary_view, "Config": lambda r: st.json(r.config), "Curves": curves_view,
         "Test set": test_set_view, "Calibration and per class": calibration_view, "Downloads": downloads_view}
shown = st.radio("Show", list(VIEWS), horizontal=True, key="runs_detail_view", label_visibility="collapsed")
VIEWS[shown](run)
