"""Reading intermediate features through forward hooks, so zoo models keep a plain forward."""
from __future__ import annotations

from torch import Tensor, nn


class FeatureTap:
    """Records the outputs of named submodules during a forward pass; the hooks go on exit.

        with FeatureTap(model, ["layer2"]) as tap:
            logits = model(x)
        hint = tap.features["layer2"]
    """

    def __init__(self, model: nn.Module, paths: list[str]):
        self.model = model
        self.paths = list(paths)
        self.features: dict[str, Tensor] = {}
        self._handles = []

    def __enter__(self) -> "FeatureTap":
        for path in self.paths:
            module = self.model.get_submodule(path)
            self._handles.append(module.register_forward_hook(self._recorder(path)))
        return self

    def _recorder(self, path: str):
        def record(_module, _inputs, output):
            self.features[path] = output
        return record

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
