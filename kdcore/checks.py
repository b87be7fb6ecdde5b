"""Refusing a run before any work: what a valid config can still get wrong against this machine's files,
devices and memory, found without training, without building a model for real and without writing anything.

`check_runnable(config)` gives `[(config key, message)]`; `kdcore train` and `kdcore submit` call it before a
run is stored, the New experiment form marks each key's field with it, and `kdcore worker` uses
`device_problem` on its --devices. docs/reliability.md lists each case with its test.
"""
from __future__ import annotations

import functools
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

import torch

from kdcore.config import ConfigError, RunConfig
from kdcore.record.folder import UPLOADS, RunFolder
from kdcore.record.phases import TEACHER

if TYPE_CHECKING:
    from kdcore.models import ModelProfile
    from kdcore.store import Store

DEFAULT_MAX_PARAMS = 100_000_000  # per model; a 12000-12000 MLP (145M) is refused, every zoo CNN at <= 64 px fits
DEFAULT_MAX_UNZIPPED_MB = 500
DEFAULT_MAX_ZIP_FILES = 20_000
_FLOAT_BYTES = 4  # weights, gradients and optimizer states are float32 (bf16 autocast keeps fp32 weights)

Problem = tuple[str, str]


# ---- limits ------------------------------------------------------------------------------------
def _env_number(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"${name} must be a number, got {text!r}") from None


def max_params() -> int:
    """Parameters above which a model is refused: $KDCORE_MAX_PARAMS, default 100 million."""
    return int(_env_number("KDCORE_MAX_PARAMS", DEFAULT_MAX_PARAMS))


def memory_limit() -> tuple[Optional[int], str]:
    """(bytes a run may need to train, what that is): $KDCORE_MAX_MEMORY_GB, else this machine's RAM."""
    if os.environ.get("KDCORE_MAX_MEMORY_GB", "").strip():
        gb = _env_number("KDCORE_MAX_MEMORY_GB", 0)
        return int(gb * 2**30), f"the limit of {gb:g} GiB (KDCORE_MAX_MEMORY_GB)"
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX: no limit known
        return None, ""
    return total, f"this machine's {total / 2**30:.1f} GiB of RAM (KDCORE_MAX_MEMORY_GB overrides)"


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MB"


# ---- devices -----------------------------------------------------------------------------------
def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def available_devices() -> list[str]:
    """The devices PyTorch can train on here: cpu, then cuda:0..n-1, then mps."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    return names


def device_problem(name: str) -> Optional[str]:
    """Why device `name` (auto, cpu, cuda, cuda:1, mps) cannot train here, naming what is available; else None."""
    name = name.strip()
    if name == "auto":
        return None
    available = f"available here: {', '.join(['auto', *available_devices()])}"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        return f"{name!r} is not a device name; {available}"
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return f"{name!r} does not exist on this machine: no CUDA GPU is visible to PyTorch; {available}"
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            return f"{name!r} does not exist on this machine: PyTorch sees {count} CUDA GPU(s); {available}"
        return None
    if device.type == "mps":
        return None if _mps_available() else (
            f"{name!r} does not exist on this machine: Apple's MPS backend is not available; {available}")
    return f"{name!r} is not a device kdcore trains on (cpu, cuda, mps); {available}"


# ---- model sizes -------------------------------------------------------------------------------
def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


def _thaw(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


_REAL_BUILD_PARAMS = 16_000_000  # 64 MB of float32 weights


@functools.lru_cache(maxsize=256)
def _estimate(arch: str, num_classes: int, in_channels: int, image_size: int, options: tuple) -> "ModelProfile":
    from kdcore.models import create_model, profile_model
    from kdcore.models.profile import counted_by_layer_hooks

    # The meta device gives every tensor a shape and no storage: a 900M-parameter MLP costs nothing.
    # fork_rng keeps the caller's random stream as it was, whatever the initialisers do.
    kwargs = {k: _thaw(v) for k, v in options}
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = create_model(arch, num_classes, in_channels, image_size, **kwargs)
    if counted_by_layer_hooks(model) and sum(p.numel() for p in model.parameters()) <= _REAL_BUILD_PARAMS:
        # A forward on meta tensors runs Python meta kernels whose first use imports about a second of
        # torch._dynamo and sympy; a small model of known layers is cheaper to build for real.
        with torch.random.fork_rng(devices=[]), torch.device("cpu"):
            model = create_model(arch, num_classes, in_channels, image_size, **kwargs)
    return profile_model(model, in_channels, image_size)


def estimate_profile(arch: str, num_classes: int, in_channels: int, image_size: int,
                     options: Optional[dict] = None) -> "ModelProfile":
    """Parameters, MB and FLOPs of a registered model, counted on the meta device (nothing allocated).

    Raises what create_model raises for a bad option (TypeError, ValueError, KeyError).
    """
    return _estimate(arch, int(num_classes), int(in_channels), int(image_size), _freeze(dict(options or {})))


def too_large(profile: "ModelProfile", limit: Optional[int] = None) -> Optional[str]:
    """Why a model of this estimated size is refused, or None when it is within $KDCORE_MAX_PARAMS."""
    limit = max_params() if limit is None else limit
    if profile.params <= limit:
        return None
    return (f"about {profile.params / 1e6:,.1f} million parameters ({_gib(profile.size_mb * 2**20)} of weights, "
            f"estimated without building it), over the limit of {limit / 1e6:,.4g} million (KDCORE_MAX_PARAMS); "
            "choose smaller options or raise the limit")


def _train_bytes(profile: "ModelProfile", optimizer: str, momentum: float) -> int:
    states = 2 if optimizer in ("adam", "adamw") else (1 if momentum > 0 else 0)
    return int(profile.size_mb * 2**20) + profile.params * _FLOAT_BYTES * (1 + states)  # + gradients and states


# ---- data ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataShape:
    """What the models must fit: classes (None when unknown), channels, image side."""

    name: str
    num_classes: Optional[int]
    in_channels: int
    image_size: int

    def describe(self) -> str:
        classes = f"{self.num_classes} classes" if self.num_classes else "its classes"
        return f"{self.in_channels}×{self.image_size}×{self.image_size} images of {classes}"


def root_problem(root: str, extra_roots: Iterable[Path | str] = ()) -> Optional[str]:
    """Why an image folder may not be read: it lies outside every data root (symlinks resolved); else None."""
    from kdcore.data import data_roots

    path = Path(root).expanduser().resolve()
    roots = [*data_roots(), *(Path(r).expanduser().resolve() for r in extra_roots)]
    if any(path == r or r in path.parents for r in roots):
        return None
    listed = ", ".join(str(r) for r in data_roots())
    return (f"{path} is outside the data roots ({listed}); put the images under one of them, or add its folder "
            f"to KDCORE_DATA_ROOT (several joined by {os.pathsep!r})")


def _missing_classes(y: torch.Tensor, names: list[str]) -> list[str]:
    present = set(torch.as_tensor(y, dtype=torch.long).tolist())
    return [n for i, n in enumerate(names) if i not in present]


def _split_problems(scan, cfg) -> list[Problem]:
    """Classes a split would lack, carved exactly as load_imagefolder and the run carve them."""
    from kdcore.data.imagefolder import TEST_FRACTION
    from kdcore.data.splitting import SPLIT_SEED, stratified_split

    names = scan.class_names
    if len(names) < 2:
        return [("dataset.root", f"{scan.root} holds one class ({names[0]!r}); a classifier needs at least two "
                                 "class sub-folders")]
    y = torch.tensor(scan.train_targets, dtype=torch.long)
    counts = torch.bincount(y, minlength=len(names)).tolist()
    problems: list[Problem] = []

    def lacking(split: str, key: str, y_split: torch.Tensor, how: str) -> None:
        missing = _missing_classes(y_split, names)
        if missing:
            listed = ", ".join(f"{n!r} ({counts[names.index(n)]} images)" for n in missing)
            problems.append((key, f"class {listed} would have no images in the {split} split ({how}); add images "
                                  "to it or remove its folder"))

    if scan.test_targets is None:
        train_idx, test_idx = stratified_split(y, TEST_FRACTION, SPLIT_SEED)
        lacking("test", "dataset.root", y[test_idx], f"{TEST_FRACTION:.0%} of each class")
    else:
        train_idx = torch.arange(len(y))
        missing = _missing_classes(torch.tensor(scan.test_targets, dtype=torch.long), names)
        if missing:
            problems.append(("dataset.root", f"class {', '.join(map(repr, missing))} has no images under "
                                             f"{scan.root / 'test'}"))
    y_train = y[train_idx]
    keep, val = stratified_split(y_train, cfg.val_fraction, SPLIT_SEED)
    lacking("training", "dataset.root", y_train[keep], "what the test split leaves")
    if cfg.val_fraction > 0:
        lacking("validation", "dataset.val_fraction", y_train[val], f"{cfg.val_fraction:.0%} of training")
    if cfg.student_fraction < 1:
        _, chosen = stratified_split(y_train[keep], cfg.student_fraction, SPLIT_SEED)
        lacking("student's", "dataset.student_fraction", y_train[keep][chosen],
                f"{cfg.student_fraction:.0%} of training")
    return problems


def _data_shape(config: RunConfig, extra_roots: Iterable[Path | str]) -> tuple[Optional[DataShape], list[Problem]]:
    from kdcore.data import DatasetError, dataset_info
    from kdcore.data.imagefolder import DEFAULT_IMAGE_SIZE, EXPECTED, scan_imagefolder

    cfg = config.dataset
    info = dataset_info(cfg.name)
    if cfg.name != "imagefolder":
        return DataShape(cfg.name, info.num_classes, info.in_channels, info.image_size or cfg.image_size or 64), []
    if not cfg.root:
        return None, [("dataset.root", f"set dataset.root to a folder of {EXPECTED}")]
    outside = root_problem(cfg.root, extra_roots)
    if outside:
        return None, [("dataset.root", outside)]  # and never walk it
    try:
        scan = scan_imagefolder(cfg.root, extra_roots)  # also refuses links leading out of the data roots
    except DatasetError as err:
        return None, [("dataset.root", str(err))]
    shape = DataShape(cfg.name, len(scan.class_names), scan.in_channels, cfg.image_size or DEFAULT_IMAGE_SIZE)
    return shape, _split_problems(scan, cfg)


# ---- the teachers' and the student's starting weights ------------------------------------------------
def _uploads_root(store) -> Path:
    from kdcore.store import Store, default_artefact_root, default_url

    if isinstance(store, Store):
        return store.artefact_root / UPLOADS
    return default_artefact_root(store or default_url()) / UPLOADS


def _stored_teacher(run_id: int, store) -> tuple[Optional[Path], Optional[str]]:
    from kdcore.store import RunNotFound, Store, default_url

    if not isinstance(store, Store):
        url = store or default_url()
        sqlite = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
        if sqlite and not Path(sqlite).is_file():  # opening it would create an empty store
            return None, f"no run {run_id}: the store {url} does not exist"
        store = Store(url)
    try:
        store.get_run(run_id)
    except RunNotFound:
        return None, f"no run {run_id} in the store"
    path = RunFolder(store.run_dir(run_id)).weights(TEACHER)  # a run's first teacher
    if not path.is_file():
        return None, f"run {run_id} has no stored teacher weights ({path} is missing)"
    return path, None


@dataclass
class _Start:
    """A model that starts from stored weights, as the checks see it."""

    role: str  # "teacher" or "student", for the messages
    prefix: str  # its config section: teacher, teachers.1, student
    arch: str
    options: dict
    new_head: bool  # a file for another class count is accepted: the model gets a new classifier
    key: str = ""  # the config key that names the weights
    name: str = ""  # the weights in messages
    payload: Optional[dict] = None


def _teacher_start(t, prefix: str, store) -> tuple[_Start, Optional[str]]:
    """A teacher not trained here, with its file's contents, or the problem reading them."""
    from kdcore.engine.checkpoint import CheckpointError, read_checkpoint

    start = _Start("teacher", prefix, t.arch, dict(t.options), new_head=t.finetune_epochs > 0)
    if t.source == "run":
        start.key, start.name = f"{prefix}.run_id", f"run {t.run_id}'s teacher"
        path, problem = _stored_teacher(t.run_id, store)
        if problem:
            return start, problem
    else:
        start.key, path = f"{prefix}.checkpoint", Path(t.checkpoint).expanduser()
        start.name = path.name
    try:
        start.payload = read_checkpoint(path)
    except CheckpointError as err:
        return start, str(err)
    start.options = start.options or dict(start.payload.get("options") or {})  # as the run builds it
    return start, None


def _student_start(config: RunConfig) -> tuple[Optional[_Start], Optional[str]]:
    from kdcore.engine.checkpoint import CheckpointError, read_checkpoint

    s = config.student
    if not s.checkpoint:
        return None, None
    path = Path(s.checkpoint).expanduser()
    # the student is built from its own options; a file for other classes gives it a new classifier
    start = _Start("student", "student", s.arch, dict(s.options), new_head=True, key="student.checkpoint",
                   name=path.name)
    try:
        start.payload = read_checkpoint(path)
    except CheckpointError as err:
        return start, str(err)
    return start, None


def _fit_problem(start: _Start, data: DataShape) -> Optional[str]:
    payload, name = start.payload, start.name
    if payload.get("arch") not in (None, start.arch):
        return f"{name} holds a {payload['arch']!r} model, but {start.prefix}.arch is {start.arch!r}"
    labels = {"in_channels": "channels", "image_size": "image size", "num_classes": "classes"}
    differ = {field: f"{label} {payload[field]} vs {getattr(data, field)}" for field, label in labels.items()
              if payload.get(field) is not None and getattr(data, field) is not None
              and int(payload[field]) != int(getattr(data, field))}
    if start.new_head:
        differ.pop("num_classes", None)  # its classifier is replaced
    if differ:
        had = DataShape("", payload.get("num_classes"), int(payload.get("in_channels") or data.in_channels),
                        int(payload.get("image_size") or data.image_size))
        hint = (f"; set {start.prefix}.finetune_epochs to fine-tune it with a new classification head"
                if list(differ) == ["num_classes"] and start.role == "teacher" else "")
        return (f"{name} was trained on {had.describe()}, but {data.name} has {data.describe()} "
                f"({'; '.join(differ.values())}){hint}")
    return None


def _shape_problem(start: _Start, data: DataShape) -> Optional[str]:
    """Whether the file's tensors fit the model the run will build, compared on the meta device."""
    from kdcore.engine.checkpoint import CheckpointError, weights_fit
    from kdcore.models import build_problem, create_model

    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            model = create_model(start.arch, data.num_classes, data.in_channels, data.image_size, **start.options)
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        return f"the {start.role} cannot be built from it: {build_problem(start.arch, err)}"
    try:
        misfit, _ = weights_fit(model, start.payload["state_dict"], data.num_classes, new_head=start.new_head)
    except CheckpointError as err:
        return str(err)
    if misfit:
        return f"{start.name} does not fit a {start.arch!r} {start.role} with options {start.options}: {misfit}"
    return None


def _last_stage_problem(arch: str, options: dict, data: DataShape) -> Optional[str]:
    """Whether the last stage of `arch` is known, so that fine-tuning can train it alone."""
    from kdcore.models import create_model
    from kdcore.models.stages import feature_stages

    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            model = create_model(arch, data.num_classes or 10, data.in_channels, data.image_size, **options)
            feature_stages(model, torch.zeros(2, data.in_channels, data.image_size, data.image_size))
    except ValueError as err:
        return f"{err}: {arch}'s last stage is not known, so it cannot be fine-tuned alone"
    except (TypeError, KeyError, RuntimeError):
        return None  # a bad option, reported with the model's size
    return None


def _teacher_prefix(config: RunConfig, index: int) -> str:
    return f"teachers.{index}" if config.teachers else "teacher"


# ---- everything -----------------------------------------------------------------------------------
def check_runnable(config: RunConfig, *, store: "Store | str | None" = None, here: bool = True,
                   extra_roots: Iterable[Path | str] = ()) -> list[Problem]:
    """What would make this run fail or misbehave before it does any work; [] when none.

    Every teacher is checked (its weights' source and fit, fine-tuning settings, size), then the
    student (its starting checkpoint and size), then the memory the run needs here.

    Args:
        config: a validated run config.
        store: the Store (or its URL; default $KDCORE_DB_URL) that holds the runs teachers come from
            (teacher.run_id), and whose uploads folder counts as a data root. Never created by this check.
        here: the run trains on this machine, so its device and memory are checked against this one
            (False for `kdcore submit`, whose runs any worker may take).
        extra_roots: folders besides $KDCORE_DATA_ROOT an image folder may lie in.

    Returns:
        (config key, message) pairs; each message names what is wrong. A teacher's keys are
        teacher.* for a run of one, teachers.N.* when the config lists `teachers`.
    """
    from kdcore.distill import METHODS

    method = METHODS.get(config.distill.method)
    problems: list[Problem] = list(method.config_problems(method.Options.model_validate(config.distill.options), config))
    problems += _logits_only_problems(config, method)
    if here:
        device = device_problem(config.train.device)
        if device:
            problems.append(("train.device", device))
    data, data_problems = _data_shape(config, [*extra_roots, _uploads_root(store)])
    problems += data_problems
    if data is None:
        return problems
    sized: list[tuple[str, str, "ModelProfile"]] = []  # (role, key, profile) of each model that can be built
    refused = len(problems)
    for index in range(len(config.all_teachers)):
        entry = _checked_teacher(config, index, data, store, problems)
        if entry is not None:
            sized.append(entry)
    s_start, problem = _student_start(config)
    problem = problem or (_fit_problem(s_start, data) if s_start else None)
    s_options = dict(config.student.options)
    profile = None if problem else _sized(problems, "student", config.student.arch, s_options, data)
    if profile is not None and _pretrained_refused(problems, "student", config.student, data):
        profile = None
    if profile is not None and s_start is not None and data.num_classes:
        problem = _shape_problem(s_start, data)
    if problem:
        problems.append(("student.checkpoint", problem))
    elif profile is not None:
        sized.append(("student", "student.options" if s_options else "student.arch", profile))
    if here and len(problems) == refused and len(sized) == len(config.all_teachers) + 1:
        problems += _memory_problems(config, sized)
    return problems


def _checked_teacher(config: RunConfig, index: int, data, store, problems: list[Problem]):
    """Appends the index-th teacher's problems; its (role, key, profile) when it can be built, else None."""
    t = config.all_teachers[index]
    prefix = _teacher_prefix(config, index)
    if t.source == "train" and (t.finetune_epochs > 0 or t.finetune_last_stage_only):
        key = f"{prefix}.finetune_epochs" if t.finetune_epochs > 0 else f"{prefix}.finetune_last_stage_only"
        problems.append((key, f"only a teacher loaded from a run or a checkpoint ({prefix}.source run or "
                              f"checkpoint) is fine-tuned; one trained here trains for {prefix}.epochs"))
        return None
    if t.finetune_last_stage_only and t.finetune_epochs == 0:
        problems.append((f"{prefix}.finetune_last_stage_only",
                         f"set {prefix}.finetune_epochs too: without it the teacher is not fine-tuned"))
        return None
    if t.source == "exported":
        return _exported_teacher(t, prefix, data, problems)
    start = None
    if t.source != "train":
        start, problem = _teacher_start(t, prefix, store)
        problem = problem or _fit_problem(start, data)
        if problem:
            problems.append((start.key, problem))
            return None
    options = start.options if start else dict(t.options)
    profile = _sized(problems, prefix, t.arch, options, data)
    if profile is None or _pretrained_refused(problems, prefix, t, data):
        return None
    if start is not None and data.num_classes:
        problem = _shape_problem(start, data)
        if problem:
            problems.append((start.key, problem))
            return None
    if t.finetune_last_stage_only:
        problem = _last_stage_problem(t.arch, options, data)
        if problem:
            problems.append((f"{prefix}.finetune_last_stage_only", problem))
            return None
    trains_here = t.source == "train" or t.finetune_epochs > 0
    return ("teacher" if trains_here else "loaded", f"{prefix}.options" if options else f"{prefix}.arch", profile)


def _logits_only_problems(config: RunConfig, method) -> list[Problem]:
    """An exported teacher gives logits alone: a method that reads the teacher's features cannot use it."""
    from kdcore.distill import METHODS

    exported = [_teacher_prefix(config, i) for i, t in enumerate(config.all_teachers) if t.source == "exported"]
    if not exported or method.cacheable:
        return []
    logit_methods = ", ".join(name for name in METHODS.names() if METHODS.get(name).cacheable)
    return [("distill.method", f"{config.distill.method} reads the teacher's features, but an exported teacher "
                               f"({exported[0]}.source exported) gives only its logits; choose a method that reads "
                               f"logits alone: {logit_methods}")]


def _exported_teacher(t, prefix: str, data: DataShape, problems: list[Problem]):
    """Reads an exported teacher's file and runs it on one zero batch of the dataset's shape: its (role, key,
    profile) when it fits, else None after adding why not."""
    from kdcore.engine.checkpoint import CheckpointError
    from kdcore.engine.exported import fit_problem, read_exported
    from kdcore.models import ModelProfile

    key, path = f"{prefix}.checkpoint", Path(t.checkpoint).expanduser()
    try:
        model = read_exported(path)
    except CheckpointError as err:
        problems.append((key, str(err)))
        return None
    problem = fit_problem(model, path.name, num_classes=data.num_classes, in_channels=data.in_channels,
                          image_size=data.image_size, dataset=data.name)
    if problem:
        problems.append((key, problem))
        return None
    return "loaded", key, ModelProfile(params=model.file_params, size_mb=path.stat().st_size / 2**20, flops=0, macs=0)


def _pretrained_refused(problems: list[Problem], prefix: str, entry, data: DataShape) -> bool:
    """Whether a timm model's pretrained file does not fit the model the run will build (compared on meta)."""
    if not isinstance(entry.pretrained, str) or not data.num_classes:
        return False
    from kdcore.models import create_model
    from kdcore.models.timm_models import PretrainedMismatch, check_pretrained_file

    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            model = create_model(entry.arch, data.num_classes, data.in_channels, data.image_size, **entry.options)
        check_pretrained_file(model, entry.pretrained, entry.arch)
    except PretrainedMismatch as err:
        problems.append((f"{prefix}.pretrained", str(err)))
        return True
    return False


def _sized(problems: list[Problem], prefix: str, arch: str, options: dict, data: DataShape) -> Optional["ModelProfile"]:
    """The model's estimated size, or None after adding why it cannot be built or is too large."""
    try:
        profile = estimate_profile(arch, data.num_classes or 10, data.in_channels, data.image_size, options)
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        from kdcore.models import build_problem

        problem = build_problem(arch, err)  # an option the model does not take, in words
        problems.append((f"{prefix}.options", problem if problem.startswith(f"{arch} takes no option") else
                         f"{arch} cannot be built for {data.describe()}: {problem}"))
        return None
    refusal = too_large(profile)
    if refusal:
        problems.append((f"{prefix}.options" if options else f"{prefix}.arch", f"{arch} would have {refusal}"))
        return None
    return profile


def _memory_problems(config: RunConfig, sized: list[tuple[str, str, "ModelProfile"]]) -> list[Problem]:
    limit, what = memory_limit()
    if limit is None:
        return []
    opt, momentum = config.train.optimizer, config.train.momentum
    # the teachers train (or fine-tune) one after another, each finished one staying in memory (weights only);
    # then all of them stay while the student and its baseline train
    peaks: dict[str, int] = {}
    held = 0
    for role, key, profile in sized:
        trains = role in ("teacher", "student")
        need = held + (_train_bytes(profile, opt, momentum) if trains else int(profile.size_mb * 2**20))
        peaks[key] = max(peaks.get(key, 0), need)
        held += int(profile.size_mb * 2**20)
    key, need = max(peaks.items(), key=lambda kv: kv[1])
    if need <= limit:
        return []
    return [(key, f"training needs about {_gib(need)} (weights, gradients and {opt} state, estimated without "
                  f"building the models), more than {what}")]


def refuse_unrunnable(configs: list[RunConfig], **kwargs) -> None:
    """Raises ConfigError naming every problem check_runnable finds in the first config.

    The configs of a seed group differ only in their seeds, which no check depends on.
    """
    problems = check_runnable(configs[0], **kwargs) if configs else []
    if problems:
        raise ConfigError("; ".join(f"{key}: {message}" for key, message in problems))


# ---- archives ----------------------------------------------------------------------------------------
def archive_problem(archive: zipfile.ZipFile, filename: str) -> Optional[str]:
    """Why a zip must not be extracted, from its directory alone: too many files or too many bytes once expanded.

    zipfile stops each member at its declared size (and fails its CRC past it), so the directory's sizes bound
    what extraction writes. Limits: $KDCORE_MAX_UNZIPPED_MB (500) and $KDCORE_MAX_ZIP_FILES (20,000).
    """
    infos = [i for i in archive.infolist() if not i.is_dir()]
    max_files = int(_env_number("KDCORE_MAX_ZIP_FILES", DEFAULT_MAX_ZIP_FILES))
    max_mb = _env_number("KDCORE_MAX_UNZIPPED_MB", DEFAULT_MAX_UNZIPPED_MB)
    if len(infos) > max_files:
        return (f"{filename} holds {len(infos):,} files, more than the limit of {max_files:,} "
                "(KDCORE_MAX_ZIP_FILES); nothing was extracted")
    total = sum(i.file_size for i in infos)
    if total > max_mb * 2**20:
        return (f"{filename} expands to {total / 2**20:,.1f} MB, more than the limit of {max_mb:,g} MB "
                "(KDCORE_MAX_UNZIPPED_MB); nothing was extracted")
    return None
