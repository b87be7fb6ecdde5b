"""What machine a benchmark ran on, for the figures it writes."""
from __future__ import annotations

from kdcore.latency import cpu_model  # one definition, shared with the run summaries' latency_cpu

__all__ = ["cpu_model"]
