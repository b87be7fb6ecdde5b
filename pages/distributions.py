"""Distributions: what the teacher passes on, read from a finished run's stored test-set logits.

Nothing here runs a model: moving T recomputes the softened distributions from
the logits at once.
"""
import math

import streamlit as st

from kdcore.analysis import class_similarity, confusion_matrix
from kdcore.data import DatasetError
from kdcore.losses import entropy, softened
from kdcore.store import DAMAGED_LABEL
from kdcore import charts, text
from ui import form, images, parts, state

PAGE_SIZE = 16
MAX_BARS = 20  # classes shown for one image: the teacher's most likely ones

st.title("Distributions")
runs = state.runs_frame()
finished = runs[(runs["status"] == "completed") & runs["id"].map(state.has_test_logits)]
if finished.empty:
    st.info("No finished run with stored test-set logits yet. Run the demo from **Home**, then come back here.")
    st.stop()
run_labels = {int(r.id): text.run_label(r.id, r.name, r.status) for r in finished.itertuples()}
run_id = st.selectbox("Run", list(run_labels), format_func=run_labels.get, key="dist_run")
run = state.get_run(run_id)
logits = state.test_logits(run_id) if run is not None else None
if logits is None:
    st.warning(f"Run #{run_id} has no stored test-set logits, so there is nothing to show for it.")
    st.stop()
labels, student = logits["labels"], logits["student"]
num_classes = student.shape[1]
dataset_cfg = run.config.get("dataset")  # None when the stored config is damaged
try:
    if dataset_cfg is None:
        raise ValueError(f"its stored config cannot be read {DAMAGED_LABEL}")
    data = state.dataset(dataset_cfg)
except (DatasetError, OSError, ValueError) as err:
    data = None
    st.warning(f"The test images cannot be shown ({text.headline(str(err))}); everything below still comes "
               "from the stored logits.", icon=":material/image_not_supported:")
names = state.class_names(dataset_cfg, num_classes) if dataset_cfg else [str(i) for i in range(num_classes)]

phases = state.teacher_phases(logits)  # "teacher", "teacherN", …, "ensemble"
arches = {t.phase: t.arch for t in parts.teachers_of(run.summary or {})}
left, right = st.columns([1, 2]) if len(phases) > 1 else (None, st)
if left is not None:
    phase = left.radio("Teacher", phases, horizontal=True, key=f"dist_teacher_{run_id}",
                       format_func=lambda p: charts.phase_label(p) + (f" · {arches[p]}" if arches.get(p) else ""),
                       help="The ensemble is the teachers' softened probabilities averaged with the run's teacher "
                            "weights at the slider's T, as the student saw them in training")
else:
    phase = phases[0]
T = right.slider("Temperature T", *form.t_slider_range(run.temperature), value=float(run.temperature),
                 step=form.T_STEP, key=f"dist_T_{run_id}", help=f"This run trained at T = {run.temperature:g}")
summary_weights = ((run.summary or {}).get("teacher_weights")  # normalized by the run; else as configured
                   or (run.config.get("distill") or {}).get("teacher_weights"))
teacher = state.teacher_logits_at(logits, phase, T, summary_weights)  # softmax(teacher / T) is what it passes on
who = charts.phase_label(phase)

# ---- one image -----------------------------------------------------------------------------------
st.subheader("One test image")
teacher_pred, student_pred = teacher.argmax(1), student.argmax(1)
wrong_only = st.toggle("Only images the student gets wrong", key="dist_wrong")
pool = (student_pred != labels).nonzero().flatten().tolist() if wrong_only else list(range(len(labels)))
if not pool:
    st.success("The student gets every test image right.")
    pool = list(range(len(labels)))
pages = math.ceil(len(pool) / PAGE_SIZE)
page = st.number_input(f"Gallery page (of {pages}, {len(pool)} images)", 1, pages,
                       key=f"dist_page_{run_id}_{wrong_only}")
on_page = pool[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
pick_key = f"dist_image_{run_id}"
if st.session_state.get(pick_key) not in pool:
    st.session_state[pick_key] = on_page[0]
if data is not None:
    thumbs = data.denormalize(data.test.images(on_page))
    for row in range(0, len(on_page), PAGE_SIZE // 2):
        for col, i in zip(st.columns(PAGE_SIZE // 2), range(row, min(row + PAGE_SIZE // 2, len(on_page)))):
            idx = on_page[i]
            col.image(images.to_pil(thumbs[i], 56), caption=f"{names[labels[idx]]}", width=56)
            col.button(f"#{idx}", key=f"dist_pick_{idx}",
                       type="primary" if idx == st.session_state[pick_key] else "secondary",
                       on_click=lambda idx=idx: st.session_state.update({pick_key: idx}))
else:
    st.selectbox("Test image", on_page, key=pick_key, format_func=lambda i: f"#{i} · true class {names[labels[i]]}")

idx = st.session_state[pick_key]
p_teacher, p_student = softened(teacher[idx], T), softened(student[idx], T)
bar_classes = list(range(num_classes)) if num_classes <= MAX_BARS else \
    p_teacher.argsort(descending=True)[:MAX_BARS].sort().values.tolist()
left, right = st.columns([1, 3])
if data is not None:
    left.image(images.to_pil(data.denormalize(data.test.images(idx))[0], 160), width=160)
left.markdown(f"Test image **#{idx}**  \ntrue class **{names[labels[idx]]}**  \n"
              f"{who} says **{names[teacher_pred[idx]]}**  \nstudent says **{names[student_pred[idx]]}**")
# the unit in the label: "0.673 nats" did not fit a quarter of the page
left.metric(f"{who.capitalize()} entropy (nats)", f"{entropy(p_teacher).item():.3f}",
            help=f"At most log K = {math.log(num_classes):.3f} nats")
left.metric("Student entropy (nats)", f"{entropy(p_student).item():.3f}")
right.plotly_chart(charts.distributions(p_teacher[bar_classes].numpy(), p_student[bar_classes].numpy(),
                                        [names[i] for i in bar_classes], T,
                                        uirevision=f"{run_id}-{idx}", teacher_phase=phase), key="dist_bars")
if num_classes > MAX_BARS:
    right.caption(f"The {who}'s {MAX_BARS} most likely classes of {num_classes}.")

# ---- the whole test set ------------------------------------------------------------------------------
st.subheader(f"Over the test set ({len(labels):,} images)")
left, right = st.columns(2)
curves = state.temperature_curves(run_id, phase, summary_weights, upto=T)  # on to T where it is above 20
left.plotly_chart(charts.temperature_curves(curves, T, phase), key="dist_curves")
left.caption(f"KL({who} ‖ student) of the softened distributions, and their entropies, against T; "
             "the dashed line is the slider's T.")
right.plotly_chart(charts.similarity(class_similarity(teacher, labels, num_classes, T).numpy(), names, T, phase),
                   key="dist_similarity")
right.caption(f"Row k: the {who}'s mean softened probabilities over images of class k, its "
              "\"dark knowledge\" of which classes look alike.")
left, right = st.columns(2)
left.plotly_chart(charts.confusion(confusion_matrix(teacher, labels, num_classes).numpy(), names,
                                   f"{who.capitalize()} confusion · "
                                   f"{text.pct((teacher_pred == labels).float().mean().item())}"),
                  key="dist_cm_teacher")
right.plotly_chart(charts.confusion(confusion_matrix(student, labels, num_classes).numpy(), names,
                                    f"Student confusion · {text.pct((student_pred == labels).float().mean().item())}"),
                   key="dist_cm_student")
