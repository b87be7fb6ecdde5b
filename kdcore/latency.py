"""Inference latency of a model, in PyTorch and in onnxruntime, on this machine.

Numbers are medians of repeated forward passes after a warm-up, with the 10th and 90th
percentiles beside them and the thread count named: a latency without its machine and
threads cannot be compared with anything.
"""
from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

BACKENDS = ("torch", "onnxruntime")


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC 7B13"), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "Apple MPS" if device.type == "mps" else cpu_model()


def _times_ms(call: Callable[[], object], sync: Callable[[], None], repeats: Optional[int], warmup: int,
              budget_s: float, min_repeats: int, max_repeats: int) -> list[float]:
    """Wall-clock milliseconds of `repeats` calls after `warmup` (at least one); repeats=None fits the budget."""
    for _ in range(max(1, warmup)):
        call()
    sync()
    if repeats is None:
        # the last warm-up call sizes the run: as many repeats as fit the budget, within the bounds
        start = time.perf_counter()
        call()
        sync()
        once = max(time.perf_counter() - start, 1e-6)
        repeats = int(min(max_repeats, max(min_repeats, budget_s / once)))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _row(backend: str, batch: int, times: list[float], threads: int, device: str) -> dict:
    p10, median, p90 = np.percentile(times, [10, 50, 90])
    return {"backend": backend, "batch": batch, "median_ms": float(median), "p10_ms": float(p10),
            "p90_ms": float(p90), "repeats": len(times), "threads": threads, "device": device}


def measure_latency(model: nn.Module, input_shape: Sequence[int], batch_sizes: Sequence[int] = (1, 64),
                    backends: Sequence[str] = BACKENDS, repeats: Optional[int] = None, warmup: int = 3,
                    threads: Optional[int] = None, budget_s: float = 0.3, min_repeats: int = 5,
                    max_repeats: int = 1000) -> list[dict]:
    """Times forward passes of `model` on zero images of each batch size, per backend.

    PyTorch runs on the model's own device in eval mode under inference_mode; onnxruntime runs an
    ONNX export of the model on the CPU with as many intra-op threads as PyTorch. The model's
    training mode and PyTorch's thread count are restored afterwards, and no random numbers are
    drawn, so a run's RNG state is untouched.

    Args:
        input_shape: (C, H, W) of one image.
        repeats: timed calls per (backend, batch); None fits them to `budget_s` seconds, at least
            `min_repeats` and at most `max_repeats`.
        warmup: untimed calls first (at least one).
        threads: CPU threads for both backends; None keeps torch.get_num_threads().

    Returns:
        One dict per (backend, batch): backend, batch, median_ms, p10_ms, p90_ms (per call, in
        milliseconds), repeats, threads and device (the CPU or GPU model).
    """
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown latency backend(s) {', '.join(map(repr, unknown))}; choose from {', '.join(BACKENDS)}")
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    timing = dict(repeats=repeats, warmup=warmup, budget_s=budget_s, min_repeats=min_repeats,
                  max_repeats=max_repeats)
    before_threads, was_training = torch.get_num_threads(), model.training
    if threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    rows: list[dict] = []
    model.eval()
    try:
        if "torch" in backends:
            sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
            for batch in batch_sizes:
                x = torch.zeros(batch, *input_shape, device=device, dtype=dtype)
                with torch.inference_mode():
                    times = _times_ms(lambda: model(x), sync, **timing)
                rows.append(_row("torch", batch, times, threads, _device_name(device)))
        if "onnxruntime" in backends:
            rows += _onnxruntime_rows(model, input_shape, batch_sizes, threads, timing)
    finally:
        model.train(was_training)
        torch.set_num_threads(before_threads)
    return rows


def _onnxruntime_rows(model: nn.Module, input_shape: Sequence[int], batch_sizes: Sequence[int], threads: int,
                      timing: dict) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        # a plain export: timing needs the graph, not kdcore.export's checks (which sit above the engine)
        torch.onnx.export(model, (torch.zeros(2, *input_shape),), Path(tmp) / "model.onnx", dynamo=True,
                          dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False, verbose=False)
        return _session_rows(Path(tmp) / "model.onnx", input_shape, batch_sizes, threads, timing)


def _session_rows(path: Path, input_shape: Sequence[int], batch_sizes: Sequence[int], threads: int,
                  timing: dict) -> list[dict]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rows = []
    for batch in batch_sizes:
        feed = {name: np.zeros((batch, *input_shape), dtype=np.float32)}
        times = _times_ms(lambda: session.run(None, feed), lambda: None, **timing)
        rows.append(_row("onnxruntime", batch, times, threads, cpu_model()))
    return rows


def onnx_file_latency(path: str | Path, input_shape: Sequence[int], batch_sizes: Sequence[int] = (1, 64),
                      threads: Optional[int] = None, repeats: Optional[int] = None, warmup: int = 3,
                      budget_s: float = 0.3, min_repeats: int = 5, max_repeats: int = 1000) -> list[dict]:
    """Times an ONNX file (float32 or quantized) with onnxruntime on the CPU, as measure_latency times a model.

    Args:
        input_shape: (C, H, W) of one image; the file's input takes float32 images.
        threads: intra-op threads; None takes torch.get_num_threads(), as measure_latency does.

    Returns:
        One dict per batch size, with the keys of measure_latency's rows (backend "onnxruntime").
    """
    timing = dict(repeats=repeats, warmup=warmup, budget_s=budget_s, min_repeats=min_repeats,
                  max_repeats=max_repeats)
    return _session_rows(Path(path), input_shape, batch_sizes, threads or torch.get_num_threads(), timing)


def phase_latency(model: nn.Module, input_shape: Sequence[int], batch_sizes: Sequence[int] = (1, 64),
                  budget_s: float = 0.1) -> dict[int, float]:
    """Median PyTorch milliseconds per call for each batch size, quickly: for a run's summary.

    Five calls per batch size at the least (one warm-up, one to size the run, three timed), so a
    large model on a CPU costs a few seconds, and the zoo's small ones about 2 * budget_s.
    """
    rows = measure_latency(model, input_shape, batch_sizes, backends=("torch",), warmup=1, budget_s=budget_s,
                           min_repeats=3, max_repeats=50)
    return {row["batch"]: row["median_ms"] for row in rows}
