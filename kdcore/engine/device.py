"""Device choice: cuda, then mps, then cpu."""
from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """Returns the device for a config value; a requested but absent accelerator is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA GPU is visible to PyTorch")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("train.device is 'mps' but Apple's MPS backend is not available")
    return torch.device(name)


def describe_device(device: torch.device | str | None = None) -> str:
    """A one-line name for a device: "NVIDIA H100 80GB HBM3" or "CPU (2 threads)"."""
    device = torch.device(device) if device is not None else resolve_device("auto")
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    threads = torch.get_num_threads()
    return f"CPU ({threads} thread{'s' if threads != 1 else ''})"


def share_cpu_with_ui(threads: int | None = None) -> int:
    """Caps PyTorch's CPU threads so a UI in the same process keeps a core.

    Training threads that take every core starve the page server and the browser
    beside it (a digits demo took 206 s in the dashboard's worker, 11 s with one
    core left free). $KDCORE_CPU_THREADS overrides. Returns the thread count set.
    """
    import os

    threads = threads or int(os.environ.get("KDCORE_CPU_THREADS") or max(1, (os.cpu_count() or 1) - 1))
    torch.set_num_threads(threads)
    return threads


def cpu_threads_from_env() -> int:
    """Applies $KDCORE_CPU_THREADS to PyTorch's CPU threads if set; returns the count in use."""
    import os

    if os.environ.get("KDCORE_CPU_THREADS"):
        torch.set_num_threads(max(1, int(os.environ["KDCORE_CPU_THREADS"])))
    return torch.get_num_threads()
