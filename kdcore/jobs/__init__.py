"""Background jobs: a queue, one worker thread per device, live state for a UI.

The worker wires the trainer's events to the store (metrics in batches) and to
a live snapshot; it never touches any UI.
"""
from __future__ import annotations

import copy
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from kdcore.config import RunConfig
from kdcore.engine.checkpoint import CheckpointError
from kdcore.engine.device import describe_device, resolve_device, share_cpu_with_ui
from kdcore.engine.events import Event
from kdcore.engine.run import TEST_LOGITS_FILE, Reused, baseline_key, execute_run, teacher_key
from kdcore.engine.trainer import TrainingDiverged
from kdcore.experiments import expand
from kdcore.store import Store

FLUSH_SECONDS = 3.0  # metric rows are written at each epoch end or at least this often
HISTORY_LIMIT = 5000  # step points kept in memory per live job


@dataclass
class LiveState:
    """What a UI shows of a job while it runs; copied out under a lock."""

    run_id: int
    status: str = "queued"
    phase: str = ""
    epoch: int = 0
    epochs: int = 0
    step: int = 0  # step within the phase
    steps_per_epoch: int = 0
    images_per_s: float = 0.0
    phase_started: float = 0.0  # time.time() when the phase began
    phases: list[str] = field(default_factory=list)  # the phases this run will go through
    history: list[dict] = field(default_factory=list)  # rows: phase, kind, step, epoch, name, value
    summary: dict = field(default_factory=dict)
    error: Optional[str] = None

    @property
    def phase_progress(self) -> float:
        total = self.epochs * self.steps_per_epoch
        return min(1.0, self.step / total) if total else 0.0

    @property
    def eta_s(self) -> Optional[float]:
        """Seconds left in the current phase, from its pace so far."""
        progress = self.phase_progress
        if progress <= 0 or not self.phase_started:
            return None
        elapsed = time.time() - self.phase_started
        return elapsed * (1 - progress) / progress


class _Recorder:
    """Turns events into batched metric rows and live state."""

    def __init__(self, store: Store, live: LiveState, lock: threading.Lock, listener: Optional[Callable[[Event], None]]):
        self.store, self.live, self.lock, self.listener = store, live, lock, listener
        self.buffer: list[dict] = []
        self.last_flush = time.monotonic()

    def __call__(self, event: Event) -> None:
        rows = [dict(phase=event.phase, kind=event.kind, step=event.step, epoch=event.epoch, name=k, value=float(v))
                for k, v in event.metrics.items()]
        with self.lock:
            live = self.live
            if event.kind == "phase":
                live.phase, live.epoch, live.step = event.phase, 0, 0
                live.epochs = event.info.get("epochs", 0)
                live.steps_per_epoch = event.info.get("steps_per_epoch", 0)
                live.phase_started = time.time()
            elif event.kind in ("step", "epoch"):
                live.epoch, live.step = event.epoch, event.step
                if "images_per_s" in event.metrics:
                    live.images_per_s = event.metrics["images_per_s"]
                live.history.extend(rows)
                if len(live.history) > HISTORY_LIMIT:
                    del live.history[: len(live.history) - HISTORY_LIMIT]
            elif event.kind == "summary":
                live.summary = dict(event.info)
        self.buffer.extend(rows)
        if event.kind == "epoch" or time.monotonic() - self.last_flush > FLUSH_SECONDS:
            self.flush()
        if self.listener is not None:
            self.listener(event)

    def flush(self) -> None:
        if self.buffer:
            self.store.add_metrics(self.live.run_id, self.buffer)
            self.buffer = []
        self.last_flush = time.monotonic()


def _teacher_checkpoint(store: Store, config: RunConfig) -> Optional[Reused]:
    teacher = config.teacher
    if teacher.source == "checkpoint":
        return Reused(Path(teacher.checkpoint))
    if teacher.source == "run":
        path = store.run_dir(teacher.run_id) / "teacher.pt"
        if not path.is_file():
            raise CheckpointError(f"run {teacher.run_id} has no stored teacher weights ({path} is missing)")
        source = store.get_run(teacher.run_id)
        if source.status != "completed":
            raise CheckpointError(f"run {teacher.run_id} is {source.status}; only a completed run's teacher can be reused")
        if source.teacher_arch != teacher.arch:
            raise CheckpointError(f"run {teacher.run_id}'s teacher is {source.teacher_arch!r}, not {teacher.arch!r}")
        return Reused(path, teacher.run_id, source.summary)
    return _sibling_phase(store, config, "teacher", teacher_key(config))


def _sibling_phase(store: Store, config: RunConfig, phase: str, key: str) -> Optional[Reused]:
    """A completed run of the same group whose `phase` trained to the weights this run would train."""
    if not config.group:
        return None
    for run in sorted(store.list_runs(status=["completed"], group=config.group), key=lambda r: r.id):
        summary = run.summary
        path = store.run_dir(run.id) / f"{phase}.pt"
        if summary.get(f"{phase}_key") == key and path.is_file():
            return Reused(path, summary.get(f"{phase}_from_run", run.id), summary)
    return None


def describe_error(err: BaseException) -> str:
    """A failure in words for the runs table; the traceback is kept after a blank line."""
    known = (CheckpointError, TrainingDiverged, FileNotFoundError, ValueError, RuntimeError, KeyError)
    headline = str(err) if isinstance(err, known) and str(err) else f"{type(err).__name__}: {err}"
    if isinstance(err, KeyError) and err.args:
        headline = str(err.args[0])
    return headline + "\n\n" + "".join(traceback.format_exception(err))[-4000:]


def execute_job(store: Store, run_id: int, config: RunConfig, *, device: Optional[torch.device] = None,
                stop: Optional[threading.Event] = None, live: Optional[LiveState] = None,
                lock: Optional[threading.Lock] = None, listener: Optional[Callable[[Event], None]] = None) -> str:
    """Runs a stored, queued run to its end and records the outcome; returns the final status."""
    stop = stop or threading.Event()
    live = live or LiveState(run_id=run_id)
    lock = lock or threading.Lock()
    recorder = _Recorder(store, live, lock, listener)
    status, summary, error = "failed", None, None
    try:
        wanted = resolve_device(config.train.device)
        if device is None or device.type != wanted.type:  # a worker keeps its own GPU for a plain "cuda"
            device = wanted
        store.mark_running(run_id, describe_device(device))
        with lock:
            live.status = "running"
        run_dir = store.run_dir(run_id)
        reuse_baseline = _sibling_phase(store, config, "baseline", baseline_key(config)) if config.baseline else None
        summary = execute_run(config, run_dir, callback=recorder, should_stop=stop.is_set, device=device,
                              teacher_checkpoint=_teacher_checkpoint(store, config), reuse_baseline=reuse_baseline)
        status = "cancelled" if summary.get("cancelled") else "completed"
        for kind in ("teacher", "student", "baseline", "student_last", "baseline_last", "teacher_last"):
            path = run_dir / f"{kind}.pt"
            if path.is_file():
                store.add_artefact(run_id, f"{kind}_weights", path)
        if (run_dir / TEST_LOGITS_FILE).is_file():
            store.add_artefact(run_id, "test_logits", run_dir / TEST_LOGITS_FILE)
    except Exception as err:  # a failed run is stored with its reason; the worker goes on
        error = describe_error(err)
        status = "failed"
    finally:
        try:
            recorder.flush()
        except Exception as err:  # losing some curve points must not leave the run 'running'
            error = (error or "") + f"\nsome metrics could not be stored: {err}"
        store.finish_run(run_id, status, summary, error)
        with lock:
            live.status = status
            live.error = error
            if summary:
                live.summary = summary
    return status


class JobManager:
    """A process-wide queue of runs with one worker thread per device.

    Args:
        store: where runs are recorded.
        devices: one worker per entry; default one for the best available device.
    """

    def __init__(self, store: Optional[Store] = None, devices: Optional[list[str]] = None):
        self.store = store or Store()
        self.recovered = self.store.recover_interrupted()
        if devices is None:
            n = torch.cuda.device_count()
            devices = [f"cuda:{i}" for i in range(n)] if n else ["auto"]
        self._queue: "queue.Queue[Optional[int]]" = queue.Queue()
        self._lock = threading.Lock()
        self._configs: dict[int, RunConfig] = {}
        self._pending: list[int] = []
        self._live: dict[int, LiveState] = {}
        self._stops: dict[int, threading.Event] = {}
        self._finished = threading.Condition(self._lock)
        resolved = [resolve_device(d) for d in devices]
        if any(d.type == "cpu" for d in resolved):
            share_cpu_with_ui()
        self._workers = [threading.Thread(target=self._work, args=(d,), daemon=True, name=f"kdcore-worker-{d}")
                         for d in resolved]
        for w in self._workers:
            w.start()

    def submit(self, config: RunConfig) -> int:
        """Queues a validated config; returns its run id at once."""
        run_id = self.store.create_run(config)
        with self._lock:
            self._configs[run_id] = config
            self._pending.append(run_id)
            self._live[run_id] = LiveState(run_id=run_id, phases=["teacher", "student"] + (["baseline"] if config.baseline else []))
            self._stops[run_id] = threading.Event()
        self._queue.put(run_id)
        return run_id

    def submit_many(self, configs: list[RunConfig]) -> list[int]:
        """Queues configs in order (a seed group or a sweep); returns their run ids."""
        return [self.submit(cfg) for cfg in configs]

    def submit_sweep(self, config: RunConfig, temperatures: list[float], alphas: list[float], group: str,
                     seeds: Optional[list[int]] = None, teacher_per_seed: bool = False) -> list[int]:
        """Queues one run per (seed, T, alpha), all in one group; the group trains one teacher."""
        return self.submit_many(expand(config, seeds=seeds, temperatures=temperatures, alphas=alphas, group=group,
                                       teacher_per_seed=teacher_per_seed))

    def cancel(self, run_id: int) -> bool:
        """Stops a running job at its next step, or drops a queued one. False if it is not active here."""
        with self._lock:
            stop = self._stops.get(run_id)
            if stop is None or self._live[run_id].status not in ("queued", "running"):
                return False
            stop.set()
            if run_id in self._pending:
                self._pending.remove(run_id)
                self._live[run_id].status = "cancelled"
                queued = True
            else:
                queued = False
        if queued:
            self.store.finish_run(run_id, "cancelled", error=None)
            with self._lock:
                self._finished.notify_all()
        return True

    def snapshot(self, run_id: int) -> Optional[LiveState]:
        """A copy of a job's live state, or None if this process never ran it."""
        with self._lock:
            live = self._live.get(run_id)
            return copy.deepcopy(live) if live is not None else None

    def queued(self) -> list[int]:
        with self._lock:
            return list(self._pending)

    def running(self) -> list[int]:
        with self._lock:
            return [r for r, s in self._live.items() if s.status == "running"]

    def active(self) -> list[int]:
        """Running first, then queued in order."""
        with self._lock:
            running = [r for r, s in self._live.items() if s.status == "running"]
            return running + list(self._pending)

    def wait(self, run_id: int, timeout: Optional[float] = None) -> str:
        """Blocks until the run leaves the queue and finishes; returns its status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if run_id not in self._live:
                raise KeyError(f"run {run_id} was not submitted to this job manager")
            while self._live[run_id].status in ("queued", "running"):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"run {run_id} still {self._live[run_id].status} after {timeout} s")
                self._finished.wait(left)
            return self._live[run_id].status

    def shutdown(self, cancel_running: bool = True, timeout: float = 30.0) -> None:
        if cancel_running:
            for run_id in self.active():
                self.cancel(run_id)
        for _ in self._workers:
            self._queue.put(None)
        for w in self._workers:
            w.join(timeout)

    def _work(self, device: torch.device) -> None:
        while True:
            run_id = self._queue.get()
            if run_id is None:
                return
            with self._lock:
                if run_id not in self._pending:  # cancelled while queued
                    continue
                self._pending.remove(run_id)
                config, stop, live = self._configs[run_id], self._stops[run_id], self._live[run_id]
                live.status = "running"
            try:
                execute_job(self.store, run_id, config, device=device, stop=stop, live=live, lock=self._lock)
            except Exception as err:  # the store itself failed; keep the worker alive for the next job
                with self._lock:
                    live.status, live.error = "failed", f"the run store failed: {err}"
            finally:
                with self._lock:
                    self._finished.notify_all()


_managers: dict[str, JobManager] = {}
_managers_lock = threading.Lock()


def get_manager(store: Optional[Store] = None) -> JobManager:
    """The process-wide JobManager for a store's URL (default: the default store), created on first use."""
    store = store or Store()
    with _managers_lock:
        if store.url not in _managers:
            _managers[store.url] = JobManager(store)
        return _managers[store.url]
