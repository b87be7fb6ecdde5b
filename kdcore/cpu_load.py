"""The machine's CPU load as /proc/stat tells it, without torch: kdcore/__init__.py reads it before torch loads."""
from __future__ import annotations

import math
import os
import time
from typing import Optional

PROC_STAT = "/proc/stat"
BUSY_CORE = 0.6  # others keeping this much of a core busy take it; less is noise (a page server, a shell)


def can_watch() -> bool:
    return os.path.exists(PROC_STAT)


def usable_cpus() -> set[int]:
    """The CPUs this process may run on (all of them where affinity cannot be read)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def machine_busy_s(cpus: set[int]) -> Optional[float]:
    """CPU seconds the machine has spent busy since boot on `cpus`, together (None if unreadable).

    Only this process's CPUs count: in a container pinned to a few of a large host's cores,
    the rest of the host's load is not ours to make room for.
    """
    try:
        with open(PROC_STAT) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    busy_ticks, seen = 0, 0
    for line in lines:
        fields = line.split()
        if not fields or not fields[0].startswith("cpu") or not fields[0][3:].isdigit():
            continue
        if int(fields[0][3:]) not in cpus:
            continue
        # user nice system idle iowait irq softirq steal: idle and iowait are not busy; steal is
        # time the hypervisor gave this machine's cores to someone else
        ticks = [int(v) for v in fields[1:9]]
        busy_ticks += sum(ticks) - ticks[3] - ticks[4]
        seen += 1
    return busy_ticks / os.sysconf("SC_CLK_TCK") if seen else None


def others_cores(busy_s: float, own_s: float, elapsed_s: float) -> float:
    """Cores other processes kept busy on average, from the machine's and this process's CPU time."""
    return max(0.0, (busy_s - own_s) / elapsed_s) if elapsed_s > 0 else 0.0


def threads_for(configured: int, cores: int, others: float) -> int:
    """Threads to use on `cores` CPUs when other processes keep `others` of them busy: at least one."""
    taken = math.floor(others + (1 - BUSY_CORE))  # 0.6 of a core counts as one
    return max(1, min(configured, cores - taken))


def others_busy_now(seconds: float = 0.1) -> Optional[float]:
    """Cores other processes keep busy over the next `seconds` (None where the load cannot be read)."""
    cpus = usable_cpus()
    busy, own, start = machine_busy_s(cpus), time.process_time(), time.monotonic()
    if busy is None:
        return None
    time.sleep(seconds)
    after = machine_busy_s(cpus)
    if after is None:
        return None
    return others_cores(after - busy, time.process_time() - own, time.monotonic() - start)
