"""The thread policy's second half: a process with spinning threads gives cores back when others need them.

A process that found the CPU idle when kdcore loaded keeps OpenMP's spinning threads
(kdcore/__init__.py), which hand work over faster. If other processes take the cores later,
spinning threads fight them for the cores: on 2 cores beside one busy process a step was
2.4x slower than with sleeping threads. So the trainer asks `CpuWatch` between steps how
many threads to use: one fewer per core that other processes keep busy, and all of them
again once they stop. With fewer threads nothing spins (1.4x slower than sleeping threads
there, against 2.4x). A process whose threads sleep keeps all of them: sleeping threads
share cores with others well.
"""
from __future__ import annotations

import os
import time
from typing import Optional

import torch

from kdcore.cpu_load import machine_busy_s, can_watch, others_cores, threads_for, usable_cpus

WINDOW_S = 1.0  # the load is judged over at least this long, so one busy moment does not count


def threads_wait() -> str:
    """How this process's OpenMP threads wait between kernels: "spin" or "sleep" (OMP_WAIT_POLICY=PASSIVE)."""
    return "sleep" if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE" else "spin"


class CpuWatch:
    """Between steps, sets this thread's torch threads to what the other processes leave free.

    `configured`: the threads the run was given (all of them, or what KDCORE_CPU_THREADS says).
    A watch that cannot read the load, or has one thread to begin with, changes nothing.
    """

    def __init__(self, device: torch.device, configured: Optional[int] = None):
        self.configured = configured or torch.get_num_threads()
        spinning = threads_wait() == "spin"
        wanted = os.environ.get("KDCORE_CPU_WATCH", "1") != "0"  # 0 turns it off, for measuring
        self.active = device.type == "cpu" and self.configured > 1 and spinning and wanted and can_watch()
        self.threads = self.configured
        self.changes = 0
        self.lowered = 0  # changes to fewer threads than configured
        self._cpus = usable_cpus()
        self._mark = self._sample() if self.active else None

    def _sample(self) -> Optional[tuple[float, float, float]]:
        busy = machine_busy_s(self._cpus)
        return None if busy is None else (time.monotonic(), busy, time.process_time())

    def check(self) -> int:
        """Takes a decision once a window has passed; returns the threads in use."""
        if not self.active or self._mark is None:
            return self.threads
        now = time.monotonic()
        if now - self._mark[0] < WINDOW_S:
            return self.threads
        sample = self._sample()
        if sample is None:
            self.active = False
            return self.threads
        then, self._mark = self._mark, sample
        others = others_cores(sample[1] - then[1], sample[2] - then[2], sample[0] - then[0])
        wanted = threads_for(self.configured, len(self._cpus), others)
        if wanted != self.threads:
            torch.set_num_threads(wanted)
            self.lowered += wanted < self.threads
            self.threads = wanted
            self.changes += 1
        return self.threads

    def close(self) -> None:
        """Gives the thread its configured count back."""
        if self.threads != self.configured:
            torch.set_num_threads(self.configured)
            self.threads = self.configured
