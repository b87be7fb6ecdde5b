"""The dashboard's helper: submit to the store's queue, run local worker threads, read progress back.

Nothing here that the store does not also know: runs queued, run or cancelled by any
other process show and can be cancelled here, and the reverse.
"""
from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timezone
from typing import Optional

import torch

from kdcore.config import RunConfig
from kdcore.engine.device import share_cpu_with_ui
from kdcore.experiments import expand
from kdcore.jobs.live import LiveState
from kdcore.jobs.worker import Worker
from kdcore.store import RunNotFound, Store


WORKER_MODES = ("thread", "process", "none")
RAY = "ray"  # the one worker process of a dashboard whose runs Ray places ($KDCORE_RAY_ADDRESS)


def ray_address() -> Optional[str]:
    """$KDCORE_RAY_ADDRESS: where the dashboard's runs go as Ray tasks ("" or "auto": ray.init's default);
    None, unset: its workers train here."""
    return os.environ.get("KDCORE_RAY_ADDRESS")
# How long a stopping worker gets from the signal to its exit before it is killed: inside the 10 s of
# `docker stop`, with room for the server's own exit.
STOP_GRACE_S = 8.0


def _threads_from_env() -> Optional[int]:
    """$KDCORE_CPU_THREADS; a value that is no count is said in one line and the default used instead."""
    from kdcore.engine.device import env_cpu_threads

    try:
        return env_cpu_threads()
    except ValueError as err:
        print(f"kdcore: {err}; using the default", file=sys.stderr)
        return None


class JobManager:
    """Submits runs to a store's queue and runs local workers for it: one per device.

    Args:
        store: the run store and queue.
        devices: one local worker per entry; default one per GPU, else one for the CPU.
        workers: "thread" runs them as threads of this process; "process" as `kdcore worker`
            child processes that stop with this one (the dashboard's choice: a thread beside
            the page server waits for Python's GIL while pages render, and the demo took twice
            as long); "none" runs nothing here, for runs executed by `kdcore worker` elsewhere.
        cpu_threads: training threads per CPU worker; default all cores but one, to leave one
            for a UI in the same process or machine ($KDCORE_CPU_THREADS overrides).

    A worker process that exits while this manager runs (killed, out of memory, or stopped
    after a CUDA device-side error, which leaves its process unable to use the GPU) is
    replaced by a fresh one, whose new CUDA context can train again. `restarts` counts them.
    """

    RESTART_CHECK_S = 1.0  # how often worker processes are checked
    RESTART_BACKOFF_S = (1.0, 60.0)  # the wait before replacing one that died young, doubling up to the cap

    def __init__(self, store: Optional[Store] = None, devices: Optional[list[str]] = None,
                 workers: str = "thread", cpu_threads: Optional[int] = None):
        if workers not in WORKER_MODES:
            raise ValueError(f"workers must be one of {', '.join(WORKER_MODES)}, not {workers!r}")
        self.store = store or Store()
        self.expired = self.store.expire_leases(force=True)
        if devices is None:
            n = torch.cuda.device_count()
            devices = [f"cuda:{i}" for i in range(n)] if n else ["auto"]
        if workers == "process" and not shared_store(self.store.url):
            workers = "thread"  # an in-memory store exists in this process only
        self.mode = workers
        self.devices = devices if workers != "none" else []
        self._stop, self._interrupt, self._wake = threading.Event(), threading.Event(), threading.Event()
        self._stop_deadline: Optional[float] = None  # monotonic time by which stopping workers must be gone
        self._stopping = threading.Lock()
        self.workers: list[Worker] = []
        self._threads: list[threading.Thread] = []
        self._children: list[subprocess.Popen] = []
        self.restarts = 0
        threads = cpu_threads or _threads_from_env() or max(1, (os.cpu_count() or 1) - 1)
        self.cpu_threads = threads
        if workers == "thread":
            self.workers = [Worker(self.store, d, name=f"thread{i}", poll_s=1.0) for i, d in enumerate(devices)]
            if any(w.device.type == "cpu" for w in self.workers):
                share_cpu_with_ui(threads)
            self._threads = [threading.Thread(target=w.serve, args=(self._stop, self._interrupt),
                                              kwargs={"wake": self._wake}, daemon=True,
                                              name=f"kdcore-worker-{w.device}") for w in self.workers]
            for t in self._threads:
                t.start()
            from kdcore.studies import StudyDrivers  # a worker process drives studies itself (kdcore worker)

            StudyDrivers(self.store, self._stop).start()
            atexit.register(self.shutdown)  # a run still training at exit ends interrupted, not 'running'
        elif workers == "process":
            self._env = dict(os.environ, KDCORE_CPU_THREADS=str(threads),
                             KDCORE_ARTEFACT_ROOT=str(self.store.artefact_root.resolve()))
            if ray_address() is not None:  # one driver places every run on the Ray cluster, whatever its devices
                self.devices = [RAY]
            self._children = [self._spawn(d) for d in self.devices]
            self._threads = [threading.Thread(target=self._supervise, daemon=True, name="kdcore-worker-supervisor")]
            self._threads[0].start()
            atexit.register(self.shutdown)

    def describe_workers(self) -> str:
        """Who executes this process's runs, in a few words."""
        if self.mode == "none":
            return "no worker here: queued runs wait for `kdcore worker` on this store"
        if self.devices == [RAY]:
            return f"runs placed on the Ray cluster at {ray_address() or 'ray.init default'} (KDCORE_RAY_ADDRESS)"
        kind = "worker process" if self.mode == "process" else "worker thread"
        count = f"{len(self.devices)} {kind}{'es' if kind.endswith('s') else 's'}" if len(self.devices) > 1 else kind
        on_cpu = any(d in ("auto", "cpu") for d in self.devices) and not torch.cuda.is_available()
        threads = f", {self.cpu_threads} CPU thread{'s' if self.cpu_threads != 1 else ''}" if on_cpu else ""
        return f"{count} on {', '.join('CPU' if d == 'auto' and on_cpu else d for d in self.devices)}{threads}"

    def _spawn(self, device: str) -> subprocess.Popen:
        # its stdin is a pipe from this process: wake() writes a byte to it (wake_from_parent reads it)
        placed = ["--ray", ray_address()] if device == RAY else ["--devices", device]
        child = subprocess.Popen(
            [sys.executable, "-m", "kdcore", "--db", self.store.url, "worker", *placed,
             "--parent", str(os.getpid())], env=self._env, stdin=subprocess.PIPE)
        os.set_blocking(child.stdin.fileno(), False)  # a child still starting up never blocks a submit
        return child

    def _supervise(self) -> None:
        """Replaces worker processes that exit before shutdown; waits longer each time one dies young."""
        started = [time.monotonic()] * len(self._children)
        backoff = [0.0] * len(self._children)
        while not self._stop.wait(self.RESTART_CHECK_S):
            for i, child in enumerate(self._children):
                if child.poll() is None or self._stop.is_set():
                    continue
                lived = time.monotonic() - started[i]
                first, cap = self.RESTART_BACKOFF_S
                backoff[i] = first if lived > cap else min(cap, max(first, 2 * backoff[i]))
                print(f"kdcore: the worker on {self.devices[i]} exited with code {child.returncode} after "
                      f"{lived:.0f} s; a fresh one starts in {backoff[i]:.0f} s", file=sys.stderr)
                if self._stop.wait(backoff[i]):
                    return
                child.stdin.close()
                self._children[i] = self._spawn(self.devices[i])
                started[i] = time.monotonic()
                self.restarts += 1

    def _stop_children(self, deadline: float) -> None:
        for child in self._children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)  # its run ends as interrupted, metrics stored
        for child in self._children:
            try:
                child.wait(max(0.0, deadline - time.monotonic()))  # a run stops at its next step
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    # ---- submitting ------------------------------------------------------------------------
    def wake(self) -> None:
        """Tells local workers, threads or processes, to look at the queue now rather than at their next poll."""
        self._wake.set()
        for child in list(self._children):
            try:
                child.stdin.write(b"w")
                child.stdin.flush()
            except (OSError, ValueError):  # gone, stopping, or its pipe full of wakes it has not read yet
                pass

    def submit(self, config: RunConfig) -> int:
        """Queues a validated config; returns its run number at once."""
        run_id = self.store.create_run(config)
        self.wake()
        return run_id

    def submit_many(self, configs: list[RunConfig]) -> list[int]:
        """Queues configs in order (a seed group or a sweep); returns their run numbers."""
        return [self.submit(cfg) for cfg in configs]

    def submit_sweep(self, config: RunConfig, temperatures: list[float], alphas: list[float], group: str,
                     seeds: Optional[list[int]] = None, teacher_per_seed: bool = False) -> list[int]:
        """Queues one run per (seed, T, alpha), all in one group; the group trains one teacher."""
        return self.submit_many(expand(config, seeds=seeds, temperatures=temperatures, alphas=alphas, group=group,
                                       teacher_per_seed=teacher_per_seed))

    def cancel(self, run_id: int) -> bool:
        """Drops a queued run, or asks whichever worker runs it to stop at its next step."""
        from kdcore.jobs.service import RunService  # the one rule for cancelling, shared with the pages

        return RunService(self.store).cancel(run_id)

    # ---- reading ---------------------------------------------------------------------------
    def snapshot(self, run_id: int) -> Optional[LiveState]:
        """A run's progress and curves as stored, wherever it executes; None if it is not stored."""
        try:
            run = self.store.get_run(run_id)
        except RunNotFound:
            return None
        live = LiveState.from_stored(run_id, run.status, run.live, run.error, run.summary)
        if run.heartbeat_at is not None:  # stored naive, in UTC
            live.heartbeat_at = run.heartbeat_at.replace(tzinfo=run.heartbeat_at.tzinfo or timezone.utc).timestamp()
        if run.status == "running":
            live.history = self.store.metrics_frame([run_id]).drop(columns="run_id").to_dict("records")
        return live

    def queued(self) -> list[int]:
        return self.store.active_ids()[1]

    def running(self) -> list[int]:
        return self.store.active_ids()[0]

    def active(self) -> list[int]:
        """Running first, then queued in order."""
        running, queued = self.store.active_ids()
        return running + queued

    def wait(self, run_id: int, timeout: Optional[float] = None, poll_s: float = 0.2) -> str:
        """Blocks until the run is no longer queued or running; returns its status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.store.expire_leases()
            status = self.store.get_run(run_id).status
            if status not in ("queued", "running"):
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {status} after {timeout} s")
            time.sleep(poll_s)

    def begin_shutdown(self, grace: float = STOP_GRACE_S) -> None:
        """Starts stopping the local workers and returns at once; their current runs end as interrupted.

        Worker processes get SIGTERM now. shutdown() then waits for them until `grace` seconds after this
        call and kills those still alive, so a server can start this as soon as it is asked to stop and let
        the grace run beside its own shutdown. Calling it again changes nothing.
        """
        with self._stopping:
            if self._stop_deadline is not None:
                return
            self._stop_deadline = time.monotonic() + grace
        self._stop.set()
        self._interrupt.set()
        self._wake.set()
        for child in self._children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def shutdown(self, cancel_running: bool = True, timeout: float = 30.0) -> None:
        """Stops the local workers; with cancel_running their current runs end as interrupted.

        After begin_shutdown() it waits only until that call's grace is over; `timeout` bounds the wait
        for worker threads otherwise, and worker processes get STOP_GRACE_S.
        """
        begun = self._stop_deadline is not None
        if cancel_running:
            self.begin_shutdown()
        self._stop.set()
        self._wake.set()
        deadline = self._stop_deadline
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()) if begun else timeout)
        # a supervisor may have spawned a replacement just before the stop: it is signalled here too
        self._stop_children(deadline if deadline is not None else time.monotonic() + STOP_GRACE_S)


def wake_from_parent(wake: threading.Event, pipe=None) -> threading.Thread:
    """In a worker process a JobManager started (`kdcore worker --parent`): sets `wake` whenever the manager
    writes to the process's stdin (a run was submitted), so the run starts at once instead of at the next
    poll of the queue. Ends at end of file (the manager is gone)."""
    pipe = pipe if pipe is not None else sys.stdin.buffer

    def read() -> None:
        while True:
            try:
                got = os.read(pipe.fileno(), 4096)
            except OSError:
                return
            if not got:
                return
            wake.set()

    thread = threading.Thread(target=read, daemon=True, name="kdcore-wake-from-parent")
    thread.start()
    return thread


_managers: dict[str, JobManager] = {}
_managers_lock = threading.Lock()


def shared_store(url: str) -> bool:
    """Whether other processes can open the same store (not an in-memory SQLite database)."""
    return not (url.startswith("sqlite") and (":memory:" in url or url in ("sqlite://", "sqlite:///")))


def get_manager(store: Optional[Store] = None, workers: str = "thread") -> JobManager:
    """The process-wide JobManager for a store's URL (default: the default store), created on first use."""
    store = store or Store()
    with _managers_lock:
        if store.url not in _managers:
            _managers[store.url] = JobManager(store, workers=workers)
        return _managers[store.url]
