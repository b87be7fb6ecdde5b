"""Models from installed packages: every entry point of the group `kdcore.models` is a factory, listed by its name.

A package of the user's own declares, in its pyproject.toml,

    [project.entry-points."kdcore.models"]
    tiny_net = "my_models:tiny_net"

where `tiny_net(num_classes, in_channels, image_size, **options)` returns an nn.Module giving logits.
Only installed packages are trusted: a config names a model, it never names code to import.
An entry point that fails to load, or takes a name the zoo has, is listed as broken with its reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Callable

GROUP = "kdcore.models"


@dataclass
class Plugins:
    """The group's entry points, loaded once: factories by name, and the broken ones with their reasons."""

    factories: dict[str, Callable] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # name -> "package x.y (module:attr)"


def load_plugins(taken: Callable[[str], bool]) -> Plugins:
    """Loads every entry point of the group; `taken(name)` says a name is already the zoo's."""
    found = Plugins()
    for point in sorted(entry_points(group=GROUP), key=lambda p: p.name):
        dist = getattr(point, "dist", None)
        found.sources[point.name] = (f"{dist.name} {dist.version} " if dist else "") + f"({point.value})"
        if taken(point.name) or point.name in found.factories:
            found.broken[point.name] = f"its name is already taken by {'the zoo' if taken(point.name) else 'another package'}"
            continue
        try:
            factory = point.load()
        except Exception as err:  # noqa: BLE001 - a package's import error must not stop the listing
            first = (str(err).strip().splitlines() or [""])[0]
            found.broken[point.name] = f"{point.value} failed to import: {type(err).__name__}: {first}".rstrip(": ")
            continue
        if not callable(factory):
            found.broken[point.name] = f"{point.value} is a {type(factory).__name__}, not a model factory"
            continue
        found.factories[point.name] = factory
    return found
