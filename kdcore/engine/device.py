"""Device choice (cuda, then mps, then cpu) and how a fit uses it (FastPath)."""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import torch

from kdcore.engine.compiled import compile_mode


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

    threads = threads or env_cpu_threads() or max(1, (os.cpu_count() or 1) - 1)
    torch.set_num_threads(threads)
    return threads


def env_cpu_threads() -> int | None:
    """$KDCORE_CPU_THREADS as a count, None when unset; ValueError naming the variable when it is no count."""
    import os

    text = os.environ.get("KDCORE_CPU_THREADS", "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:  # int() alone would take "-1" and a torch of 0 threads misbehaves
        raise ValueError(f"KDCORE_CPU_THREADS={os.environ['KDCORE_CPU_THREADS']} is not a thread count: give a "
                         "whole number from 1 up, or unset it to use the machine's cores")
    return int(text)


def cpu_threads_from_env() -> int:
    """Applies $KDCORE_CPU_THREADS to PyTorch's CPU threads if set; returns the count in use."""
    threads = env_cpu_threads()
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def cpu_runs_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX) and PyTorch may use it.

    Elsewhere bf16 is emulated and slower than fp32. A kernel set capped below AVX-512
    ($ATEN_CPU_CAPABILITY=avx2) counts as a CPU without it, so that run stands for such a machine.
    """
    capable = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return bool(capable) and torch.backends.cpu.get_cpu_capability().startswith("AVX512")


CUDA_EVAL_BATCH = 1024


@dataclass(frozen=True)
class FastPath:
    """How a fit runs on its device: what the run's `train` section asks for, kept where the device gains.

    bf16: autocast to bfloat16 for training, the teacher's pass and evaluation (weights stay fp32).
    channels_last: conv models and their batches in NHWC, the layout oneDNN and tensor cores are fastest in.
    fused_optimizer: the optimizer step as one fused kernel instead of a loop over parameters.
    cudnn_benchmark, tf32: CUDA only (fastest conv algorithm per shape; fp32 matmuls on tensor cores).
    compile: the student's step under torch.compile (train.compile; "reduce-overhead", CUDA graphs, with
    train.cuda_graphs on CUDA).
    """
    device: torch.device
    bf16: bool = False
    channels_last: bool = False
    fused_optimizer: bool = False
    cudnn_benchmark: bool = False
    tf32: bool = False
    compile: Optional[str] = None  # torch.compile mode for the student's step (kdcore.engine.compiled), None: eager
    compiled: str = "off"  # what the summary records: the mode, "off", or "off (why)"

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def autocast(self):
        if not self.bf16:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def eval_batch(self, configured: int) -> int:
        """Images per evaluation step: train.eval_batch_size, and on CUDA at least CUDA_EVAL_BATCH.

        An evaluation batch on a GPU costs about as much as a small one, so fewer, larger batches
        take the per-batch launches away; on CPU larger batches were slower.
        """
        return max(configured, CUDA_EVAL_BATCH) if self.device.type == "cuda" else configured

    def format_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Moves `model` to the device, in channels_last if asked and it has 2-D convs."""
        model.to(self.device)
        if self.channels_last and has_conv2d(model):
            model.to(memory_format=torch.channels_last)
        return model

    def describe(self) -> dict:
        """What a run's summary records, so runs made differently can be told apart."""
        return {"precision": self.precision, "channels_last": self.channels_last,
                "fused_optimizer": self.fused_optimizer, "compile": self.compiled}


def has_conv2d(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def fast_path(device: torch.device | str, train_cfg=None) -> FastPath:
    """The FastPath for `device` under a TrainConfig (None: all options on, as by default).

    bf16 needs train.amp and a device that computes it natively: CUDA, or a CPU per `cpu_runs_bf16`.
    channels_last and fused optimizers apply on CPU and CUDA; MPS keeps PyTorch's defaults.
    torch.compile is off unless train.compile or train.cuda_graphs asks (kdcore.engine.compiled.compile_mode).
    """
    device = torch.device(device)
    amp = True if train_cfg is None else train_cfg.amp
    channels_last = True if train_cfg is None else train_cfg.channels_last
    fused = True if train_cfg is None else train_cfg.fused_optimizer
    cpu, cuda = device.type == "cpu", device.type == "cuda"
    mode, compiled = compile_mode(device, train_cfg is not None and train_cfg.compile,
                                  train_cfg is not None and train_cfg.cuda_graphs)
    return FastPath(
        device=device,
        bf16=amp and (cuda or (cpu and cpu_runs_bf16())),
        channels_last=channels_last and (cpu or cuda),
        fused_optimizer=fused and (cpu or cuda),
        cudnn_benchmark=cuda,
        tf32=cuda,
        compile=mode,
        compiled=compiled,
    )


def prepare_device(path: FastPath) -> None:
    """Applies a CUDA FastPath's backend settings to this process; a CPU process is left as it is."""
    if path.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if path.tf32:
        # The API every torch from 1.12 to 2.14 has. Once the newer fp32_precision setters are used, torch
        # >= 2.9 refuses the older getters (torch.get_float32_matmul_precision()) in the whole process, so
        # any library that reads them would crash; set this way, both readers answer.
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
