"""A search space over dotted config keys, checked whole before any trial runs.

A space file maps each key to a range or a list of choices:

    distill.method: {choices: [soft, dist]}
    distill.temperature: {low: 1.0, high: 8.0, log: true}
    distill.alpha: {low: 0.3, high: 0.95}
    train.epochs: {low: 5, high: 20}                 # both bounds whole numbers: an int range
    distill.options.nckd_weight: {low: 1, high: 10}  # a method's own option: set only when that method is picked

A method's option is written `distill.options.NAME`, or `distill.options.METHOD.NAME` where two
methods the study can pick declare the same name. Every refusal names the key.
"""
from __future__ import annotations

import itertools
import math
import random
from dataclasses import asdict, dataclass
from typing import Any, Optional

from pydantic import BaseModel

from kdcore.config import TEACHER_TRAIN_KEYS, ConfigError, RunConfig

SAMPLERS = ("tpe", "random", "grid")  # how the space is searched: Optuna's TPE, random draws, or every grid point
PRUNERS = ("median", "hyperband", "none")  # how lagging trials are stopped early
SPEC_KEYS = {"low", "high", "log", "step", "choices"}
MAX_GRID = 10_000
# keys a search may not vary, and why
FIXED = {
    "name": "a run's name is not a setting", "tags": "tags are not a setting", "group": "the study sets it",
    "teachers": "several teachers cannot be searched over; fix them in the config",
    "train.seed": "a study picks settings; seeds are for the confirmation (--confirm-seeds)",
    "teacher.seed": "a study picks settings; seeds are for the confirmation (--confirm-seeds)",
    "dataset.name": "one study searches one dataset; start a study per dataset",
    "dataset.root": "the data's folder is not a setting", "dataset.download": "not a setting",
    "dataset.val_fraction": "the objective is read on the validation split, which must be the same for every trial",
    "train.device": "where a trial runs is the worker's choice",
    "baseline": "the study decides whether trials need their baseline, from its objective",
}
FREE_OPTIONS = ("teacher.options.", "student.options.")  # model arguments: checked by building the trial's config


class SpaceError(ConfigError):
    """A search space that cannot be searched; the message names the key."""


@dataclass(frozen=True)
class Dimension:
    """One key of the space."""

    key: str  # as written in the space file; also the parameter's name in the study
    target: str  # the config key a trial sets
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: Optional[tuple] = None
    methods: Optional[tuple[str, ...]] = None  # a method's option: set only in trials of these methods

    @property
    def kind(self) -> str:
        if self.choices is not None:
            return "categorical"
        whole = isinstance(self.low, int) and isinstance(self.high, int) and (self.step is None or isinstance(self.step, int))
        return "int" if whole else "float"

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def edges(self) -> list:
        """The values that must each make a valid config: the bounds, or every choice."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]

    def grid(self) -> list:
        if self.choices is not None:
            return list(self.choices)
        if self.kind == "int":
            return list(range(self.low, self.high + 1, self.step or 1))
        if self.step is None:
            raise SpaceError(f"{self.key}: a grid needs choices or a step for a float range; add step: or use "
                             "--sampler tpe or random")
        count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return [round(self.low + i * self.step, 12) for i in range(count)]

    def describe(self) -> str:
        return describe_spec(asdict(self))


@dataclass(frozen=True)
class SearchSpace:
    dims: tuple[Dimension, ...]  # distill.method first: options depend on it

    def sample(self, trial, base_method: str) -> dict[str, Any]:
        """Define-by-run: one value per key, a method's options only when that method is picked."""
        params: dict[str, Any] = {}
        for dim in self.dims:
            method = params.get("distill.method", base_method)
            if dim.methods is None or method in dim.methods:
                params[dim.key] = dim.suggest(trial)
        return params

    def grid_points(self, base_method: str) -> list[dict[str, Any]]:
        """Every combination of the grid, options only with their methods, in a fixed order."""
        plain = [d for d in self.dims if d.methods is None]
        points = []
        for values in itertools.product(*(d.grid() for d in plain)):
            point = dict(zip((d.key for d in plain), values))
            method = point.get("distill.method", base_method)
            conditional = [d for d in self.dims if d.methods is not None and method in d.methods]
            for more in itertools.product(*(d.grid() for d in conditional)):
                points.append({**point, **dict(zip((d.key for d in conditional), more))})
                if len(points) > MAX_GRID:
                    raise SpaceError(f"the grid has more than {MAX_GRID:,} points; narrow it or use --sampler tpe")
        return points

    def varies(self, prefix: str) -> bool:
        return any(d.target == prefix or d.target.startswith(prefix + ".") for d in self.dims)

    def to_json(self) -> dict:
        """The space as a space file writes it (the study stores this)."""
        out = {}
        for d in self.dims:
            spec = {k: v for k, v in asdict(d).items() if k in SPEC_KEYS and v is not None and v is not False}
            if d.choices is not None:
                spec["choices"] = list(d.choices)
            out[d.key] = spec
        return out


def describe_spec(spec: dict) -> str:
    """A key's range in words, as a space file gives it: '1 to 8 (log scale)', 'soft, dist'."""
    if spec.get("choices") is not None:
        return ", ".join(map(str, spec["choices"]))
    text = f"{spec['low']:g} to {spec['high']:g}" + (f" in steps of {spec['step']:g}" if spec.get("step") else "")
    return text + (" (log scale)" if spec.get("log") else "")


def _set(data: dict, dotted: str, value: Any) -> None:
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def apply(base: RunConfig, space: SearchSpace, params: dict[str, Any]) -> dict:
    """The config (as a dict) of a trial that sets `params` on `base`.

    A trial of another method than the base config's starts from that method's default options. Unless the
    space varies the teacher, each teacher keeps training as in `base` (its train.* and augmentation pinned),
    so every trial shares one teacher.
    """
    data = base.model_dump(mode="json")
    method = params.get("distill.method", base.distill.method)
    if method != base.distill.method:
        data["distill"]["options"] = {}
    if space.varies("teacher.augment") and data["teacher"].get("augment") is None:
        data["teacher"]["augment"] = base.teacher_augment(0).model_dump(mode="json")  # its own, from what it had
    for dim in space.dims:
        if dim.key in params:
            _set(data, dim.target, params[dim.key])
    if data.get("teachers"):
        data["teachers"][0] = data["teacher"]  # `teacher` is the first of `teachers`: they stay one
    if not (space.varies("teacher") or space.varies("teachers")):
        pinned = [d.target.split(".", 1)[1] for d in space.dims
                  if d.target.startswith("train.") and d.target.split(".", 1)[1] in TEACHER_TRAIN_KEYS]
        entries = list(data.get("teachers") or []) or [data["teacher"]]
        for index, entry in enumerate(entries):
            for key in pinned:
                entry.setdefault("train", {}).setdefault(key, getattr(base.teacher_train(index), key))
            if space.varies("dataset.augment") and entry.get("augment") is None:
                entry["augment"] = base.teacher_augment(index).model_dump(mode="json")
        if data.get("teachers"):
            data["teacher"] = data["teachers"][0]
    return data


# ---- parsing and checking ------------------------------------------------------------------------
def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _spec(key: str, spec: Any) -> dict:
    if not isinstance(spec, dict):
        raise SpaceError(f"{key}: give a range {{low: ..., high: ...}} or {{choices: [...]}}, not {spec!r}")
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise SpaceError(f"{key}: unknown field(s) {', '.join(unknown)}; a key takes low, high, log, step or choices")
    if "choices" in spec:
        if set(spec) != {"choices"}:
            raise SpaceError(f"{key}: give either choices or a range (low, high), not both")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{key}: choices must be a non-empty list")
        if any(not isinstance(c, (str, int, float, bool)) or c is None for c in choices):
            raise SpaceError(f"{key}: each choice must be a number, a word or true/false")
        if len({repr(c) for c in choices}) != len(choices):
            raise SpaceError(f"{key}: a choice is listed twice")
        return {"choices": tuple(choices)}
    if "low" not in spec or "high" not in spec:
        raise SpaceError(f"{key}: a range needs both low and high (or give choices)")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    if not (_number(low) and _number(high)):
        raise SpaceError(f"{key}: low and high must be finite numbers, got {low!r} and {high!r}")
    if low > high:
        raise SpaceError(f"{key}: low ({low:g}) is above high ({high:g})")
    if low == high:
        raise SpaceError(f"{key}: the range {low:g} to {high:g} is empty; give a wider range, or fix the value in "
                         "the config")
    if not isinstance(log, bool):
        raise SpaceError(f"{key}: log must be true or false")
    if log and low <= 0:
        raise SpaceError(f"{key}: a log-scale range must lie above zero, but low is {low:g}")
    if step is not None:
        if not _number(step) or step <= 0:
            raise SpaceError(f"{key}: step must be a positive number")
        if log:
            raise SpaceError(f"{key}: give either log or step, not both")
    return {"low": low, "high": high, "log": log, "step": step}


def _config_leaf(key: str) -> None:
    """Raises unless `key` is a setting (not a section) of the run config."""
    model: type[BaseModel] = RunConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            raise SpaceError(f"{key}: unknown key (no {'.'.join(parts[:i + 1])} in the run config)")
        annotation = field.annotation
        inner = [a for a in getattr(annotation, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        section = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else (
            inner[0] if inner else None)
        if i == len(parts) - 1:
            if section is not None:
                raise SpaceError(f"{key}: a section, not a setting; name one of its keys, e.g. "
                                 f"{key}.{next(iter(section.model_fields))}")
            return
        if section is None:
            raise SpaceError(f"{key}: unknown key ({'.'.join(parts[:i + 1])} has no keys under it)")
        model = section


def _option_targets(key: str, name_parts: list[str], pickable: list[str]) -> tuple[str, tuple[str, ...]]:
    """(the config key, the methods) of a method's option `distill.options[.METHOD].NAME`."""
    from kdcore.distill import METHODS

    if len(name_parts) == 2:
        method, name = name_parts
        if method not in METHODS:
            raise SpaceError(f"{key}: unknown method {method!r}; known: {', '.join(METHODS.names())}")
        if method not in pickable:
            raise SpaceError(f"{key}: the study never picks {method} (it picks {', '.join(pickable)}), so this option "
                             "would never be used")
        if name not in METHODS.get(method).Options.model_fields:
            raise SpaceError(f"{key}: {method} has no option {name!r}; `kdcore methods` lists each method's options")
        return f"distill.options.{name}", (method,)
    if len(name_parts) != 1:
        raise SpaceError(f"{key}: write distill.options.NAME or distill.options.METHOD.NAME")
    name = name_parts[0]
    owners = tuple(m for m in pickable if name in METHODS.get(m).Options.model_fields)
    if not owners:
        raise SpaceError(f"{key}: no method this study can pick ({', '.join(pickable)}) has an option {name!r}; "
                         "`kdcore methods` lists each method's options")
    if len(owners) > 1:
        raise SpaceError(f"{key}: {' and '.join(owners)} each have an option {name!r}; write "
                         + " or ".join(f"distill.options.{m}.{name}" for m in owners))
    return f"distill.options.{name}", owners


def parse_space(data: Any, base: RunConfig, *, where: str = "the space") -> SearchSpace:
    """Checks a space (a parsed space file) against the config its trials start from.

    Raises:
        SpaceError naming the key, before any trial runs: an unknown key, an empty or reversed range, a log
        scale touching zero, a method that does not exist, options for a method the study never picks, a
        value the config refuses.
    """
    from kdcore.distill import METHODS

    if not isinstance(data, dict) or not data:
        raise SpaceError(f"{where} must map at least one config key to a range or choices, e.g. "
                         "distill.temperature: {low: 1, high: 8}")
    specs = {}
    for key, spec in data.items():
        if not isinstance(key, str) or not key.strip():
            raise SpaceError(f"{where}: {key!r} is not a config key")
        specs[key.strip()] = _spec(key.strip(), spec)
    method_spec = specs.get("distill.method")
    if method_spec is not None:
        if "choices" not in method_spec:
            raise SpaceError("distill.method: give the methods to try as choices, e.g. {choices: [soft, dist]}")
        unknown = [m for m in method_spec["choices"] if m not in METHODS]
        if unknown:
            raise SpaceError(f"distill.method: unknown method {unknown[0]!r}; known: {', '.join(METHODS.names())}")
    pickable = list(method_spec["choices"]) if method_spec else [base.distill.method]

    dims = []
    for key, spec in specs.items():
        for fixed, why in FIXED.items():
            if key == fixed or key.startswith(fixed + "."):
                raise SpaceError(f"{key}: cannot be searched: {why}")
        methods = None
        if key.startswith("distill.options."):
            target, methods = _option_targets(key, key.split(".")[2:], pickable)
        elif key.startswith(FREE_OPTIONS) and len(key.split(".")) == 3:
            target = key
        elif key.startswith("teacher.train."):
            if key.split(".", 2)[2] not in TEACHER_TRAIN_KEYS:
                raise SpaceError(f"{key}: a teacher trains with its own {', '.join(TEACHER_TRAIN_KEYS)} only")
            target = key
        else:
            _config_leaf(key)
            target = key
        dims.append(Dimension(key=key, target=target, methods=methods, **spec))
    dims.sort(key=lambda d: d.key != "distill.method")
    targets = [d.target for d in dims]
    if len(set(targets)) != len(targets):
        raise SpaceError(f"{where}: two keys set the same setting ({[t for t in targets if targets.count(t) > 1][0]})")
    space = SearchSpace(tuple(dims))
    _check_values(space, base)
    return space


def _check_values(space: SearchSpace, base: RunConfig) -> None:
    """Every bound and choice of every key makes a valid config with the rest at the base's values."""
    from kdcore.configure import build_config  # torch and the zoo: not for the CLI's parser, which reads SAMPLERS

    for dim in space.dims:
        methods = dim.methods or (None,)
        for method in methods:
            for value in dim.edges():
                params = {dim.key: value}
                if method is not None and method != base.distill.method:
                    params["distill.method"] = method
                try:
                    build_config(apply(base, space, params))
                except ConfigError as err:
                    raise SpaceError(f"{dim.key}: {value!r} does not make a valid config: {err}") from None


def grid_order(points: list[dict], seed: int) -> list[dict]:
    """The grid's points in the order a study tries them: shuffled with its seed, so a short study spans it."""
    order = list(points)
    random.Random(seed).shuffle(order)
    return order


def load_space(path) -> dict:
    """A space file's contents (YAML, read with safe_load)."""
    import yaml
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"space file not found: {path}")
    from kdcore.inputs import InputRefused, read_yaml_file

    try:
        return read_yaml_file(path)
    except InputRefused as err:
        raise SpaceError(str(err)) from None
    except yaml.YAMLError as err:
        raise SpaceError(f"{path} is not valid YAML: {err}") from None
