"""New experiment: a run's config from widgets, checked as it changes, then queued (alone or as a sweep)."""
import datetime as dt
import json
from pathlib import Path

import streamlit as st

from kdcore import checks
from kdcore.config import ConfigError
from kdcore.data import DATASETS, data_root, dataset_info, dataset_status
from kdcore.experiments import expand, parse_seeds
from kdcore.models import MODELS, build_problem, describe_model, timm_models
from kdcore import text
from ui import form, state, uploads

SOURCE_LABELS = {"train": "Train it now", "run": "A stored run's teacher", "checkpoint": "An uploaded checkpoint",
                 "exported": "An exported file"}
START_LABELS = {"scratch": "From scratch", "run": "A stored run's student", "checkpoint": "An uploaded checkpoint"}
COMBINE_LABELS = {"average": "Average of their softened probabilities",
                  "weights": "Fixed weights, one number per teacher"}
k = form.key

st.title("New experiment")
form.restore()  # what was typed before a visit to another page
form.ensure_defaults(state.demo_config().model_copy(update={"name": ""}))  # a new run, not named after the demo
runs = state.runs_frame()
run_labels = {int(r.id): text.run_label(r.id, r.name, r.status) for r in runs.itertuples()}
fields = form.FieldErrors()
v = form.base_values()  # config key -> value; the widgets below overwrite what they show

with st.expander("Start from a stored run", icon=":material/content_copy:"):
    if runs.empty:
        st.caption("No stored runs yet.")
    else:
        if st.session_state.get("ui.source_run") not in run_labels:  # deleted while the form was away
            st.session_state.pop("ui.source_run", None)
        left, right = st.columns([4, 1], vertical_alignment="bottom")
        source_run = left.selectbox("Run", list(run_labels), format_func=run_labels.get, key="ui.source_run")
        right.button("Fill the form", key="ui.fill",
                     on_click=lambda: form.start_from(state.get_run(source_run).config))

# ---- data ------------------------------------------------------------------------------------
st.subheader("Data")
left, right = st.columns([1, 2])
v["dataset.name"] = name = left.selectbox("Dataset", DATASETS.names(), key=k("dataset.name"),
                                                  on_change=form.reset_data_root)
info = dataset_info(name)
right.caption(info.description)
root, download, image_size = None, False, None
if name == "imagefolder":
    where = right.radio("Images from", ["folder", "zip"], horizontal=True, key="ui.images_from",
                        format_func={"folder": "A folder on this machine", "zip": "An uploaded zip"}.get)
    if where == "folder":
        root = right.text_input("Image folder", key=k("dataset.root"),
                                placeholder="/path/to/images, holding one sub-folder per class") or None
    else:
        zipped = right.file_uploader("A zip of class folders", type="zip", key="ui.zip")
        if zipped is not None:
            try:
                root = str(uploads.extract_zip(zipped.getvalue(), zipped.name, state.store().artefact_root / "uploads"))
            except uploads.UploadError as err:
                fields.add("dataset.root", str(err))
    image_size = right.number_input("Image side after resizing (pixels)", step=1,
                                    key=k("dataset.image_size"), placeholder="64")
elif not info.embedded:
    root = right.text_input("Data root", key=k("dataset.root"), placeholder=str(data_root(None))) or None
    download = right.toggle("Allow download if missing", key=k("dataset.download"))
v.update({"dataset.root": root, "dataset.download": download, "dataset.image_size": image_size})
outside = (checks.root_problem(root, [state.store().artefact_root / "uploads"])
           if name == "imagefolder" and root and where == "folder" else None)
status = None if outside else dataset_status(name, root, download)  # never walk a folder outside the data roots
if status is not None and status.ready:
    st.success(status.message, icon=":material/check_circle:")
else:
    fields.add("dataset.root", outside or status.message)
fields.slot("dataset")
shape = (info.num_classes, info.in_channels, info.image_size or image_size or 64)  # classes None: imagefolder

# ---- models ------------------------------------------------------------------------------------
st.subheader("Models")
if info.num_classes is None:
    st.caption("Sizes below assume 10 classes; the image folder decides the real number.")
for name, why in MODELS.plugins().broken.items():  # listed, never offered: the picker keeps working
    st.warning(f"The installed model **{name}** cannot be offered: {why}", icon=":material/extension_off:")


def architecture(role: str, label: str) -> str:
    st.markdown(f"**{label}**")
    # the zoo first, then every timm model: type to search (e.g. "timm/resnet")
    return st.selectbox("Architecture", MODELS.names() + timm_models.picker_names(), key=k(f"{role}.arch"),
                        format_func=lambda n: f"{n} · {describe_model(n)}", on_change=form.reset_options, args=(role,),
                        help="The zoo's models and installed packages' (entry point group kdcore.models), then timm's "
                             "(timm/<name>): type part of a name to search.")


def too_large(arch: str, options: dict):
    """Why this model is over KDCORE_MAX_PARAMS, estimated on the meta device; None if it is not (or cannot be built)."""
    try:
        return checks.too_large(checks.estimate_profile(arch, shape[0] or 10, shape[1], shape[2], options))
    except (TypeError, ValueError, KeyError, RuntimeError):
        return None


def show_profile(role: str, arch: str, options: dict):
    """Parameters, MB and FLOPs per image of the chosen model; None when it cannot be built."""
    try:
        # over the limit, only the estimate: the page server never builds such a model for real
        refusal = too_large(arch, options)
        profile = (checks.estimate_profile(arch, shape[0] or 10, shape[1], shape[2], options) if refusal else
                   state.model_profile(arch, shape[0] or 10, shape[1], shape[2], json.dumps(options, sort_keys=True)))
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        problem = build_problem(arch, err)
        fields.add(f"{role}.options", problem if problem.startswith(f"{arch} ") else
                   f"{arch} cannot be built for {shape[1]}×{shape[2]}×{shape[2]} images: {problem}")
        return None
    if refusal:
        fields.add(f"{role}.options", f"{arch} would have {refusal}")
    # two tiles a row: three in a third of half the page cut values like "5.43 M"
    a, b = st.columns(2)
    a.metric("Parameters", text.compact(profile.params))
    b.metric("Size (MB)", f"{profile.size_mb:.2f}")
    macs = getattr(profile, "macs", None)
    macs = profile.flops / 2 if text.missing(macs) else macs
    st.columns(2)[0].metric(f"{text.FLOPS_LABEL} / image", text.compact(profile.flops),
                            help=f"{text.compact(macs)} MACs (multiply-adds) per image. {text.FLOPS_HELP}.")
    return profile


def options_input(role: str) -> dict:
    typed = st.text_input("Options (YAML)", key=k(f"{role}.options"), placeholder="e.g. width: 16")
    try:
        return form.parse_options(typed)
    except ValueError as err:
        fields.add(f"{role}.options", str(err))
        return {}


def stored_weights(phase: str) -> list[int]:
    """Completed runs that saved this phase's weights."""
    return [i for i in runs.loc[runs["status"] == "completed", "id"] if state.weights_path(i, phase)]


def uploaded_checkpoint(uploader: str, label: str = "Checkpoint (.pt, .pth)", types: tuple = ("pt", "pth")):
    """The stored path of the checkpoint uploaded here, or None. Coming back from another page empties the
    uploader, so the file uploaded before is kept under a key of the form's own; removing or replacing it in
    the uploader forgets it."""
    kept = f"ui.uploaded.{uploader}"
    uploaded = st.file_uploader(label, type=list(types), key=uploader, on_change=form.forget, args=(kept,))
    if uploaded is not None:
        st.session_state[kept] = str(uploads.save_checkpoint(uploaded.getvalue(), uploaded.name,
                                                             state.store().artefact_root / "uploads"))
    elif st.session_state.get(kept):
        st.caption(uploads.shown_name(f"Using {Path(st.session_state[kept]).name}, uploaded before",
                                      st.session_state[kept]))
    return st.session_state.get(kept)


def add_teacher(count: int) -> None:
    """One more teacher, trained here for as many epochs as the first, with its architecture's own defaults."""
    first, new = form.teacher_prefix(0), form.teacher_prefix(count)
    for field in ("arch", "epochs"):
        st.session_state[k(f"{new}.{field}")] = st.session_state.get(k(f"{first}.{field}"))
    st.session_state.update({k(f"{new}.source"): "train", k(f"{new}.options"): "", form.finetune_key(count): False})
    st.session_state[form.TEACHERS] = count + 1


def teacher(i: int, count: int) -> tuple[dict, object]:
    """Teacher i's widgets (0-based); returns its config entries (relative keys) and its size, or None."""
    prefix = form.teacher_prefix(i)
    t = {name: value for name, value in form.teacher_base(i).items() if name in ("seed", "checkpoint")}
    t["arch"] = arch = architecture(prefix, "Teacher" if count == 1 else f"Teacher {i + 1}")
    t["source"] = source = st.radio("Weights", list(SOURCE_LABELS), format_func=SOURCE_LABELS.get,
                                    key=k(f"{prefix}.source"), horizontal=True)
    if source == "exported":
        t.update(exported_teacher(i, prefix, t.get("checkpoint")))
        fields.slot(*([prefix, "teachers.0"] if i == 0 else [prefix]))
        remove_button(i, count)
        return t, None
    checkpoint = problem_key = None
    if source == "train":
        t["epochs"] = st.number_input("Teacher epochs", step=1, key=k(f"{prefix}.epochs"))
        t.update(own_training(i, prefix))
    elif source == "run":
        finished = stored_weights("teacher")
        if st.session_state.get(k(f"{prefix}.run_id")) not in finished:
            st.session_state[k(f"{prefix}.run_id")] = None
        t["run_id"] = st.selectbox("Run", finished, format_func=run_labels.get, key=k(f"{prefix}.run_id"),
                                   placeholder="Choose a finished run")
        if t["run_id"] is not None:
            checkpoint, problem_key = state.weights_path(t["run_id"], "teacher"), f"{prefix}.run_id"
    else:
        uploaded = uploaded_checkpoint("ui.checkpoint" if i == 0 else f"ui.checkpoint.{i}")
        if uploaded is not None:
            t["checkpoint"] = uploaded
        elif t.get("checkpoint"):
            st.caption(f"Using {t['checkpoint']}")
        if t.get("checkpoint"):
            checkpoint, problem_key = t["checkpoint"], f"{prefix}.checkpoint"
    if source != "checkpoint":
        t.pop("checkpoint", None)
    finetune = False
    if source != "train":
        finetune = st.toggle("Fine-tune on this dataset first", key=form.finetune_key(i),
                             help="Transfer: train the loaded teacher on this dataset before it teaches. When the "
                                  "class count differs, the run gives it a new head for this dataset's classes.")
        if finetune:
            epochs_key = k(f"{prefix}.finetune_epochs")
            if not st.session_state.get(epochs_key):
                st.session_state[epochs_key] = 2
            a, b = st.columns(2, vertical_alignment="bottom")
            t["finetune_epochs"] = a.number_input("Fine-tuning epochs", step=1, key=epochs_key)
            t["finetune_last_stage_only"] = b.toggle(
                "Only the last stage", key=k(f"{prefix}.finetune_last_stage_only"),
                help="Train only the last stage and the head; earlier layers keep the loaded weights")
    if not finetune:
        t["finetune_epochs"], t["finetune_last_stage_only"] = 0, False
    options_from = "ui.options_from" if i == 0 else f"ui.options_from.{i}"
    if checkpoint is not None and st.session_state.get(options_from) != str(checkpoint):
        # a new file: show (and run) the options it was saved with, so the sizes below are its model's
        st.session_state[options_from] = str(checkpoint)
        saved = state.checkpoint_options(checkpoint)
        if saved is not None:
            st.session_state[k(f"{prefix}.options")] = form._as_widget_value(f"{prefix}.options", saved)
    t["options"] = options = options_input(prefix)
    if checkpoint is not None and not too_large(arch, options):
        problem = state.checkpoint_problem(checkpoint, arch, shape[0], shape[1], shape[2], options, new_head=finetune)
        if problem:
            fields.add(problem_key, uploads.shown_name(problem, checkpoint))
    fields.slot(*([prefix, "teachers.0"] if i == 0 else [prefix]))
    profile = show_profile(prefix, arch, options)
    remove_button(i, count)
    return t, profile


def remove_button(i: int, count: int) -> None:
    if i == count - 1 and i > 0:
        st.button(f"Remove teacher {i + 1}", key=f"ui.remove_teacher.{i}", icon=":material/remove:",
                  on_click=lambda: st.session_state.update({form.TEACHERS: count - 1}))


def exported_teacher(i: int, prefix: str, given) -> dict:
    """A frozen teacher from a .pt2 or ONNX file: uploaded here, or the file a reopened run named."""
    st.caption("The file carries its own graph, so the architecture above is not used; it serves the methods that "
               "read logits alone and is never fine-tuned.")
    path = uploaded_checkpoint("ui.exported" if i == 0 else f"ui.exported.{i}",
                               "Exported teacher (.pt2 from torch.export, .onnx)", ("pt2", "onnx")) or given
    if path and not st.session_state.get(f"ui.uploaded.ui.exported{'' if i == 0 else f'.{i}'}"):
        st.caption(f"Using {path}")
    if not path:  # a file that does not fit is refused below, by the checks the CLI runs
        fields.add(f"{prefix}.checkpoint", "upload the teacher's .pt2 or .onnx file")
    return {"checkpoint": path, "options": {}, "finetune_epochs": 0, "finetune_last_stage_only": False}


def own_training(i: int, prefix: str) -> dict:
    """A teacher's own augmentation and learning rate, apart from the student's and its baseline's."""
    own = st.toggle("Train it with settings of its own", key=form.own_training_key(i),
                    help="Hinton et al. (2015) trained their teacher on images jittered by up to 2 pixels and the "
                         "small nets without: here the teacher alone gets these settings, the distilled student and "
                         "its baseline keep the Training and Augmentation settings below.")
    if not own:
        return {"augment": None, "train": {}}
    for name, value in (("augment.crop_padding", v["dataset.augment.crop_padding"]),
                        ("augment.flip", v["dataset.augment.flip"]), ("augment.rotation", v["dataset.augment.rotation"]),
                        ("train.lr", v["train.lr"]), ("train.weight_decay", v["train.weight_decay"])):
        st.session_state.setdefault(k(f"{prefix}.{name}"), value)  # it starts from what the others get
    a, b, c = st.columns(3)
    augment = {"crop_padding": a.number_input("Its crop padding (pixels)", step=1,
                                              key=k(f"{prefix}.augment.crop_padding")),
               "flip": b.toggle("Its random flip", key=k(f"{prefix}.augment.flip")),
               "rotation": c.slider("Its rotation (degrees)", 0.0, 45.0, step=1.0, key=k(f"{prefix}.augment.rotation"))}
    a, b = st.columns(2)
    train = {"lr": a.number_input("Its learning rate", format="%.5f", step=0.0005, key=k(f"{prefix}.train.lr")),
             "weight_decay": b.number_input("Its weight decay", format="%.5f", step=0.0001,
                                            key=k(f"{prefix}.train.weight_decay"))}
    return {"augment": augment, "train": train}


def student_start(arch: str, options: dict) -> None:
    """Where the student's weights start: from scratch, a stored run's student, or an uploaded checkpoint."""
    start = st.radio("Start from", list(START_LABELS), format_func=START_LABELS.get, key=form.STUDENT_START,
                     horizontal=True, help="The baseline starts from the same weights, so the KD gain stays a "
                                           "comparison of training with and without the teacher")
    checkpoint = None
    if start == "run":
        finished = stored_weights("student")
        if st.session_state.get("ui.student_run") not in finished:
            st.session_state["ui.student_run"] = None
        run_id = st.selectbox("Run", finished, format_func=run_labels.get, key="ui.student_run",
                              placeholder="Choose a finished run")
        checkpoint = state.weights_path(run_id, "student") if run_id is not None else None
        if checkpoint is None:
            fields.add("student.checkpoint", "choose the run whose student to start from")
    elif start == "checkpoint":
        uploaded = uploaded_checkpoint("ui.student_checkpoint")
        if uploaded is not None:
            checkpoint = uploaded
        elif form.base().get("student", {}).get("checkpoint"):
            checkpoint = form.base()["student"]["checkpoint"]
            st.caption(f"Using {checkpoint}")
        else:
            fields.add("student.checkpoint", "upload the checkpoint to start from")
    v["student.checkpoint"] = str(checkpoint) if checkpoint is not None else None
    if checkpoint is not None and not too_large(arch, options):
        problem = state.checkpoint_problem(checkpoint, arch, shape[0], shape[1], shape[2], options, new_head=True,
                                           role="student")
        if problem:
            fields.add("student.checkpoint", uploads.shown_name(problem, checkpoint))


teacher_col, student_col, ratio_col = st.columns([5, 5, 2], gap="medium")
with teacher_col:
    n_teachers = max(1, int(st.session_state.get(form.TEACHERS) or 1))
    teachers, t_profiles = [], []
    for i in range(n_teachers):
        if i:
            st.divider()
        entry, profile = teacher(i, n_teachers)
        teachers.append(entry)
        t_profiles.append(profile)
    st.button("Add a teacher", key="ui.add_teacher", icon=":material/add:", on_click=add_teacher, args=(n_teachers,),
              help="Distill from several teachers at once: the student learns from their combined softened "
                   "probabilities")
    weights = None
    if n_teachers > 1:
        trained = {}  # teachers trained here with the same settings and seed train to the same weights
        for i, entry in enumerate(teachers):
            if entry["source"] == "train":
                settings = json.dumps([entry["arch"], entry["options"], entry.get("epochs"), entry.get("seed")],
                                      sort_keys=True)
                trained.setdefault(settings, []).append(i + 1)
        for numbers in (n for n in trained.values() if len(n) > 1):
            st.warning(f"Teachers {' and '.join(map(str, numbers))} would train to the same weights: give them "
                       "different architectures or options.", icon=":material/content_copy:")
        st.markdown("**Combining the teachers**")
        combine = st.radio("The student learns from", list(COMBINE_LABELS), format_func=COMBINE_LABELS.get,
                           key=form.COMBINE)
        if combine == "weights":
            weights = []
            for i, col in enumerate(st.columns(n_teachers)):
                weight_key = k(f"distill.teacher_weights.{i}")
                st.session_state.setdefault(weight_key, 1.0)
                weights.append(col.number_input(f"Teacher {i + 1}", step=0.1, format="%g",
                                                key=weight_key))
            st.caption("Each teacher's softened probabilities are weighted by its number over their sum.")
        fields.slot("distill.teacher_weights")
    v["distill.teacher_weights"] = weights
    if n_teachers == 1:
        v.update({f"teacher.{name}": value for name, value in teachers[0].items()})
    else:
        v["teachers"] = [form.nest(entry) for entry in teachers]

with student_col:
    v["student.arch"] = s_arch = architecture("student", "Student")
    v["student.freeze_fraction"] = st.slider(
        "Freeze its early layers", 0.0, 0.95, step=0.05, key=k("student.freeze_fraction"),
        help="Share of the student's parameter tensors, from the input side, kept at their initial values")
    v["student.options"] = s_options = options_input("student")
    student_start(s_arch, s_options)
    fields.slot("student")
    s_profile = show_profile("student", s_arch, s_options)

with ratio_col:
    st.markdown("**Compression**")
    if all(t_profiles) and s_profile:
        t_params, t_flops = sum(p.params for p in t_profiles), sum(p.flops for p in t_profiles)
        st.metric("Fewer parameters", text.ratio(t_params, s_profile.params))
        st.metric(f"Fewer {text.FLOPS_LABEL}", text.ratio(t_flops, s_profile.flops),
                  help=f"The same ratio in MACs: FLOPs count a multiply-add as 2. {text.FLOPS_HELP}.")
        if n_teachers > 1:
            st.caption(f"Against the {n_teachers} teachers together")

# ---- distillation ------------------------------------------------------------------------------------
st.subheader("Distillation")
declared = state.methods()  # every registered method's title, formula and options
left, middle, right = st.columns([2, 1, 1])
v["distill.method"] = method = left.selectbox("Method", list(declared), key=k("distill.method"),
                                              format_func=lambda m: declared[m]["title"] or m)
spec = declared[method]
form.method_options(spec)  # a switch of method starts from the new method's defaults
uses_t = spec["uses_temperature"]
t_ends = form.t_slider_range(st.session_state.get(k("distill.temperature"), 4.0))  # holds a stored T as it is
v["distill.temperature"] = T = middle.slider("Temperature T", *t_ends, step=form.T_STEP, key=k("distill.temperature"),
                                              disabled=not uses_t,
                                              help="Softens both softmaxes; higher T shows more of the teacher's "
                                                   "ranking of the wrong classes")
if not uses_t:
    middle.caption(f"{method} does not use T, so it plays no part here.")
v["distill.alpha"] = alpha = right.slider("α, weight of the method's terms", 0.0, 1.0, step=0.05,
                                          key=k("distill.alpha"))
fields.slot("distill.method", "distill.temperature", "distill.alpha", "distill")
if spec["options"]:
    st.markdown(f"**Options of {method}**")
    columns = st.columns(min(len(spec["options"]), 4))
    for n, option in enumerate(spec["options"]):
        with columns[n % len(columns)]:
            v[f"distill.options.{option['name']}"] = form.option_input(option)
fields.slot("distill.options")
chosen = {option["name"]: v[f"distill.options.{option['name']}"] for option in spec["options"]}
for line in text.loss_latex(method, spec["formula"], T, alpha, uses_t, chosen, spec.get("symbols")):
    st.latex(line)

# ---- training ------------------------------------------------------------------------------------
st.subheader("Training")
cols = st.columns(4)
with cols[0]:
    v["train.epochs"] = st.number_input("Student epochs", step=1, key=k("train.epochs"),
                                        help="The baseline gets the same")
    v["train.batch_size"] = st.number_input("Batch size", step=1, key=k("train.batch_size"))
    fields.slot("train.epochs", "train.batch_size")
with cols[1]:
    v["train.optimizer"] = optimizer = st.selectbox("Optimizer", ["adam", "adamw", "sgd"], key=k("train.optimizer"))
    v["train.lr"] = st.number_input("Learning rate", format="%.5f", step=0.0005, key=k("train.lr"))
    if optimizer == "sgd":
        v["train.momentum"] = st.number_input("Momentum", step=0.05, key=k("train.momentum"))
    v["train.weight_decay"] = st.number_input("Weight decay", format="%.5f", step=0.0001, key=k("train.weight_decay"))
    fields.slot("train.optimizer", "train.lr", "train.momentum", "train.weight_decay")
with cols[2]:
    v["train.schedule"] = schedule = st.selectbox("Learning-rate schedule", ["cosine", "step", "none"],
                                                  key=k("train.schedule"))
    if schedule == "step":
        try:
            v["train.milestones"] = form.parse_list(st.text_input("Milestones (epochs)", key=k("train.milestones"),
                                                                  placeholder="e.g. 30, 60"), int)
        except ValueError as err:
            fields.add("train.milestones", str(err))
        v["train.gamma"] = st.number_input("Factor at each milestone", step=0.05, key=k("train.gamma"))
    v["dataset.val_fraction"] = st.slider("Validation share of train", 0.0, 0.5, step=0.05,
                                          key=k("dataset.val_fraction"))
    v["dataset.student_fraction"] = st.slider(
        "Student's share of train", 0.05, 1.0, step=0.05, key=k("dataset.student_fraction"),
        help="The distilled student and its baseline learn from this share of the training images (the same "
             "images for both); the teacher learns from all. Soft targets help most when labels are scarce.")
    v["train.early_stopping_patience"] = st.number_input("Early stopping patience (0 = off)", step=1,
                                                         key=k("train.early_stopping_patience"))
    fields.slot("train.schedule", "train.milestones", "train.gamma", "dataset.val_fraction",
                "train.early_stopping_patience", "dataset.student_fraction")
with cols[3]:
    v["train.seed"] = st.number_input("Seed", step=1, key=k("train.seed"))
    v["train.device"] = st.selectbox("Device", ["auto", "cpu", "cuda", "mps"], key=k("train.device"))
    v["baseline"] = st.toggle("Also train the baseline", key=k("baseline"),
                              help="The student from scratch, to measure the KD gain")
    v["train.amp"] = st.toggle("bf16 mixed precision", key=k("train.amp"),
                               help="Where the device computes bf16 natively: CUDA GPUs, and CPUs with AVX-512 BF16 "
                                    "or AMX. Elsewhere the run stays in fp32; the summary says which it used.")
    v["train.channels_last"] = st.toggle("Channels-last layout", key=k("train.channels_last"),
                                         help="Conv models and their images in NHWC, which CPUs and GPUs run faster")
    v["train.fused_optimizer"] = st.toggle("Fused optimizer step", key=k("train.fused_optimizer"))
    fields.slot("train.seed", "train.device", "baseline", "train.amp", "train.channels_last",
                "train.fused_optimizer", "train")
with st.expander("Augmentation"):
    a, b, c = st.columns(3)
    v["dataset.augment.crop_padding"] = a.number_input("Random crop padding (pixels, 0 = off)", step=1,
                                                       key=k("dataset.augment.crop_padding"))
    v["dataset.augment.flip"] = b.toggle("Random horizontal flip", key=k("dataset.augment.flip"))
    v["dataset.augment.rotation"] = c.slider("Random rotation (degrees)", 0.0, 45.0, step=1.0,
                                             key=k("dataset.augment.rotation"))
    fields.slot("dataset.augment")

# ---- launch ------------------------------------------------------------------------------------
st.subheader("Launch")
left, right = st.columns(2)
v["name"] = left.text_input("Run name", key=k("name"), placeholder="generated from the settings when empty")
v["tags"] = [t.strip() for t in right.text_input("Tags", key=k("tags"), placeholder="comma-separated").split(",")
             if t.strip()]
fields.slot("name", "tags", "group")
left, right = st.columns([1, 2], vertical_alignment="bottom")
seeds_text = left.text_input("Seeds", key="ui.seeds", placeholder="e.g. 0-4 or 0, 1, 2",
                             help="One run per seed, queued as one group that reports the mean, the spread and a 95% "
                                  "interval of the KD gain across seeds. Empty: one run with the seed above.")
teacher_per_seed = right.toggle("Train a teacher for each seed", key="ui.teacher_per_seed",
                                help="Off: the group trains one teacher (with the first seed) and every run reuses "
                                     "it. On: the interval also covers how much the teacher varies between seeds.")
seeds = None
if seeds_text.strip():
    try:
        seeds = parse_seeds(seeds_text)
    except ConfigError as err:
        fields.add("seeds", str(err).removeprefix("seeds: "))
fields.slot("seeds")
sweep_what = "T and α: one run per pair" if uses_t else "α (this method does not use T): one run per value"
sweep = st.toggle(f"Sweep over {sweep_what}, queued as one group", key="ui.sweep")
temperatures, alphas, group = [], [], ""
if sweep:
    a, b, c = st.columns(3)
    # every field renders before any is parsed: a widget skipped by an error loses its value
    for name, value in (("ui.sweep_t", "2, 4, 8"), ("ui.sweep_alpha", "0.5, 0.9"),
                        ("ui.sweep_group", f"sweep-{dt.datetime.now():%Y%m%d-%H%M}")):
        st.session_state.setdefault(name, value)  # first values; a widget's own default would fight a restored one
    t_text = a.text_input("T values", key="ui.sweep_t") if uses_t else f"{T:g}"
    alpha_text = b.text_input("α values", key="ui.sweep_alpha")
    try:
        temperatures = form.parse_sweep(t_text)
    except ValueError as err:
        fields.add("sweep.T", f"T values: {err}")
    try:
        alphas = form.parse_sweep(alpha_text)
    except ValueError as err:
        fields.add("sweep.alpha", f"α values: {err}")
    group = c.text_input("Group name", key="ui.sweep_group").strip()
    if not group:
        fields.add("sweep.group", "give the group a name")
    fields.slot("sweep")

search = st.toggle("Search for a setting that pays off (a study of many runs)", key="ui.search",
                   help="Optuna tries settings over the keys you list, each as an ordinary run in the queue, chooses on "
                        "the validation split only, and can confirm the best over seeds it never saw.")
study_settings: dict = {}
if search:
    if seeds or sweep:
        fields.add("search", "a study picks its own settings and seeds: clear Seeds and turn the sweep off")
    st.caption("The form above is where every trial starts; the space below says which keys vary and over what. "
               "`kdcore methods` lists each method's options (write them as distill.options.NAME).")
    for name, value in (("ui.search_space", form.default_space(method, uses_t)), ("ui.search_trials", 20),
                        ("ui.search_objective", state.DEFAULT_OBJECTIVE), ("ui.search_parallel", 1),
                        ("ui.search_confirm", "0-4"),
                        ("ui.search_name", f"{v['dataset.name']} study {dt.datetime.now():%Y-%m-%d %H:%M}")):
        st.session_state.setdefault(name, value)
    space_text = st.text_area("Search space (YAML)", key="ui.search_space", height=150)
    a, b, c, d = st.columns(4)
    study_settings = dict(
        trials=int(a.number_input("Trials", step=1, key="ui.search_trials")),
        objective=b.selectbox("Objective (validation)", list(state.objectives()), key="ui.search_objective",
                              format_func=lambda o: state.objectives()[o]),
        sampler=c.selectbox("Sampler", state.SAMPLERS, key="ui.search_sampler",
                            help="tpe: Optuna's default, learns where good settings lie; random; grid: every "
                                 "combination once (choices, int ranges or ranges with step:)"),
        pruner=d.selectbox("Pruner", state.PRUNERS, key="ui.search_pruner",
                           help="Stops a trial whose student's validation accuracy lags the others' at the same "
                                "epoch"))
    a, b, c = st.columns([1, 1, 2])
    study_settings["parallel"] = int(a.number_input("Trials at once", step=1,
                                                    key="ui.search_parallel",
                                                    help="More than 1 only helps with several workers on this store"))
    confirm_text = b.text_input("Confirm over seeds", key="ui.search_confirm",
                                help="At the end, the best trial runs again over these seeds (the trials train with "
                                     "seed 1000) and the study answers with its gain on test and a 95% interval. "
                                     "Empty: confirm later from the Studies page.")
    study_name = c.text_input("Study name", key="ui.search_name").strip()
    study_settings["confirm_seeds"] = confirm_text.strip() or None
    for what, value, high in (("trials", study_settings["trials"], 1000), ("trials at once", study_settings["parallel"], 64)):
        if not 1 <= value <= high:  # checked here, not by the widget, so a refused number never hides behind the last
            fields.add("search", f"{what}: give a whole number from 1 to {high}")
    problem = state.study_problem(study_name, study_settings["confirm_seeds"])
    if problem:
        fields.add("search", problem)
    fields.slot("search")

config, errors = form.validate(form.nest(v))
fields.update(errors)
space = None
if search and config is not None:
    space, problem = state.check_space(space_text, config)
    if problem:
        fields.add("search", problem)
if config is not None:
    try:
        for path, message in state.runnable_problems(config):  # kdcore's refusals, shared with the CLI
            fields.add(path, message)
    except ConfigError as err:  # a malformed KDCORE_* limit
        fields.add("(config)", str(err))
if config is not None and sweep:
    for t in temperatures:
        for a in alphas:
            _, bad = form.validate(form.nest({**v, "distill.temperature": t, "distill.alpha": a}))
            for path, message in bad.items():
                fields.add("sweep", f"T = {t:g}, α = {a:g}: {path}: {message}")
for message in fields.show():
    st.error(form.plain(message), icon=":material/error:")

count = (len(temperatures) * len(alphas) if sweep else 1) * (len(seeds) if seeds else 1)
label = f"Queue {count} runs" if count > 1 else "Launch"
if search:
    label = f"Start the study ({study_settings['trials']} trials)"
elif count > 1 and config is not None:
    trained = sum(t.source == "train" for t in config.all_teachers) * (len(seeds) if seeds and teacher_per_seed else 1)
    st.caption(f"{count} runs in one group: {trained} teacher(s) trained, and one baseline per seed, shared by "
               "the runs that differ only in T and α.")
if st.button(label, type="primary", icon=":material/rocket_launch:", disabled=bool(fields.errors), key="ui.launch"):
    if search:
        st.session_state["ui.study"] = state.start_study(study_name, config, space, **study_settings)
        form.forget("ui.search_name")  # the next study is a new one
        st.switch_page("pages/studies.py")
    queued = expand(config, seeds=seeds, temperatures=temperatures or None, alphas=alphas or None,
                    group=group or None, teacher_per_seed=teacher_per_seed) if sweep or seeds else [config]
    if state.launch(queued):
        form.forget("ui.sweep_group")  # the next sweep is a new group
        st.switch_page("pages/live.py")
if fields.marked:
    st.caption(f"Fix the fields marked in red to launch: {', '.join(f'`{path}`' for path in fields.marked)}.")
elif fields.errors:
    st.caption("Fix the problems listed above to launch.")
form.remember()  # this run's last values, should the user now go to another page
