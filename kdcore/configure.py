"""Building a RunConfig: from YAML files, `--set` overrides and dicts, with its names checked against the registries.

kdcore.config is the schema alone; the registries (datasets, models, methods) import it, so checking names
against them happens here, one floor up. Importing this module installs those checks into the schema's
validators (kdcore.config.NAME_CHECKS): every builder below goes through them.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kdcore.config import NAME_CHECKS, ConfigError, RunConfig, _format_errors
from kdcore.data import DATASETS
from kdcore.distill import METHODS
from kdcore.inputs import InputRefused, load_yaml, read_yaml_file
from kdcore.models import MODELS


def _known_dataset(name: str) -> str:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS.names())}")
    return name


def _known_model(arch: str) -> str:
    try:
        MODELS.get(arch)
    except KeyError as err:
        if not str(err.args[0]).startswith("unknown model"):  # timm's closest names, a plug-in's import error
            raise ValueError(err.args[0]) from None
        raise ValueError(f"unknown architecture {arch!r}; see `kdcore models`") from None
    return arch


def _known_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS.names())}")
    return method


def _method_options(data: Any) -> Any:
    """A distill section's options checked against its method's declaration, its defaults filled in."""
    if not isinstance(data, dict) or data.get("method", "soft") not in METHODS:
        return data
    declared = METHODS.get(data.get("method", "soft")).Options
    try:
        options = declared.model_validate(data.get("options") or {})
    except ValidationError as err:
        raise ValueError(_format_errors(err, prefix="options")) from None
    return {**data, "options": options.model_dump(mode="json")}


NAME_CHECKS.update(dataset=_known_dataset, model=_known_model, method=_known_method, method_options=_method_options)


def _parse_value(text: str, key: str = "value") -> Any:
    if text == "":
        return ""
    try:
        return load_yaml(text, f"the value of {key}")
    except InputRefused as err:
        raise ConfigError(str(err)) from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Applies `key.sub=value` strings (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{key}: {part!r} is not a section")
            node = child
        node[parts[-1]] = _parse_value(value, key.strip())
    return data


def build_config(data: dict | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Validates a nested dict (plus overrides) into a RunConfig or raises ConfigError."""
    data = copy.deepcopy(data or {})  # overrides must not leak into the caller's dict
    if overrides:
        data = apply_overrides(data, overrides)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Reads a YAML config file with safe_load and validates it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = read_yaml_file(path)
    except InputRefused as err:
        raise ConfigError(str(err)) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if data is None:  # not a run of defaults: an empty file is more likely a mistake
        raise ConfigError(f"{path} is empty: give at least one setting, e.g. dataset: {{name: digits}} "
                          "(examples/digits.yaml is a full one)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections at the top level")
    return build_config(data, overrides)
