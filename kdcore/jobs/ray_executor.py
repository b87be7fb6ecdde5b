"""Queued runs executed as Ray tasks: Ray places them, the store stays the one record and the one queue.

A driver (`kdcore worker --ray`) claims a queued run from the store when the cluster has room for one more,
under a worker name of its own per task, and starts a Ray task that calls execute_job on whatever node Ray
picks, against the same store URL. The task's heartbeat renews the lease and reads the cancel flag exactly as a
local worker's does. Ray does not retry a task (max_retries=0): a lost node's run is recorded interrupted, by
this driver when Ray reports the task lost, or by any reader once its lease expires, and is resumed through the
store like any other.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from kdcore.store import Store, _sqlite_path, this_worker

INSTALL = 'Ray is not installed: pip install -e ".[ray]" (or pip install ray)'
CANCEL_GRACE_S = 30.0  # a cancelled run's task stops at its next step; past this it is ended with ray.cancel
# what a task on another node must see as the driver does
SHARED_ENV = ("KDCORE_ARTEFACT_ROOT", "KDCORE_DATA_ROOT", "KDCORE_LEASE_GRACE_S", "KDCORE_CPU_THREADS",
              "KDCORE_CPU_WATCH")


def run_resources(device: str, cluster: dict[str, float]) -> dict[str, float]:
    """The Ray resources a run asks for: one CPU, and a GPU for a CUDA run (or an "auto" one on a cluster with GPUs)."""
    wants_gpu = device.startswith("cuda") or (device == "auto" and cluster.get("GPU", 0) >= 1)
    return {"num_cpus": 1, "num_gpus": 1} if wants_gpu else {"num_cpus": 1}


def execute_remote(url: str, run_id: int, worker: str, env: dict[str, str]) -> str:
    """The Ray task: executes a run the driver claimed as `worker`, on this node, against the store at `url`.

    ray.cancel (not forced) interrupts the main thread with SIGINT: the run then stops at its next step and
    is recorded interrupted, with its metrics so far, as a local worker's run on Ctrl-C.
    """
    from kdcore.jobs.worker import execute_job

    os.environ.update(env)
    interrupt = threading.Event()
    try:
        previous = signal.signal(signal.SIGINT, lambda *_: interrupt.set())
    except ValueError:  # not the main thread (a threaded actor): ray.cancel then acts through the store only
        previous = None
    try:
        return execute_job(Store(url), run_id, worker=worker, interrupt=interrupt)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)  # Ray reuses this process for other tasks


def _last_line(err: BaseException) -> str:
    """Ray's error in one plain line: its messages carry a remote traceback and terminal colours."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(err)).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"[:500]


@dataclass
class Task:
    run_id: int
    worker: str
    resources: dict[str, float]
    cancel_seen: Optional[float] = None  # when the driver first saw the run's cancel flag
    forced: bool = field(default=False)  # ended with ray.cancel(force=True)


class RayExecutor:
    """Claims queued runs from `store` and runs each as a Ray task, as many at once as the cluster has room for.

    Args:
        store: the queue and the record; every node must reach its URL (PostgreSQL on a real cluster).
        address: the Ray cluster ("auto", "ray://host:10001", a GCS address); None: ray.init's default.
        groups: claim runs of these groups only; default any.
    """

    def __init__(self, store: Store, address: Optional[str] = None, *, poll_s: float = 1.0,
                 groups: Optional[list[str]] = None):
        self.store = store
        path = _sqlite_path(store.url)  # a task may start in another folder than the driver's
        self.url = store.url if path is None else f"sqlite:///{path.resolve()}"
        self.address = address or None
        self.poll_s = poll_s
        self.groups = groups
        self.in_flight: dict[Any, Task] = {}  # ObjectRef -> its run
        self.done: list[tuple[int, str]] = []
        self._count = 0
        self.env = {k: os.environ[k] for k in SHARED_ENV if k in os.environ}
        self.env.setdefault("KDCORE_ARTEFACT_ROOT", str(store.artefact_root.resolve()))

    def run(self, stop: threading.Event, interrupt: Optional[threading.Event] = None, *,
            exit_when_idle: bool = False, resume_interrupted: bool = False) -> list[tuple[int, str]]:
        """Runs queued runs until `stop` or `interrupt` (which also interrupts the runs in flight) is set.

        Returns:
            (run number, final status) of each run it started.
        """
        import ray

        interrupt = interrupt or threading.Event()
        if not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=False, include_dashboard=False)
        remote = ray.remote(max_retries=0)(execute_remote)
        while not (stop.is_set() or interrupt.is_set()):
            self._expire_stale(resume_interrupted)
            started = self._start_while_room(ray, remote)
            if self.in_flight:
                ready, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=self.poll_s)
                for ref in ready:
                    self._collect(ray, ref)
                self._end_cancelled(ray)
            elif not started:
                if exit_when_idle:
                    break
                stop.wait(self.poll_s)
        if self.in_flight:
            self._interrupt_all(ray, stop_runs=interrupt.is_set())
        return self.done

    def _free(self, ray) -> dict[str, float]:
        """The cluster's resources (alive nodes only) less what this driver's tasks hold."""
        free = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
        for task in self.in_flight.values():
            free["CPU"] = free.get("CPU", 0) - task.resources.get("num_cpus", 0)
            free["GPU"] = free.get("GPU", 0) - task.resources.get("num_gpus", 0)
        return free

    def _start_while_room(self, ray, remote) -> int:
        """Claims and starts runs while one more fits: a claimed run must start at once, or its lease runs out."""
        started = 0
        while True:
            free, cluster = self._free(ray), ray.cluster_resources()
            if free.get("CPU", 0) < 1 or (cluster.get("GPU", 0) >= 1 and free.get("GPU", 0) < 1):
                return started
            self._count += 1
            worker = this_worker(f"ray{self._count}")
            run_id = self.store.claim(worker, groups=self.groups)
            if run_id is None:
                return started
            device = str(((self.store.get_run(run_id).config or {}).get("train") or {}).get("device", "auto"))
            resources = run_resources(device, cluster)
            if resources.get("num_gpus") and cluster.get("GPU", 0) < 1:
                self.store.finish_run(run_id, "failed", error=f"the run asks for {device}, and the Ray cluster has "
                                      "no GPU", worker=worker)
                self.done.append((run_id, "failed"))
                continue
            ref = remote.options(**resources).remote(self.url, run_id, worker, self.env)
            self.in_flight[ref] = Task(run_id, worker, resources)
            print(f"run {run_id}: {self.store.get_run(run_id).name} (Ray task, {resources})", file=sys.stderr,
                  flush=True)
            started += 1

    def _collect(self, ray, ref) -> None:
        """Records a finished task's outcome; a lost task's run is recorded interrupted, if still ours."""
        task = self.in_flight.pop(ref)
        try:
            status = ray.get(ref)
        except Exception as err:  # the node or the worker process died, or the task was cancelled by force
            status = "cancelled" if task.forced else "interrupted"
            why = ("cancelled: its Ray task did not stop within " f"{CANCEL_GRACE_S:g} s and was ended"
                   if task.forced else f"its Ray task was lost before the run finished (the node or its worker process "
                   f"died): {_last_line(err)}")
            if not self.store.finish_run(task.run_id, status, error=why, worker=task.worker):
                status = self.store.get_run(task.run_id).status  # another process recorded it first
        self.done.append((task.run_id, status))

    def _end_cancelled(self, ray) -> None:
        """Ends with ray.cancel the tasks of runs cancelled in the store that did not stop on their own."""
        now = time.monotonic()
        for ref, task in list(self.in_flight.items()):
            if task.cancel_seen is None:
                if self.store.get_run(task.run_id).cancel_requested:
                    task.cancel_seen = now
            elif not task.forced and now - task.cancel_seen > CANCEL_GRACE_S:
                task.forced = True
                ray.cancel(ref, force=True)

    def _interrupt_all(self, ray, stop_runs: bool) -> None:
        """On `interrupt`, asks every task to stop at its next step; waits for them to record their runs."""
        if stop_runs:
            for ref in self.in_flight:
                ray.cancel(ref, force=False)
        for ref in list(self.in_flight):
            self._collect(ray, ref)

    def _expire_stale(self, resume_interrupted: bool) -> None:
        for run_id in self.store.expire_leases():
            print(f"run {run_id}: no heartbeat within KDCORE_LEASE_GRACE_S: marked interrupted", file=sys.stderr,
                  flush=True)
        if resume_interrupted:
            from kdcore.jobs.service import RunService

            RunService(self.store, here=False).resume_interrupted()
