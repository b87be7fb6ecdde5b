"""Limits on what a person may hand kdcore as text, checked before any parsing work grows with it.

A few hundred bytes of nested YAML anchors expand to gigabytes once anything walks them; a config file of
tens of megabytes takes minutes to parse. Every YAML kdcore reads from a person (config and space files,
`--set` values, the dashboard's option and space fields) goes through `load_yaml`, which refuses both
before building a single Python object.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

DEFAULT_MAX_FILE_KB = 1024
DEFAULT_MAX_TEXT_CHARS = 20_000
DEFAULT_MAX_NODES = 20_000
MAX_DEPTH = 100


class InputRefused(ValueError):
    """Text refused before parsing: too large, expanding too far, or not text; the message names the limit."""


def _limit(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InputRefused(f"{name}={raw!r} is not a whole number") from None
    if value < 1:
        raise InputRefused(f"{name} must be at least 1, not {value}")
    return value


def max_file_bytes() -> int:
    return _limit("KDCORE_MAX_CONFIG_KB", DEFAULT_MAX_FILE_KB) * 1024


def max_text_chars() -> int:
    return _limit("KDCORE_MAX_OPTIONS_CHARS", DEFAULT_MAX_TEXT_CHARS)


def max_nodes() -> int:
    return _limit("KDCORE_MAX_YAML_NODES", DEFAULT_MAX_NODES)


def _expanded_size(root: yaml.Node, what: str, limit: int) -> int:
    """Values the document would hold once every alias is expanded, counted without expanding any.

    An alias is the same node object seen twice, so sizes are memoised per node: linear in the text.
    """
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 0, False)]
    open_nodes: set[int] = set()
    while stack:
        node, depth, children_done = stack.pop()
        ident = id(node)
        if children_done:
            open_nodes.discard(ident)
            size = 1 + sum(sizes[id(child)] for child in _children(node))
            if size > limit:
                raise InputRefused(
                    f"{what} expands to more than {limit:,} values (its aliases, *name, repeat what their anchors "
                    f"hold); the limit is KDCORE_MAX_YAML_NODES. Write the values out, or fewer of them")
            sizes[ident] = size
            continue
        if ident in sizes:
            continue
        if ident in open_nodes:
            raise InputRefused(f"{what} holds an alias that refers to itself")
        if depth > MAX_DEPTH:
            raise InputRefused(f"{what} is nested more than {MAX_DEPTH} levels deep")
        open_nodes.add(ident)
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in _children(node) if id(child) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def load_yaml(text: str, what: str = "the YAML", max_chars: int | None = None) -> Any:
    """safe_load with limits: raises InputRefused, or yaml.YAMLError for text that does not parse."""
    limit = max_text_chars() if max_chars is None else max_chars
    if len(text) > limit:
        raise InputRefused(f"{what} is {len(text):,} characters long, more than the limit of {limit:,} "
                            "(KDCORE_MAX_OPTIONS_CHARS)")
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise InputRefused(f"{what} is nested too deeply to read") from None
        if node is None:
            return None
        _expanded_size(node, what, max_nodes())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml_file(path: str | Path, what: str | None = None) -> Any:
    """A YAML file refused by its size on disk before it is read, then parsed with `load_yaml`."""
    path = Path(path)
    what = what or str(path)
    limit = max_file_bytes()
    size = path.stat().st_size
    if size > limit:
        raise InputRefused(f"{what} is {size / 1024:,.0f} KB, more than the limit of {limit // 1024:,} KB "
                            "(KDCORE_MAX_CONFIG_KB)")
    with path.open("rb") as handle:
        raw = handle.read(limit + 1)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputRefused(f"{what} is not UTF-8 text (byte {err.start})") from None
    return load_yaml(text, what, max_chars=limit)
