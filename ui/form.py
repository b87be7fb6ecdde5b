"""The New experiment form's plumbing: widget keys named after config keys, and errors placed beside fields.

A widget for config key `train.lr` has the session key "f.train.lr", so a stored
run's config fills the form key by key, and a ConfigError naming `train.lr`
lands in the slot placed under that widget.
"""
from __future__ import annotations

import re
from typing import Any, Optional

import streamlit as st
import yaml

from kdcore.config import ConfigError, RunConfig, build_config

PREFIX = "f."
BASE = "f.base"
T_RANGE = (1.0, 20.0)  # the temperature slider's range
# config keys whose widget shows a different form of the value: lists and dicts as text
_AS_TEXT = {"tags", "train.milestones", "teacher.options", "student.options"}
_SECTIONS = "|".join(re.escape(k) for k in RunConfig.model_fields) + r"|\(config\)"
_ERROR_SPLIT = re.compile(rf"; (?=(?:{_SECTIONS})(?:\.[\w.]+)?: )")


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; dict-valued options stay whole."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path not in _AS_TEXT:
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
    if path in ("dataset.root", "teacher.checkpoint"):
        return value or ""
    if path == "distill.temperature":
        return min(max(float(value), T_RANGE[0]), T_RANGE[1])
    return value


def base() -> dict:
    """The config the form started from (the demo's, or a stored run's); keys without a widget keep its values."""
    return st.session_state[BASE]


def start_from(config: dict) -> None:
    """Puts a config's values into the form's widgets; call from a callback, before they render."""
    config = {**config, "name": "", "group": None}  # a new run, not a member of the old one's sweep
    st.session_state[BASE] = config
    for path, value in flatten(config).items():
        st.session_state[key(path)] = _as_widget_value(path, value)


def ensure_defaults(default: RunConfig) -> None:
    """Gives every widget its value from the base config, unless the user has set it in this visit."""
    if BASE not in st.session_state:
        st.session_state[BASE] = default.model_dump(mode="json")
    for path, value in flatten(base()).items():
        st.session_state.setdefault(key(path), _as_widget_value(path, value))


def key(path: str) -> str:
    return PREFIX + path


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


def parse_options(text: str) -> dict:
    """Model options typed as YAML, e.g. `width: 16` or `{hidden: [256, 128]}`."""
    if not text.strip():
        return {}
    try:
        value = yaml.safe_load(text)
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
            by_placeholder.setdefault(id(placeholder), (placeholder, []))[1].append(f"`{path}`: {message}")
        for placeholder, messages in by_placeholder.values():
            placeholder.error("  \n".join(messages), icon=":material/error:")
        return unplaced
