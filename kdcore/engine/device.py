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


def cuda_settings(device: torch.device | str) -> dict:
    """What `prepare_device` sets for `device`; empty for anything but CUDA (a CPU run is left as it is).

    Keys: "cudnn_benchmark" (pick the fastest conv algorithm per input shape, which the fixed
    batch shapes of training repay), "fp32_precision" ("tf32": matmuls and convs in TF32 on
    tensor cores) and "channels_last" (conv models in NHWC, the layout tensor cores use).
    """
    if torch.device(device).type != "cuda":
        return {}
    return {"cudnn_benchmark": True, "fp32_precision": "tf32", "channels_last": True}


def prepare_device(device: torch.device | str) -> dict:
    """Applies `cuda_settings(device)` to this process's backends; returns them."""
    settings = cuda_settings(device)
    if settings:
        torch.backends.cudnn.benchmark = settings["cudnn_benchmark"]
        if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
            # the newer API; mixing it with allow_tf32 is refused by recent PyTorch
            torch.backends.cuda.matmul.fp32_precision = settings["fp32_precision"]
            torch.backends.cudnn.conv.fp32_precision = settings["fp32_precision"]
        else:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
    return settings


def to_device_format(model: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """Moves `model` to `device`, in channels_last when that device's settings ask for it and it has 2-D convs."""
    model.to(device)
    if cuda_settings(device).get("channels_last") and any(
            isinstance(m, torch.nn.Conv2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last)
    return model
