"""The New experiment form's plumbing: widget keys named after config keys, and errors placed beside fields.

A widget for config key `train.lr` has the session key "f.train.lr", so a stored
run's config fills the form key by key, and a ConfigError naming `train.lr`
lands in the slot placed under that widget. The first teacher's widgets are keyed
`teacher.*` and the others' `teachers.<i>.*` (i from 1); a method's options
`distill.options.<name>`, drawn from the method's declaration (kdcore.distill.describe).
"""
from __future__ import annotations

import math
import re
from typing import Any, Optional

import streamlit as st
import yaml

from kdcore.config import ConfigError, RunConfig
from kdcore.configure import build_config
from kdcore.inputs import InputRefused, load_yaml

PREFIX = "f."
BASE = "f.base"
T_STEP = 0.5  # the temperature sliders' step
NUMBER_FORMAT = "%.4g"  # the browser writes a bare "%g" as the whole float: 0.08333333333333333


def _t_bounds() -> tuple[float, float, bool]:
    """distill.temperature's range as the config declares it (its pydantic field's gt/ge and le/lt): low, high,
    and whether low itself is allowed. Read, not copied, so the form offers every T a run may have."""
    import annotated_types as at

    from kdcore.config import DistillConfig

    low, high, low_allowed = 0.0, math.inf, True
    for rule in DistillConfig.model_fields["temperature"].metadata:
        if isinstance(rule, at.Gt):
            low, low_allowed = float(rule.gt), False
        elif isinstance(rule, at.Ge):
            low = float(rule.ge)
        elif isinstance(rule, (at.Le, at.Lt)):
            high = float(getattr(rule, "le", getattr(rule, "lt", high)))
    return low, high, low_allowed




def t_slider_range(value: float) -> tuple[float, float]:
    """A T slider's ends that hold `value` as it is (a stored T is never clamped): the config's range, but
    starting at one step rather than at an excluded 0 (or at `value`, when lower)."""
    low, high, low_allowed = _t_bounds()
    start = low if low_allowed else min(low + T_STEP, float(value))
    return start, max(high, float(value))
TEACHERS = "ui.teachers"  # how many teachers the form shows
COMBINE = "ui.combine"  # several teachers: "average" (equal weights) or "weights" (one number each)
OPTIONS_OF = "ui.options_of"  # the method whose options the f.distill.options.* keys hold
STUDENT_START = "ui.student_start"  # "scratch", "run" or "checkpoint"
KEPT = "form.kept"  # the form's values under a key no widget owns: Streamlit forgets a widget's value on pages
# that do not draw it, so a visit to another page would otherwise reset the form
_KEPT_UI = re.compile(r"ui\.(source_run|images_from|seeds|teacher_per_seed|sweep\w*|search\w*|teachers|combine|"
                      r"options_of|student_start|student_run|finetune(\.\d+)?|own_training(\.\d+)?|options_from(\.\d+)?)")
# config keys whose widget shows a different form of the value: lists and dicts as text
_AS_TEXT = re.compile(r"tags|train\.milestones|(teacher|teachers\.\d+|student)\.options")
_SECTIONS = "|".join(re.escape(k) for k in RunConfig.model_fields) + r"|\(config\)"
_ERROR_SPLIT = re.compile(rf"; (?=(?:{_SECTIONS})(?:\.[\w.]+)?: )")


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; dict-valued options stay whole."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and not _AS_TEXT.fullmatch(path):
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def nest(flat: dict[str, Any]) -> dict:
    """{"a.b": 1} -> {"a": {"b": 1}}."""
    data: dict = {}
    for path, value in flat.items():
        node = data
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return data


def _as_widget_value(path: str, value: Any) -> Any:
    if path in ("tags", "train.milestones"):
        return ", ".join(str(v) for v in value or [])
    if path.endswith(".options"):
        return yaml.safe_dump(value, default_flow_style=True).strip() if value else ""
    if path == "dataset.root" or path.endswith(".checkpoint"):
        return value or ""
    if path == "distill.temperature":
        return float(value)  # as stored: the slider's range holds any T the config allows
    return value


def base() -> dict:
    """The config the form started from (the demo's, or a stored run's); keys without a widget keep its values."""
    return st.session_state[BASE]


def _teacher_list(config: dict) -> list[dict]:
    return list(config.get("teachers") or []) or [config.get("teacher") or {}]


def widget_values(config: dict) -> dict[str, Any]:
    """Session key -> widget value for a config: the first teacher as `teacher.*`, the others as
    `teachers.<i>.*`, teacher weights one key each, and the form's own choices (how many teachers,
    how they combine, where the student starts)."""
    config = dict(config)
    teachers = _teacher_list(config)
    config.pop("teachers", None)
    config["teacher"] = teachers[0]
    distill = dict(config.get("distill") or {})
    weights = distill.pop("teacher_weights", None)
    config["distill"] = distill
    flat = flatten(config)
    for i, teacher in enumerate(teachers[1:], 1):
        flat.update(flatten(teacher, f"teachers.{i}."))
    for i, weight in enumerate(weights or []):
        flat[f"distill.teacher_weights.{i}"] = float(weight)
    values = {key(path): _as_widget_value(path, value) for path, value in flat.items()}
    for i, teacher in enumerate(teachers):
        values[finetune_key(i)] = bool(teacher.get("finetune_epochs"))
        values[own_training_key(i)] = teacher.get("augment") is not None or bool(teacher.get("train"))
    values.update({TEACHERS: len(teachers), COMBINE: "weights" if weights else "average",
                   OPTIONS_OF: distill.get("method", "soft"),
                   STUDENT_START: "checkpoint" if (config.get("student") or {}).get("checkpoint") else "scratch"})
    return values


def teacher_prefix(i: int) -> str:
    """The config path of teacher i's widgets (0-based): `teacher` for the first, `teachers.<i>` for the others."""
    return "teacher" if i == 0 else f"teachers.{i}"


def finetune_key(i: int) -> str:
    return "ui.finetune" if i == 0 else f"ui.finetune.{i}"


def own_training_key(i: int) -> str:
    """Teacher i's toggle for training with settings of its own (teacher.augment, teacher.train)."""
    return "ui.own_training" if i == 0 else f"ui.own_training.{i}"


def teacher_base(i: int) -> dict[str, Any]:
    """Teacher i's values in the base config (fields without a widget keep them), flat; {} for a new one."""
    teachers = _teacher_list(base())
    return flatten(teachers[i]) if i < len(teachers) else {}


def base_values() -> dict[str, Any]:
    """The base config flattened, without what the form rebuilds from its widgets: the teachers, their
    weights and the method's options (a previous method's would be refused as unknown)."""
    flat = flatten(base())
    rebuilt = ("teachers", "distill.teacher_weights")
    return {path: value for path, value in flat.items()
            if not path.startswith(("teacher.", "distill.options.")) and path not in rebuilt}


def _drop_method_options() -> None:
    for name in [k for k in st.session_state if str(k).startswith(key("distill.options."))]:
        del st.session_state[name]


def start_from(config: dict) -> None:
    """Puts a config's values into the form's widgets; call from a callback, before they render."""
    config = {**config, "name": "", "group": None}  # a new run, not a member of the old one's sweep
    st.session_state[BASE] = config
    _drop_method_options()
    for name, value in widget_values(config).items():
        st.session_state[name] = value
    remember()


def _kept(name: str) -> bool:
    return name.startswith(PREFIX) or bool(_KEPT_UI.fullmatch(name))


def remember() -> None:
    """Copies the form's values under KEPT; call at the start and the end of every run of the page."""
    st.session_state[KEPT] = {name: st.session_state[name] for name in list(st.session_state) if _kept(str(name))}


def forget(*names: str) -> None:
    """Drops these keys from the form and from what it keeps, so they start afresh on the next visit."""
    for name in names:
        st.session_state.pop(name, None)
        st.session_state.get(KEPT, {}).pop(name, None)


def restore() -> None:
    """Gives back the values the form held when the user went to another page; call before any widget."""
    for name, value in st.session_state.get(KEPT, {}).items():
        if name not in st.session_state:
            st.session_state[name] = value
    remember()


def ensure_defaults(default: RunConfig) -> None:
    """Gives every widget its value from the base config, unless the user has set it in this visit."""
    if BASE not in st.session_state:
        st.session_state[BASE] = default.model_dump(mode="json")
    shown = st.session_state.get(OPTIONS_OF)
    for name, value in widget_values(base()).items():
        if name.startswith(key("distill.options.")) and shown not in (None, base()["distill"]["method"]):
            continue  # the form shows another method's options now
        st.session_state.setdefault(name, value)


def role_base(role: str) -> dict:
    """The base config's entry for a model's widgets: `student`, `teacher` or `teachers.<i>`."""
    if role == "student":
        return dict(base().get("student") or {})
    i = 0 if role == "teacher" else int(role.rsplit(".", 1)[1])
    teachers = _teacher_list(base())
    return dict(teachers[i]) if i < len(teachers) else {}


def reset_options(role: str) -> None:
    """On a change of architecture, its options start from that architecture's defaults (none typed), or from
    the base config's when it is the base's architecture: another model's options would not fit it."""
    entry = role_base(role)
    arch = st.session_state.get(key(f"{role}.arch"))
    options = entry.get("options") if entry.get("arch") == arch else None
    st.session_state[key(f"{role}.options")] = _as_widget_value(f"{role}.options", options or {})


def reset_data_root() -> None:
    """On a change of dataset, its root starts empty (the dataset's default folder), or as the base config has it
    when it is the base's dataset: an image folder typed for one dataset is no root for another."""
    data = base().get("dataset") or {}
    same = data.get("name") == st.session_state.get(key("dataset.name"))
    st.session_state[key("dataset.root")] = (data.get("root") or "") if same else ""


def method_options(method: dict) -> None:
    """Makes the option widgets hold `method`'s values: on a switch of method, its declared defaults.

    Args:
        method: the method's declaration, as kdcore.distill.describe gives it.
    """
    if st.session_state.get(OPTIONS_OF) == method["name"]:
        return
    _drop_method_options()
    for option in method["options"]:
        st.session_state[key(f"distill.options.{option['name']}")] = _option_value(option, option["default"])
    st.session_state[OPTIONS_OF] = method["name"]


def _option_value(option: dict, value: Any) -> Any:
    kind = option.get("type")
    if "enum" in option or kind in ("boolean", "string"):
        return value
    if kind == "number":
        return float(value)
    if kind == "integer":
        return int(value)
    return "" if value is None else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def bounds_text(option: dict) -> str:
    """A number option's declared range in words: "(from 0 to 1000)", "(above 0)", "" when unbounded."""
    low, high = option.get("minimum"), option.get("maximum")
    above, below = option.get("exclusiveMinimum"), option.get("exclusiveMaximum")
    parts = ([f"from {low:g}"] if low is not None else [f"above {above:g}"] if above is not None else []) + \
            ([f"to {high:g}"] if high is not None else [f"below {below:g}"] if below is not None else [])
    return f"({' '.join(parts)})" if parts else ""


def _step(option: dict) -> float:
    """A step of about a tenth of the default's order of magnitude, and at most a twentieth of the range."""
    default = abs(float(option.get("default") or 0.0))
    step = 10.0 ** math.floor(math.log10(default)) / 10 if default > 0 else 0.1
    low = option.get("minimum", option.get("exclusiveMinimum"))
    high = option.get("maximum", option.get("exclusiveMaximum"))
    if low is not None and high is not None and high > low:
        step = min(step, (high - low) / 20)
    return step


def option_input(option: dict) -> Any:
    """One method option as a widget drawn from its declaration; returns its value for the config.

    Numbers are checked by validation against the declared bounds (its message shows beside the options) and
    shown to 4 significant digits, booleans a toggle, a fixed set of values a selectbox, text a text input; any other
    type is typed as YAML.
    """
    name, help_ = option["name"], option.get("help") or None
    widget_key = key(f"distill.options.{name}")
    kind = option.get("type")
    if "enum" in option:
        return st.selectbox(name, option["enum"], key=widget_key, help=help_)
    if kind == "boolean":
        return st.toggle(name, key=widget_key, help=help_)
    if kind in ("number", "integer"):
        cast = float if kind == "number" else int
        current = st.session_state.get(widget_key)
        if isinstance(current, (int, float)) and not isinstance(current, bool):
            st.session_state[widget_key] = cast(current)  # int and float arguments cannot be mixed
        # no widget bounds: the browser would keep the last value in range while showing the one typed;
        # validation refuses it beside the options instead, and Launch stays disabled. The help says the range.
        return st.number_input(name, step=cast(_step(option)) if kind == "number" else 1,
                               format=NUMBER_FORMAT if kind == "number" else "%d", key=widget_key,
                               help=" ".join(filter(None, [help_, bounds_text(option)])) or None)
    if kind == "string":
        return st.text_input(name, key=widget_key, help=help_)
    typed = st.text_input(f"{name} (YAML)", key=widget_key, help=help_)
    try:
        return load_yaml(typed, name) if typed.strip() else None
    except InputRefused as err:
        st.error(str(err))
        return typed  # fails validation too, so Launch stays disabled
    except yaml.YAMLError:
        return typed  # validation names the option and says what it takes


def key(path: str) -> str:
    return PREFIX + path


_MARKDOWN = re.compile(r"([\\`*_{}\[\]<>()#+\-!|~$])")


def plain(text: str) -> str:
    """Text shown as it is in a widget that reads Markdown: `__init__` stays `__init__`, not a bold "init"."""
    return _MARKDOWN.sub(r"\\\1", str(text))


def parse_list(text: str, kind=float) -> list:
    """ "2, 4, 8" -> [2.0, 4.0, 8.0]; raises ValueError naming the entry that is not a number."""
    items = [t for t in re.split(r"[,\s]+", text.strip()) if t]
    values = []
    for item in items:
        try:
            values.append(kind(item))
        except ValueError:
            raise ValueError(f"{item!r} is not {'a whole number' if kind is int else 'a number'}") from None
    return values


def parse_sweep(text: str) -> list[float]:
    """A sweep's values, "2, 4, 8" -> [2.0, 4.0, 8.0]; refuses none at all and a value given twice (the same run
    would be queued twice), with a ValueError saying which."""
    values = parse_list(text)
    if not values:
        raise ValueError("give at least one value")
    repeated = sorted({value for value in values if values.count(value) > 1})
    if repeated:
        raise ValueError(f"{', '.join(f'{value:g}' for value in repeated)} given more than once: each value makes "
                         "one run, so give it once")
    return values


def parse_options(text: str) -> dict:
    """Model options typed as YAML, e.g. `width: 16` or `{hidden: [256, 128]}`."""
    if not text.strip():
        return {}
    try:
        value = load_yaml(text, "the options")
    except InputRefused as err:
        raise ValueError(str(err)) from None
    except yaml.YAMLError as err:
        raise ValueError(f"not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(value, dict):
        raise ValueError("write options as `name: value`, e.g. `width: 16`")
    return value


def split_errors(message: str) -> dict[str, str]:
    """A ConfigError's message -> {config key: message}."""
    errors = {}
    for part in _ERROR_SPLIT.split(message):
        path, _, text = part.partition(": ")
        errors[path] = text or part
    return errors


def validate(data: dict) -> tuple[Optional[RunConfig], dict[str, str]]:
    try:
        return build_config(data), {}
    except ConfigError as err:
        return None, split_errors(str(err))


class FieldErrors:
    """Empty slots placed under widgets, filled with the errors of their config keys once all are known."""

    def __init__(self) -> None:
        self.slots: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.marked: list[str] = []  # the config keys whose errors show beside their fields, once shown

    def slot(self, *paths: str) -> None:
        placeholder = st.empty()
        for path in paths:
            self.slots[path] = placeholder

    def add(self, path: str, message: str) -> None:
        self.errors.setdefault(path, message)

    def update(self, errors: dict[str, str]) -> None:
        for path, message in errors.items():
            self.add(path, message)

    def _slot_for(self, path: str) -> Optional[str]:
        # the most specific slot: train.milestones.0 -> train.milestones -> train
        parts = path.split(".")
        for n in range(len(parts), 0, -1):
            candidate = ".".join(parts[:n])
            if candidate in self.slots:
                return candidate
        return None

    def show(self) -> list[str]:
        """Writes each error into its slot; returns the ones with no slot, for a general message."""
        by_placeholder: dict[int, tuple[Any, list[str]]] = {}
        unplaced = []
        for path, message in self.errors.items():
            slot = self._slot_for(path)
            if slot is None:
                unplaced.append(f"{path}: {message}")
                continue
            placeholder = self.slots[slot]
            self.marked.append(path)
            by_placeholder.setdefault(id(placeholder), (placeholder, []))[1].append(f"`{path}`: {plain(message)}")
        order = list(self.slots)  # the order of the fields on the page
        self.marked.sort(key=lambda path: order.index(self._slot_for(path)))
        for placeholder, messages in by_placeholder.values():
            placeholder.error("  \n".join(messages), icon=":material/error:")
        return unplaced


def default_space(method: str, uses_temperature: bool) -> str:
    """A first search space for the form's method: a few methods, T where it counts, and α."""
    methods = [method] + [m for m in ("soft", "dist") if m != method]
    lines = [f"distill.method: {{choices: [{', '.join(methods)}]}}"]
    if uses_temperature or any(m in ("soft", "dist") for m in methods):
        lines.append("distill.temperature: {low: 1.0, high: 8.0, log: true}")
    lines.append("distill.alpha: {low: 0.3, high: 0.95}")
    return "\n".join(lines) + "\n"
