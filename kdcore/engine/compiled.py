"""The student's step compiled (train.compile, train.cuda_graphs): where it applies, and the fall-backs.

The student's forward (and, through AOTAutograd, its backward) is compiled with torch.compile,
with the teachers' forward where they run on every batch, for full batches only; a fit's last, smaller batch runs eagerly, so one shape is compiled and no
dynamic shapes are needed. On CUDA, train.cuda_graphs replays it as CUDA graphs (mode
"reduce-overhead"), which takes the launch overhead of small models' steps away. The compiled
call is switched on for the step alone: evaluation, checkpoints and whatever uses the model
after the fit run the plain module. What ran is recorded: a mode, or "off (why)".
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Union

import torch
from torch import nn

BACKEND: Union[str, Callable] = "inductor"  # tests swap in a cheap backend to check the logic


def compile_mode(device: torch.device, compile_: bool, cuda_graphs: bool) -> tuple[Optional[str], str]:
    """(torch.compile mode or None, what a summary records) for a device and the two switches."""
    if not (compile_ or cuda_graphs):
        return None, "off"
    if device.type not in ("cpu", "cuda"):
        return None, f"off (torch.compile is used on CPU and CUDA, not {device.type})"
    if cuda_graphs and device.type == "cuda":
        return "reduce-overhead", "reduce-overhead"
    if not compile_:
        return None, "off (train.cuda_graphs needs a CUDA device)"
    return "default", "default"


def restorable_state(model: nn.Module, generators: tuple[torch.Generator, ...]) -> tuple:
    """What a step changes besides the weights and the optimizer: buffers (BatchNorm statistics) and RNG states."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return ({k: v.clone() for k, v in model.named_buffers()}, torch.get_rng_state(), cuda,
            [g.get_state() for g in generators])


def restore_state(model: nn.Module, generators: tuple[torch.Generator, ...], state: tuple) -> None:
    buffers, cpu_rng, cuda_rng, gen_states = state
    own = dict(model.named_buffers())
    with torch.no_grad():
        for k, v in buffers.items():
            own[k].copy_(v)
    torch.set_rng_state(cpu_rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)
    for g, s in zip(generators, gen_states):
        g.set_state(s)


class CompiledStep:
    """A fit's student (and teachers run on every batch), compiled for its full batches when asked and possible.

    `described`: what the run records, e.g. "default", "reduce-overhead", "off (a method reads the
    student's layers through hooks)". `pending` is True until a compiled step has run: a failure to
    compile in that step (no C++ compiler, an unsupported operator) turns compiling off for the fit.
    """

    def __init__(self, modules: list[nn.Module], mode: Optional[str], described: str, batch_size: int,
                 off_because: Optional[str] = None):
        self.modules, self.batch_size = modules, batch_size
        self._calls: Optional[list] = None
        self.described = described
        if mode is not None and off_because:
            self.described = f"off ({off_because})"
        elif mode is not None:
            # torch keeps compiled code per code object, and every module's call is nn.Module._call_impl: a
            # process that runs fit after fit would reach the recompile limit and go on eagerly unsaid
            torch._dynamo.reset()
            options = {"mode": mode} if BACKEND == "inductor" else {}
            self._calls = [torch.compile(m._call_impl, backend=BACKEND, dynamic=False, **options) for m in modules]
        self.graphs = mode == "reduce-overhead"
        self.pending = self._calls is not None

    def applies(self, batch: int) -> bool:
        return self._calls is not None and batch == self.batch_size

    @contextmanager
    def active(self, batch: int) -> Iterator[bool]:
        """Calls to the modules inside run compiled when the batch is a full one (nn.Module's own compiled slot)."""
        if not self.applies(batch):
            yield False
            return
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()  # a new step: the last step's graph outputs may be reused
        for module, call in zip(self.modules, self._calls):
            module._compiled_call_impl = call
        try:
            yield True
        finally:
            for module in self.modules:
                module._compiled_call_impl = None

    def outcome(self) -> str:
        """What the fit ran, for its result: a compile never tried (no full batch) is no compile."""
        if self.pending:
            return f"off (no full batch of {self.batch_size} images to compile)"
        return self.described

    def failed(self, err: BaseException) -> None:
        """Compiling failed: the fit goes on eagerly, and the run records why."""
        self._calls, self.pending = None, False
        root = err  # torch wraps the compiler's own error (BackendCompilerFailed): name that one
        while getattr(root, "inner_exception", None) is not None or root.__cause__ is not None:
            root = getattr(root, "inner_exception", None) or root.__cause__
        first = (str(root).strip().splitlines() or [""])[0][:160]
        self.described = f"off (compiling failed: {type(root).__name__}: {first})"
