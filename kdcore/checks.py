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


@functools.lru_cache(maxsize=256)
def _estimate(arch: str, num_classes: int, in_channels: int, image_size: int, options: tuple) -> "ModelProfile":
    from kdcore.models import create_model, profile_model

    # The meta device gives every tensor a shape and no storage: a 900M-parameter MLP costs nothing.
    # fork_rng keeps the caller's random stream as it was, whatever the initialisers do.
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = create_model(arch, num_classes, in_channels, image_size, **{k: _thaw(v) for k, v in options})
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
        scan = scan_imagefolder(cfg.root)
    except DatasetError as err:
        return None, [("dataset.root", str(err))]
    shape = DataShape(cfg.name, len(scan.class_names), scan.in_channels, cfg.image_size or DEFAULT_IMAGE_SIZE)
    return shape, _split_problems(scan, cfg)


# ---- the teacher's weights -----------------------------------------------------------------------
def _uploads_root(store) -> Path:
    from kdcore.store import Store, default_artefact_root, default_url

    if isinstance(store, Store):
        return store.artefact_root / "uploads"
    return default_artefact_root(store or default_url()) / "uploads"


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
    path = store.run_dir(run_id) / "teacher.pt"
    if not path.is_file():
        return None, f"run {run_id} has no stored teacher weights ({path} is missing)"
    return path, None


def _teacher_payload(config: RunConfig, store) -> tuple[str, str, Optional[dict], Optional[str]]:
    """(key, name in messages, checkpoint contents or None, problem or None) for a teacher not trained here."""
    from kdcore.engine.checkpoint import CheckpointError, read_checkpoint

    t = config.teacher
    if t.source == "run":
        key, name = "teacher.run_id", f"run {t.run_id}'s teacher"
        path, problem = _stored_teacher(t.run_id, store)
        if problem:
            return key, name, None, problem
    else:
        key, path = "teacher.checkpoint", Path(t.checkpoint).expanduser()
        name = path.name
    try:
        return key, name, read_checkpoint(path), None
    except CheckpointError as err:
        return key, name, None, str(err)


def _fit_problem(name: str, payload: dict, config: RunConfig, data: DataShape) -> Optional[str]:
    t = config.teacher
    if payload.get("arch") not in (None, t.arch):
        return f"{name} holds a {payload['arch']!r} model, but teacher.arch is {t.arch!r}"
    labels = {"in_channels": "channels", "image_size": "image size", "num_classes": "classes"}
    differ = [f"{label} {payload[field]} vs {getattr(data, field)}" for field, label in labels.items()
              if payload.get(field) is not None and getattr(data, field) is not None
              and int(payload[field]) != int(getattr(data, field))]
    if differ:
        had = DataShape("", payload.get("num_classes"), int(payload.get("in_channels") or data.in_channels),
                        int(payload.get("image_size") or data.image_size))
        return (f"{name} was trained on {had.describe()}, but {data.name} has {data.describe()} "
                f"({'; '.join(differ)})")
    return None


def _shape_problem(name: str, payload: dict, config: RunConfig, data: DataShape, options: dict) -> Optional[str]:
    """Whether the file's tensors fit the teacher the run will build, compared on the meta device."""
    from kdcore.engine.checkpoint import state_dict_misfit
    from kdcore.models import create_model

    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            own = create_model(config.teacher.arch, data.num_classes, data.in_channels, data.image_size,
                               **options).state_dict()
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        return f"the teacher cannot be built from it: {err}"
    misfit = state_dict_misfit(own, payload["state_dict"])
    if misfit:
        return f"{name} does not fit a {config.teacher.arch!r} teacher with options {options}: {misfit}"
    return None


# ---- everything -----------------------------------------------------------------------------------
def check_runnable(config: RunConfig, *, store: "Store | str | None" = None, here: bool = True,
                   extra_roots: Iterable[Path | str] = ()) -> list[Problem]:
    """What would make this run fail or misbehave before it does any work; [] when none.

    Args:
        config: a validated run config.
        store: the Store (or its URL; default $KDCORE_DB_URL) that holds teacher.run_id's run, and whose
            uploads folder counts as a data root. Never created by this check.
        here: the run trains on this machine, so its device and memory are checked against this one
            (False for `kdcore submit`, whose runs any worker may take).
        extra_roots: folders besides $KDCORE_DATA_ROOT an image folder may lie in.

    Returns:
        (config key, message) pairs; each message names what is wrong.
    """
    problems: list[Problem] = []
    if here:
        device = device_problem(config.train.device)
        if device:
            problems.append(("train.device", device))
    data, data_problems = _data_shape(config, [*extra_roots, _uploads_root(store)])
    problems += data_problems
    if data is None:
        return problems
    t = config.teacher
    t_options = dict(t.options)
    payload = None
    if t.source != "train":
        file_key, name, payload, problem = _teacher_payload(config, store)
        problem = problem or _fit_problem(name, payload, config, data)
        if problem:
            return problems + [(file_key, problem)]
        t_options = t_options or dict(payload.get("options") or {})  # as the run builds it
    sized = {}
    for role, arch, options in (("teacher", t.arch, t_options), ("student", config.student.arch,
                                                                  dict(config.student.options))):
        key = f"{role}.options" if options else f"{role}.arch"
        try:
            profile = estimate_profile(arch, data.num_classes or 10, data.in_channels, data.image_size, options)
        except (TypeError, ValueError, KeyError, RuntimeError) as err:
            problems.append((f"{role}.options", f"{arch} cannot be built for {data.describe()}: {err}"))
            continue
        refusal = too_large(profile)
        if refusal:
            problems.append((key, f"{arch} would have {refusal}"))
        sized[role] = (key, profile)
    if payload is not None and data.num_classes and "teacher" in sized and not any(k.startswith("teacher") for k, _ in problems):
        problem = _shape_problem(name, payload, config, data, t_options)
        if problem:
            problems.append((file_key, problem))
    if here and len(sized) == 2 and not problems:
        problems += _memory_problems(config, sized)
    return problems


def _memory_problems(config: RunConfig, sized: dict) -> list[Problem]:
    limit, what = memory_limit()
    if limit is None:
        return []
    opt, momentum = config.train.optimizer, config.train.momentum
    t_key, teacher = sized["teacher"]
    s_key, student = sized["student"]
    t_weights = int(teacher.size_mb * 2**20)
    # the teacher trains alone, then stays in memory (weights only) while the student and its baseline train
    peaks = {t_key: _train_bytes(teacher, opt, momentum) if config.teacher.source == "train" else t_weights,
             s_key: t_weights + _train_bytes(student, opt, momentum)}
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
