"""The model registry and the name-based entry points shared by every model module."""
from __future__ import annotations

import inspect
import re
import numbers
from typing import Callable

from torch import nn

from kdcore.models.plugins import Plugins, load_plugins
from kdcore.registry import Registry

# name -> factory(num_classes, in_channels, image_size, **options) -> nn.Module.
# A factory's docstring's first line is its one-line description for the UI.
class ModelRegistry(Registry):
    """The zoo's registry, plus installed packages' models (kdcore.models.plugins), plus families of models
    named `prefix<name>` (e.g. timm/resnet18) resolved on demand.

    `names()` lists the zoo and the plug-ins; a family's names are checked (and their factories built) when asked for.
    """

    def __init__(self, kind: str):
        super().__init__(kind)
        self._families: dict[str, Callable[[str], Callable[..., nn.Module]]] = {}
        self._plugins: Plugins | None = None

    def plugins(self) -> Plugins:
        """The installed packages' models, loaded on first use."""
        if self._plugins is None:
            self._plugins = load_plugins(lambda name: name in self._entries)
        return self._plugins

    def reload_plugins(self) -> Plugins:
        """Looks for entry points again, e.g. after a package was installed into this process's path."""
        self._plugins = None
        return self.plugins()

    def names(self) -> list[str]:
        return sorted([*self._entries, *self.plugins().factories])

    def add_family(self, prefix: str, resolve: Callable[[str], Callable[..., nn.Module]]) -> None:
        # resolve(rest) returns a factory, or raises KeyError with the closest names
        self._families[prefix] = resolve

    def get(self, name: str):
        for prefix, resolve in self._families.items():
            if isinstance(name, str) and name.startswith(prefix):
                return resolve(name[len(prefix):])
        if name in self._entries:
            return self._entries[name]
        plugins = self.plugins()
        if name in plugins.factories:
            return plugins.factories[name]
        if name in plugins.broken:
            raise KeyError(f"model {name!r} from an installed package is broken: {plugins.broken[name]}")
        raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")

    def __contains__(self, name: object) -> bool:
        try:
            self.get(name)  # type: ignore[arg-type]
        except KeyError:
            return False
        return True


MODELS: ModelRegistry = ModelRegistry("model")
register_model = MODELS.register

_FIXED_ARGS = ("num_classes", "in_channels", "image_size")


def _check_options(name: str, factory, options: dict) -> None:
    # Fail with the model's accepted options listed, rather than a bare
    # "build() got an unexpected keyword argument"; factories taking **options
    # forward them (e.g. to torchvision), which then raises its own TypeError.
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(options) - set(params))
    if unknown:
        accepted = [p for p in params if p not in _FIXED_ARGS]
        raise TypeError(
            f"model {name!r} got unknown option(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(accepted) or 'none'}"
        )


def create_model(
    name: str, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, *,
    pretrained: bool | str | None = None, **options
) -> nn.Module:
    """Builds a registered model with fresh weights, or for a timm model with `pretrained` ones: True
    downloads timm's, a path loads that state dict file.

    Raises KeyError for an unknown name (the message lists the known ones, or the closest timm names) and
    TypeError for an option the model does not take.
    """
    factory = MODELS.get(name)
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels), ("image_size", image_size)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{arg} must be a positive integer, got {value!r}")
    _check_options(name, factory, options)
    if pretrained not in (None, False):
        if "pretrained" not in inspect.signature(factory).parameters:
            raise ValueError(f"model {name!r} has no pretrained weights; only timm/<name> models take them")
        options = {**options, "pretrained": pretrained}
    return factory(num_classes=int(num_classes), in_channels=int(in_channels), image_size=int(image_size), **options)


def build_problem(name: str, err: BaseException) -> str:
    """Why a model could not be built, in words: an option it does not take is named as such, never as a
    Python TypeError about keyword arguments; other errors keep their first line, whatever library raised them."""
    words = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    unknown = re.search(r"unexpected keyword argument '(\w+)'", words)
    if unknown:
        return f"{name} takes no option {unknown[1]!r}: remove it from the options"
    missing = re.search(r"missing \d+ required (?:keyword-only |positional )?arguments?: (.+)$", words)
    if missing:
        return f"{name} needs the option(s) {missing[1]}"
    return words.strip().splitlines()[0] if words.strip() else type(err).__name__


def describe_model(name: str) -> str:
    """One-line description of a registered model, e.g. "CIFAR-style ResNet, 20 layers"."""
    doc = inspect.cleandoc(MODELS.get(name).__doc__ or "")  # the factory's own: a class would inherit nn.Module's
    if doc.strip():
        return doc.splitlines()[0].strip()
    source = MODELS.plugins().sources.get(name)
    return f"from {source}" if source else name


def pooled_size(size: int, kernel: int = 2, stride: int | None = None, padding: int = 0, ceil: bool = False) -> int:
    """Spatial side after a pooling (or conv) window, as PyTorch computes it."""
    stride = stride or kernel
    span = size + 2 * padding - kernel + (stride - 1 if ceil else 0)
    return span // stride + 1 if span >= 0 else 0
