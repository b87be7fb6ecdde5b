"""Cached accessors: the one way pages reach the store, the job manager, datasets and stored logits.

Resources are keyed by the store URL ($KDCORE_DB_URL), so one process can serve
(and tests can build) apps on different stores. Queries use short ttls: the
store is the truth, the caches only spare repeated reads within a second or two.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Optional

import pandas as pd
import streamlit as st
import torch

from kdcore.analysis import entropy_vs_temperature, frontier_points, kl_vs_temperature
from kdcore.losses import ensemble_softened
from kdcore.config import DatasetConfig, RunConfig
from kdcore.configure import load_config
from kdcore.experiments import group_report
from kdcore.models import build_problem
from kdcore.jobs import JobManager
from kdcore.jobs.service import RunService
from kdcore.record import RunFolder, teacher_phases as _teachers_among
from kdcore.store import ACTIVE, DAMAGED_LABEL, FolderOutsideRoot, Run, RunNotFound, Store, StoreError, default_url
from kdcore import text
from ui.workers import start_manager

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "examples" / "digits.yaml"
CURVE_TEMPERATURES = [1.0 + 0.5 * i for i in range(39)]  # 1 to 20, where T is usually chosen


def curve_temperatures(upto: float = 20.0) -> list[float]:
    """1 to 20 in steps of 0.5, then on to `upto` (a stored or chosen T above 20) in steps of 2, so its point is drawn."""
    beyond = [20.0 + 2.0 * i for i in range(1, int((upto - 20.0) // 2.0) + 2)] if upto > 20.0 else []
    return CURVE_TEMPERATURES + beyond


@st.cache_resource(show_spinner=False)
def _store(url: str) -> Store:
    return Store(url)


@st.cache_resource(show_spinner=False)
def _manager(url: str) -> JobManager:
    # One manager per process and store; sessions, tabs and reruns share it, and so does ui/launch.py, which
    # started it before any page when the dashboard runs through it. ui/workers.py stops it with the server.
    return start_manager(_store(url))


def show_store_error(err: StoreError) -> None:
    """The store's one-line reason (not a kdcore store, damaged, read-only) in place of the page; stops the run."""
    st.error(str(err), icon=":material/database:")
    st.stop()


def _shows_store_faults(read):
    # Pages read the store through these accessors, so a StoreError shows as its line wherever a page
    # script runs: under app.py, on its own (Streamlit's pages/ routing on a first visit), or as a fragment.
    @functools.wraps(read)
    def shown(*args, **kwargs):
        try:
            return read(*args, **kwargs)
        except StoreError as err:
            show_store_error(err)
    return shown


class _FaultsShown:
    """The Store or JobManager itself, but a StoreError from any of its methods (a launch or a delete on a
    read-only store, a damaged page) shows as its line instead of a traceback."""

    def __init__(self, target):
        self._target = target

    def __getattr__(self, name):
        value = getattr(self._target, name)
        return _shows_store_faults(value) if callable(value) else value


@_shows_store_faults
def store() -> Store:
    return _FaultsShown(_store(default_url()))


@_shows_store_faults
def manager() -> JobManager:
    return _FaultsShown(_manager(default_url()))


@_shows_store_faults
def service() -> RunService:
    """What a person can do to runs (submit, cancel, resume, delete, rename, tag): pages act through this, never
    through the store's writes. Its refusals (ActionRefused, ConfigError) are the page's to show."""
    return _FaultsShown(RunService(_store(default_url()), wake=_manager(default_url()).wake, here=runs_here()))


def launch(configs) -> bool:
    """Checks and queues runs through the service; a refusal shows as its line in place, and nothing is queued."""
    from kdcore.config import ConfigError

    try:
        service().submit_many(list(configs))
    except ConfigError as err:
        st.error(f"Not queued: {err}", icon=":material/block:")
        return False
    runs_changed()
    return True


@st.cache_resource(show_spinner=False)
def device_line() -> str:
    return f"{manager().describe_workers()} · torch {torch.__version__}"


# Served at app/static/ (server.enableStaticServing in .streamlit/config.toml); written here, not kept in git
STATIC = ROOT / "static"


@st.cache_resource(show_spinner=False)
def plotly_src() -> Optional[str]:
    """The address, relative to the page, that the dashboard serves plotly.js from, for the reports it shows;
    the file is written once into static/. None where it cannot be written: reports then inline plotly.js."""
    import plotly
    from plotly.offline import get_plotlyjs

    path = STATIC / f"plotly-{plotly.__version__}.min.js"
    try:
        if not path.is_file():
            STATIC.mkdir(exist_ok=True)
            partial = path.with_name(f".{path.name}.{os.getpid()}")
            partial.write_text(get_plotlyjs(), encoding="utf-8")
            partial.replace(path)  # whole or absent, should two servers write it at once
    except OSError:
        return None
    return f"app/static/{path.name}"


@st.cache_data(ttl=10, show_spinner=False)
def demo_config() -> RunConfig:
    """The digits demo, as examples/digits.yaml sets it (a CNN teacher, an MLP student that sees 10% of the labels)."""
    return load_config(DEMO_CONFIG)


# ---- runs and metrics ---------------------------------------------------------------------
@st.cache_data(ttl=1.0, show_spinner=False)
def _runs_frame(url: str) -> pd.DataFrame:
    frame = _store(url).runs_table()  # runs_frame's table, each run's JSON parsed once per process
    # gains in points, as every page shows them
    frame["kd_gain_pts"] = frame["kd_gain"] * 100
    frame["kd_gain_interval"] = [text.points_range(lo, hi) if pd.notna(lo) else None
                                 for lo, hi in zip(frame["kd_gain_low"], frame["kd_gain_high"])]
    frame["shares"] = [_shared_from(t, b) for t, b in zip(frame["teacher_from_run"], frame["baseline_from_run"])]
    damaged = frame["damaged"].map(bool)
    frame.loc[damaged, "name"] = frame.loc[damaged, "name"] + " " + DAMAGED_LABEL  # wherever a page lists it
    return frame


def _shared_from(teacher_run, baseline_run) -> Optional[str]:
    parts = []
    if pd.notna(teacher_run):
        parts.append(f"teacher of #{int(teacher_run)}")
    if pd.notna(baseline_run):
        parts.append(f"baseline of #{int(baseline_run)}")
    return ", ".join(parts) or None


@_shows_store_faults
def runs_frame() -> pd.DataFrame:
    """Every stored run, newest first, in one query (cached for a second)."""
    return _runs_frame(default_url())


@st.cache_data(ttl=2.0, show_spinner=False, max_entries=32)
def _metrics(url: str, run_ids: tuple[int, ...], kind: Optional[str]) -> pd.DataFrame:
    return _store(url).metrics_frame(run_ids, kind=kind)


@_shows_store_faults
def metrics(run_ids, kind: Optional[str] = None) -> pd.DataFrame:
    """Metric rows of the given runs only."""
    return _metrics(default_url(), tuple(sorted(int(r) for r in run_ids)), kind)


@st.cache_data(ttl=1.0, show_spinner=False)
def _group_report(url: str, name: str) -> Optional[dict]:
    runs = _store(url).list_runs(group=name)
    return group_report(runs) if runs else None


@_shows_store_faults
def group(name: str) -> Optional[dict]:
    """A group's runs, statuses and mean ± std with intervals over its completed runs."""
    return _group_report(default_url(), name)


@_shows_store_faults
def get_run(run_id: int) -> Optional[Run]:
    try:
        return store().get_run(int(run_id))
    except RunNotFound:
        return None


def runs_changed() -> None:
    """Drops cached queries after this session changed the store."""
    _runs_frame.clear()
    _metrics.clear()
    _group_report.clear()
    _frontier_points.clear()


def is_active(run: Optional[Run]) -> bool:
    return run is not None and run.status in ACTIVE


# ---- artefacts ------------------------------------------------------------------------------
def _stamp(path: Path) -> float:
    return path.stat().st_mtime if path.is_file() else -1.0


@st.cache_resource(show_spinner=False, max_entries=8)
def _test_logits(path: str, mtime: float) -> Optional[dict[str, torch.Tensor]]:
    # cache_resource: large tensors are shared read-only rather than copied per rerun
    if mtime < 0:
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


@_shows_store_faults
def test_logits(run_id: int) -> Optional[dict[str, torch.Tensor]]:
    """{"labels", "teacher", "teacherN"…, "ensemble"?, "student", "baseline"?} test-set tensors of a run, or None."""
    path = _test_logits_path(run_id)
    return _test_logits(str(path), _stamp(path)) if path else None


@_shows_store_faults
def has_test_logits(run_id: int) -> bool:
    path = _test_logits_path(run_id)
    return bool(path and path.is_file())


ENSEMBLE = "ensemble"


def teacher_phases(logits: dict) -> list[str]:
    """The teachers whose test logits a run stored, in order ("teacher", "teacherN", …), then "ensemble" when
    there are several (computed from theirs, not read)."""
    found = _teachers_among(logits)
    return found + ([ENSEMBLE] if len(found) > 1 else [])


def teacher_logits_at(logits: dict, phase: str, temperature: float,
                      weights: Optional[list[float]] = None) -> torch.Tensor:
    """Logits whose softmax at `temperature` is the distribution `phase` passes on.

    A single teacher's are its own. The ensemble's are T · log of the teachers' softened probabilities
    averaged with `weights` (kdcore.losses.ensemble_softened) at this T, as training combines them, so
    every function that softens logits at T (KL, entropy, class similarity) sees exactly that average.
    """
    if phase != ENSEMBLE:
        return logits[phase]
    each = [logits[p] for p in teacher_phases(logits) if p != ENSEMBLE]
    probs = ensemble_softened(each, weights, temperature)
    return temperature * probs.clamp_min(1e-30).log()


@st.cache_data(show_spinner=False, max_entries=8)
def _temperature_curves(path: str, mtime: float, phase: str, weights: Optional[tuple[float, ...]],
                        upto: float = 20.0) -> Optional[pd.DataFrame]:
    logits = _test_logits(path, mtime)
    if logits is None:
        return None
    student = logits["student"]
    temperatures = curve_temperatures(upto)
    kl, ent = [], []
    for t in temperatures:  # the ensemble differs at each T, so it is rebuilt for each
        teacher = teacher_logits_at(logits, phase, t, list(weights) if weights else None)
        kl.append(kl_vs_temperature(teacher, student, [t])[0].item())
        ent.append(entropy_vs_temperature(teacher, [t])[0].item())
    return pd.DataFrame({
        "T": temperatures,
        "KL(teacher || student)": kl,
        "teacher entropy": ent,
        "student entropy": entropy_vs_temperature(student, temperatures).numpy(),
    })


@_shows_store_faults
def temperature_curves(run_id: int, phase: str = "teacher", weights: Optional[list[float]] = None,
                       upto: float = 20.0) -> Optional[pd.DataFrame]:
    """KL(teacher || student) and entropies (nats) over the test set at T = 1 to 20, or on to `upto`; `phase` is
    the teacher ("teacher", "teacherN", … or "ensemble", whose teachers are averaged with `weights`)."""
    path = _test_logits_path(run_id)
    if path is None:
        return None
    return _temperature_curves(str(path), _stamp(path), phase, tuple(weights) if weights else None, upto)


@st.cache_data(ttl=2.0, show_spinner=False, max_entries=16)
def _frontier_points(url: str, dataset: str) -> pd.DataFrame:
    from kdcore.export import read_int8_record

    store = _store(url)
    runs = [r for r in store.list_runs(status=["completed"]) if r.dataset == dataset]
    int8 = {}
    for r in runs:
        try:
            record = read_int8_record(RunFolder(store.run_dir(r.id)))
        except FolderOutsideRoot:  # a folder leading outside the artefact root is not read
            continue
        if record is not None:
            int8[r.id] = record
    return frontier_points(runs, int8)


@_shows_store_faults
def frontier_points_of(dataset: str) -> pd.DataFrame:
    """Teacher, baseline, distilled-student and int8-student points (accuracy, params, FLOPs, MACs, size, latency) of
    every completed run on `dataset` (kdcore.analysis.frontier_points)."""
    return _frontier_points(default_url(), dataset)


@_shows_store_faults
def weights_path(run_id: int, phase: str) -> Optional[Path]:
    folder = _folder(run_id)
    path = folder.weights(phase) if folder else None
    return path if path and path.is_file() else None


@_shows_store_faults
def int8_file(run_id: int, phase: str = "student") -> tuple[Optional[Path], Optional[dict]]:
    """The phase's kept int8 ONNX file and its record (kdcore.export.read_int8_record); (None, None) when none."""
    from kdcore.export import read_int8_record

    folder = _folder(run_id)
    record = read_int8_record(folder, phase) if folder else None
    return (folder.int8(phase), record) if record is not None else (None, None)


def _folder(run_id: int) -> Optional[RunFolder]:
    """The run's folder; None when it leads outside the artefact root."""
    try:
        return RunFolder(store().run_dir(int(run_id)))
    except FolderOutsideRoot:
        return None


def _test_logits_path(run_id: int) -> Optional[Path]:
    folder = _folder(run_id)
    return folder.test_logits if folder else None


@st.cache_data(show_spinner=False, max_entries=4)
def _exported(path: str, mtime: float, fmt: str, dataset_json: str) -> tuple[bytes, dict]:
    import tempfile

    from kdcore.export import DEFAULT_CHECK_IMAGES, SUFFIXES, export_checkpoint

    test = _dataset(dataset_json).test
    images = test.images(range(min(DEFAULT_CHECK_IMAGES, len(test))))
    with tempfile.TemporaryDirectory() as tmp:
        result = export_checkpoint(path, Path(tmp) / f"model{SUFFIXES[fmt]}", fmt, images)
        data = result.path.read_bytes()
    return data, {"max_abs_diff": result.max_abs_diff, "images_checked": result.images_checked,
                  "seconds": result.seconds, "warnings": list(result.warnings), "ok": result.within()}


def exported(path: Path, fmt: str, dataset_cfg: dict) -> tuple[bytes, dict]:
    """A weights file exported as "onnx" or "pt2" and checked on up to 512 of the run's test images.

    Returns:
        The file's bytes, and max_abs_diff, images_checked, seconds, warnings (the exporter's, as
        text) and ok (within kdcore.export.TOLERANCE).
    """
    return _exported(str(path), _stamp(path), fmt, json.dumps(dataset_cfg, sort_keys=True))


# ---- datasets and models --------------------------------------------------------------------
@st.cache_resource(show_spinner="Loading the dataset…", max_entries=2)
def _dataset(dataset_json: str):
    from kdcore.data import load_dataset

    return load_dataset(DatasetConfig.model_validate_json(dataset_json))


def dataset(dataset_cfg: dict):
    """The run's dataset splits (raises kdcore.data.DatasetError when its files are missing)."""
    return _dataset(json.dumps(dataset_cfg, sort_keys=True))


@st.cache_data(show_spinner=False, max_entries=256)
def model_profile(arch: str, num_classes: int, in_channels: int, image_size: int, options_json: str = "{}"):
    """Parameters, size (MB) and FLOPs per image of a registered model."""
    from kdcore.models import model_profile as profile

    return profile(arch, num_classes, in_channels, image_size, **json.loads(options_json))


@st.cache_data(show_spinner=False)
def methods() -> dict[str, dict]:
    """Every registered distillation method's declaration by name (kdcore.distill.describe): title, formula,
    options with their types, bounds, defaults and help, whether it uses T."""
    from kdcore.distill import describe_methods

    return {m["name"]: m for m in describe_methods()}


@st.cache_data(show_spinner=False, max_entries=32)
def _checkpoint_problem(path: str, mtime: float, arch: str, num_classes: Optional[int], in_channels: int,
                        image_size: int, options_json: str, new_head: bool, role: str) -> Optional[str]:
    from kdcore.engine.checkpoint import CheckpointError, load_pretrained, read_checkpoint

    options = json.loads(options_json)
    try:
        if num_classes is None:  # classes not known before loading (imagefolder): take the file's own
            num_classes = read_checkpoint(path).get("num_classes") or 10
        load_pretrained(path, arch=arch, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                        options=options or None, new_head=new_head, role=role)
    except CheckpointError as err:
        return str(err)
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        return f"the {role} cannot be built from it: {build_problem(arch, err)}"
    return None


def checkpoint_problem(path: Path, arch: str, num_classes: Optional[int], in_channels: int, image_size: int,
                       options: dict, *, new_head: bool = False, role: str = "teacher") -> Optional[str]:
    """Why a checkpoint cannot serve as `arch` for this data, in words; None if it can.

    Args:
        new_head: the run gives the model a new classifier when the file's class count differs (a fine-tuned
            teacher, a student started from these weights), so only the rest of the weights must fit.
        role: "teacher" or "student", for the messages.
    """
    return _checkpoint_problem(str(path), _stamp(Path(path)), arch, num_classes, in_channels, image_size,
                               json.dumps(options, sort_keys=True), new_head, role)


@st.cache_data(show_spinner=False, max_entries=32)
def _checkpoint_options(path: str, mtime: float) -> Optional[dict]:
    from kdcore.engine.checkpoint import CheckpointError, read_checkpoint

    try:
        options = read_checkpoint(path).get("options")
    except CheckpointError:
        return None
    return dict(options) if isinstance(options, dict) else None


def checkpoint_options(path: Path) -> Optional[dict]:
    """The model options a kdcore checkpoint was saved with; None for a plain state_dict or an unreadable file."""
    return _checkpoint_options(str(path), _stamp(Path(path)))


def runs_here() -> bool:
    """Whether this dashboard's own worker runs what it queues (not with KDCORE_LOCAL_WORKERS=0)."""
    return os.environ.get("KDCORE_LOCAL_WORKERS", "process") not in ("0", "none")


@st.cache_data(ttl=2.0, show_spinner=False, max_entries=32)
def _runnable_problems(url: str, config_json: str, here: bool) -> list[tuple[str, str]]:
    from kdcore.checks import check_runnable

    return check_runnable(RunConfig.model_validate_json(config_json), store=_store(url), here=here)


def runnable_problems(config: RunConfig) -> list[tuple[str, str]]:
    """kdcore.checks.check_runnable for the form's config: what would refuse it before any work."""
    return _runnable_problems(default_url(), config.model_dump_json(), runs_here())


def class_names(dataset_cfg: dict, num_classes: int) -> list[str]:
    """The dataset's class names, or the class indices when it cannot be loaded here."""
    from kdcore.data import DatasetError

    try:
        names = list(dataset(dataset_cfg).class_names)
    except (DatasetError, OSError, ValueError):
        return [str(i) for i in range(num_classes)]
    return names if len(names) == num_classes else [str(i) for i in range(num_classes)]


def config_table(run_ids) -> pd.DataFrame:
    """Flattened configs side by side: one row per config key, one column per run."""
    from ui.form import flatten

    columns = {}
    for run_id in run_ids:
        run = get_run(run_id)
        if run is not None:
            columns[f"#{run_id}"] = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v)
                                     for k, v in flatten(run.config).items()}
    return pd.DataFrame(columns)


# ---- studies ----------------------------------------------------------------------------------
@st.cache_data(ttl=2.0, show_spinner=False)
def _study_names(url: str) -> list[str]:
    return _store(url).study_names()


@st.cache_data(ttl=2.0, show_spinner=False)
def _study_groups(url: str) -> set[str]:
    return _store(url).study_groups()


@_shows_store_faults
def seed_groups(groups) -> list[str]:
    """The groups to show as seed groups or sweeps: a study's trials (settings that differ) are shown as a study."""
    trials = _study_groups(default_url())
    return [g for g in groups if g not in trials]


@_shows_store_faults
def study_names() -> list[str]:
    """Every study's name, newest first."""
    return _study_names(default_url())


@st.cache_data(ttl=2.0, show_spinner=False, max_entries=16)
def _study(url: str, name: str) -> Optional[dict]:
    from kdcore.store import StudyNotFound
    from kdcore.studies.view import describe_study

    try:
        return describe_study(_store(url), name, importance=True)
    except StudyNotFound:
        return None


@_shows_store_faults
def study(name: str) -> Optional[dict]:
    """A study described (kdcore.studies.view.describe_study, with importance); None when it is gone."""
    return _study(default_url(), name)


def studies_changed() -> None:
    _study_names.clear()
    _study_groups.clear()
    _study.clear()
    runs_changed()


@_shows_store_faults
def start_study(name: str, config: RunConfig, space: dict, **settings) -> str:
    """Stores a new study; the dashboard's worker (or any `kdcore worker`) asks and runs its trials."""
    from kdcore.studies import create_study

    try:
        create_study(_store(default_url()), name, config, space, **settings)
    except StoreError as err:
        show_store_error(err)
    manager().wake()
    studies_changed()
    return name


def study_action(action: str, name: str, **kwargs):
    """confirm, stop, resume or delete a study (kdcore.studies); the store's faults show as their line."""
    import kdcore.studies as studies

    do = {"confirm": studies.confirm, "stop": studies.stop_study, "resume": studies.resume_study,
          "delete": studies.delete_study}[action]
    try:
        return do(_store(default_url()), name, **kwargs)
    except StoreError as err:
        show_store_error(err)
    finally:
        manager().wake()
        studies_changed()


from kdcore.studies.objectives import DEFAULT_OBJECTIVE  # noqa: E402,F401  (names only: no Optuna loaded here)
from kdcore.studies.space import PRUNERS, SAMPLERS  # noqa: E402,F401


@st.cache_data(show_spinner=False)
def objectives() -> dict[str, str]:
    """Objective name -> what it is, for a picker."""
    from kdcore.studies.objectives import OBJECTIVES

    return {name: OBJECTIVES.get(name).label for name in OBJECTIVES.names()}


def study_problem(name: str, confirm_seeds: Optional[str]) -> Optional[str]:
    """Why a study of this name and these confirmation seeds cannot start; None when it can."""
    from kdcore.studies.study import SEARCH_SEED_BASE, StudyError, fresh_seeds

    if not name:
        return "give the study a name"
    if name in _store(default_url()).study_names():  # not the cached list: a name taken a second ago counts
        return f"a study named “{name}” exists already; choose another name"
    if confirm_seeds:
        try:
            fresh_seeds(confirm_seeds, SEARCH_SEED_BASE)
        except (StudyError, ValueError) as err:
            return f"confirmation seeds: {err}"
    return None


def check_space(text_: str, config: RunConfig) -> tuple[Optional[dict], Optional[str]]:
    """A space typed as YAML, checked against the form's config: (the space, None) or (None, why not)."""
    import yaml

    from kdcore.inputs import InputRefused, load_yaml
    from kdcore.studies import SpaceError, parse_space

    try:
        data = load_yaml(text_, "the space") if text_.strip() else None
    except InputRefused as err:
        return None, str(err)
    except yaml.YAMLError as err:
        return None, f"not valid YAML: {str(err).splitlines()[0]}"
    try:
        parse_space(data, config)
    except SpaceError as err:
        return None, str(err)
    return data, None


def study_report(name: str) -> bytes:
    """The study's self-contained HTML report (kdcore report NAME), built when it is downloaded."""
    from kdcore.report import build_report

    return build_report(_store(default_url()), name).encode("utf-8")
