"""What machine a benchmark ran on, for the figures it writes."""
from __future__ import annotations

from pathlib import Path

import torch

from kdcore.latency import cpu_model  # one definition, shared with the run summaries' latency_cpu

__all__ = ["cpu_flags", "cpu_model"]

# the instruction sets the fast path's speed depends on, as /proc/cpuinfo names them
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpu_flags() -> str:
    """"AVX512 kernels; avx2 avx512f avx512_bf16 ...": PyTorch's kernel set and the CPU's speed-relevant flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = set(next(line for line in text.splitlines() if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        flags = set()
    present = " ".join(f for f in SPEED_FLAGS if f in flags) or "unknown"
    return f"{torch.backends.cpu.get_cpu_capability()} kernels; {present}"


def print_table(header: str, lines: list[str], markdown=None) -> None:
    """A bench's result: its header line, then its Markdown table; appended to `markdown` too, where given."""
    table = header + "\n\n" + "\n".join(lines)
    print(table)
    if markdown:
        with open(markdown, "a") as f:
            f.write("\n" + table + "\n")
