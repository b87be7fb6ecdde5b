"""A worker: claims queued runs from the store, executes the stored config, records the outcome.

Every executor is one of these: the dashboard's background thread, `kdcore worker` on
any machine, and `kdcore train` for the run it submits itself.
"""
from __future__ import annotations

import errno
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

import torch

from kdcore.config import ConfigError, RunConfig
from kdcore.configure import build_config
from kdcore.engine import distributed
from kdcore.engine.checkpoint import CheckpointError, NoSpaceLeft
from kdcore.engine.device import describe_device, resolve_device
from kdcore.engine.events import Event
from kdcore.engine.run import execute_run
from kdcore.engine.sources import StoredRun, sibling_finder, teacher_sources
from kdcore.engine.trainer import TrainingDiverged
from kdcore.jobs.attempts import Attempt
from kdcore.jobs.live import LiveState
from kdcore.jobs.recorder import Heartbeat, Recorder
from kdcore.jobs.service import RunService
from kdcore.record import failure
from kdcore.record.folder import LAST_SUFFIX, RunFolder
from kdcore.record.phases import BASELINE, STUDENT, TEACHER
from kdcore.store import Store, StoreError, StoreFull, StoreGone, lease_grace_s, this_worker


class StoreRuns:
    """The engine's look-ups of stored runs (kdcore.engine.sources.RunRecords), read from a store."""

    def __init__(self, store: Store):
        self.store = store

    def folder(self, run_id: int) -> Path:
        return self.store.run_dir(run_id)

    def run(self, run_id: int) -> StoredRun:
        return self._stored(self.store.get_run(run_id))

    def group(self, name: str) -> list[StoredRun]:
        return [self._stored(run) for run in self.store.list_runs(group=name)]

    def _stored(self, run) -> StoredRun:
        return StoredRun(id=run.id, folder=self.store.run_dir(run.id), status=run.status, summary=run.summary,
                         config=run.config, teacher_arch=run.teacher_arch)


def choose_device(worker_device: Optional[torch.device], wanted: torch.device) -> torch.device:
    """Where a run trains: its worker's own device when of the kind the config asks for.

    A worker on cuda:1 keeps a plain "cuda" (or "auto" on a GPU machine) run on cuda:1, so
    several workers spread over the GPUs; a config asking for another kind gets that kind.
    """
    if worker_device is None or worker_device.type != wanted.type:
        return wanted
    return worker_device


def describe_error(err: BaseException) -> str:
    """A failure in words for the runs table; the traceback is kept after a blank line."""
    known = (CheckpointError, TrainingDiverged, ConfigError, FileNotFoundError, ValueError, RuntimeError, KeyError)
    headline = str(err) if isinstance(err, known) and str(err) else f"{type(err).__name__}: {err}"
    if isinstance(err, KeyError) and err.args:
        headline = str(err.args[0])
    return headline + "\n\n" + "".join(traceback.format_exception(err))[-4000:]


def cuda_context_lost(err: BaseException) -> bool:
    """True when `err` (or an error it was raised from) is a CUDA device-side failure.

    After one (an illegal address, a device-side assert) the process's CUDA context is
    unusable: every later run in it would fail too. torch.AcceleratorError is how PyTorch
    raises them; older releases raise a plain RuntimeError saying "CUDA error". Subclasses of
    RuntimeError (a checkpoint error quoting a path, say) are not matched on their words.
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        accelerator_error = getattr(torch, "AcceleratorError", None)
        if accelerator_error is not None and isinstance(err, accelerator_error):
            return True
        if type(err) is RuntimeError and ("CUDA error" in str(err) or "device-side assert" in str(err)):
            return True
        err = err.__cause__ or err.__context__
    return False


DEVICE_LOST = "the GPU failed (a CUDA device-side error); this worker takes no more runs"  # in such a run's error


def execute_job(store: Store, run_id: int, *, worker: str, device: Optional[torch.device] = None,
                interrupt: Optional[threading.Event] = None,
                listener: Optional[Callable[[Event], None]] = None,
                device_lost: Optional[threading.Event] = None) -> str:
    """Executes a run this worker has claimed, from its stored config, and records the outcome.

    While it runs, a heartbeat renews the lease with the run's progress and reads the cancel
    flag; a cancel stops it at the next step as "cancelled", `interrupt` (SIGTERM, SIGINT, a
    shutdown) as "interrupted", both with the metrics so far stored. A run that fails with a
    CUDA device-side error is recorded as failed, and `device_lost` is set: this process's
    CUDA context is unusable.

    Returns:
        The final status.
    """
    interrupt = interrupt or threading.Event()
    run = store.get_run(run_id)
    nproc = _nproc(run)
    if nproc > 1 and not distributed.launched():  # torchrun's rank 0 comes back here and runs it
        from kdcore.jobs.torchrun import launch

        return launch(store, run_id, worker=worker, nproc=nproc, interrupt=interrupt)
    attempt = Attempt(run)
    live = LiveState(run_id=run_id, status="running", run_started=time.time())
    pruning = _trial_pruning(store, run_id)
    recorder = Recorder(store, live, _listeners(listener, pruning))
    status, summary, error, kind = "failed", None, None, None
    with Heartbeat(store, run_id, worker, recorder) as beat:
        recorder.on_phase = beat.poke
        pruned = lambda: pruning is not None and pruning.pruned_epoch is not None  # noqa: E731
        stop = lambda: (beat.cancel.is_set() or beat.lost.is_set() or interrupt.is_set() or pruned()  # noqa: E731
                        or beat.store_gone is not None)
        try:
            if "config_json" in run.damaged:  # never train the defaults in place of an unreadable config
                raise ConfigError(f"run {run_id}'s stored config is damaged and cannot be read; "
                                  "start a new run from a config file")
            config = build_config(run.config)  # the stored config is the one that runs
            device = choose_device(device, resolve_device(config.train.device))
            attempt.device = describe_device(device)
            store.set_device(run_id, attempt.device)
            run_dir = store.run_dir(run_id)
            summary = execute_run(config, run_dir, callback=recorder, should_stop=stop, device=device,
                                  teacher_sources=teacher_sources(config, StoreRuns(store)),
                                  find_sibling=sibling_finder(config, run_id, StoreRuns(store)))
            if summary.get("cancelled"):
                status = "cancelled" if beat.cancel.is_set() or pruned() else "interrupted"
                if pruned() and not beat.cancel.is_set():
                    error = pruning.reason
                elif status == "interrupted":
                    error = "the worker was stopped (SIGTERM, Ctrl-C or a shutdown) before the run finished"
            else:
                status = "completed"
        except Exception as err:  # a failed run is stored with its reason; the worker goes on
            error, status, kind = describe_error(err), "failed", failure_kind(err)
            if kind == failure.DEVICE_LOST:
                error = f"{DEVICE_LOST}: {error}"
                if device_lost is not None:
                    device_lost.set()
        finally:
            try:
                if beat.store_gone is None:
                    recorder.flush()
                    _record_files(store, run_id)  # also a stopped or failed run's: its finished phases are usable
            except Exception as err:  # losing some curve points must not leave the run 'running'
                error = (error or "") + f"\nsome metrics could not be stored: {err}"
    if beat.store_gone:
        raise StoreGone(f"{beat.store_gone} while run {run_id} trained; the worker stopped the run and kept its "
                        f"files in {store.run_dir(run_id)}")
    if beat.lost.is_set():
        return "interrupted"  # another process already recorded it so; its lease is not ours to end
    _finish(store, run_id, status, attempt.summary(run, summary, status), error, worker, kind)
    return status


def _nproc(run) -> int:
    """The processes a stored run asks to train on (train.nproc); 1 for a config that cannot be read."""
    try:
        return int((run.config.get("train") or {}).get("nproc", 1))
    except (AttributeError, TypeError, ValueError):
        return 1


def failure_kind(err: BaseException) -> Optional[str]:
    """The kind of a run's failure (kdcore.record.failure) where it decides what can be done next; else None."""
    if cuda_context_lost(err):
        return failure.DEVICE_LOST
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, TrainingDiverged):
            return failure.DIVERGED
        if isinstance(err, NoSpaceLeft) or (isinstance(err, OSError) and err.errno == errno.ENOSPC):
            return failure.NO_SPACE
        err = err.__cause__ or err.__context__
    return None


def _finish(store: Store, run_id: int, status: str, summary: Optional[dict], error: Optional[str],
            worker: str, kind: Optional[str] = None) -> None:
    """Records a run's end; a full disk gets one more try, as failed, after its partial files are gone."""
    try:
        store.finish_run(run_id, status, summary, error, worker=worker, failure=kind)
        return
    except StoreFull as err:
        full = err
    except StoreError as err:
        raise type(err)(f"{err}. Run {run_id} could not be recorded: it shows as running until its lease expires "
                        f"(KDCORE_LEASE_GRACE_S, {lease_grace_s():.0f} s), then as interrupted") from None
    for partial in RunFolder(store.run_dir(run_id)).partial_files():
        partial.unlink(missing_ok=True)
    try:
        store.make_room()
        store.finish_run(run_id, "failed", summary, f"{full}\n\n{error or ''}".strip(), worker=worker,
                         failure=failure.NO_SPACE)
    except StoreError:
        raise StoreFull(f"{full}. Run {run_id} could not be marked failed: it shows as running until its lease "
                        f"expires (KDCORE_LEASE_GRACE_S, {lease_grace_s():.0f} s), then as interrupted") from None


def _trial_pruning(store: Store, run_id: int):
    """The study's pruning for a run that trains one of its trials; None for any other run."""
    if store.trial_of_run(run_id) is None:
        return None
    from kdcore.studies import TrialPruning  # Optuna is loaded by runs of studies only

    return TrialPruning.for_run(store, run_id)


def _listeners(*listeners: Optional[Callable[[Event], None]]) -> Optional[Callable[[Event], None]]:
    chosen = [f for f in listeners if f is not None]
    if len(chosen) <= 1:
        return chosen[0] if chosen else None

    def each(event: Event) -> None:
        for f in chosen:
            f(event)
    return each


# the order weights files have always been registered in, so a run's list of files reads as before
_FIRST_ARTEFACTS = (TEACHER, STUDENT, BASELINE, STUDENT + LAST_SUFFIX, BASELINE + LAST_SUFFIX, TEACHER + LAST_SUFFIX)


def _record_files(store: Store, run_id: int) -> None:
    folder = RunFolder(store.run_dir(run_id))
    known = set(store.artefacts(run_id))
    weights = folder.weight_files()  # teacherN, teacherN_last, … of a run of several after the first ones
    in_order = sorted(weights, key=lambda kind: (_FIRST_ARTEFACTS.index(kind) if kind in _FIRST_ARTEFACTS
                                                 else len(_FIRST_ARTEFACTS), kind))
    for kind in in_order:
        if f"{kind}_weights" not in known:
            store.add_artefact(run_id, f"{kind}_weights", weights[kind])
    if folder.test_logits.is_file() and "test_logits" not in known:
        store.add_artefact(run_id, "test_logits", folder.test_logits)


class Worker:
    """Claims queued runs from a store, oldest first, and executes them one at a time.

    Args:
        store: the queue.
        device: "auto", "cpu", "cuda", "cuda:1", ...: where its runs train.
        name: told apart from other workers of the same process in the lease.
        groups: take only runs of these groups (`kdcore tune` runs its own study's trials); default any.
    """

    def __init__(self, store: Store, device: str = "auto", *, name: str = "", poll_s: float = 1.0,
                 listener_for: Optional[Callable[[int], Callable[[Event], None]]] = None,
                 groups: Optional[list[str]] = None):
        self.store = store
        self.groups = groups  # claim runs of these groups only (a study's trials); None: any run
        self.device = resolve_device(device)
        self.id = this_worker(name)
        self.poll_s = poll_s
        self.listener_for = listener_for
        self.current: Optional[int] = None
        self.device_lost = False  # a CUDA device-side error ended its loop
        self._left: set[int] = set()  # interrupted runs not resumed (their folder is gone), already said
        self.store_error: Optional[StoreError] = None  # the store fault that ended its loop, for serve()

    def serve(self, stop: threading.Event, interrupt: Optional[threading.Event] = None,
              **options) -> list[tuple[int, str]]:
        """`run` as a thread's target: a store fault ends the loop, is kept in `store_error` and sets `stop`,
        so every worker of this process stops on it instead of dying with a traceback."""
        try:
            return self.run(stop, interrupt, **options)
        except StoreError as err:
            self.store_error = err
            stop.set()
            return []

    def run(self, stop: threading.Event, interrupt: Optional[threading.Event] = None, *,
            max_runs: Optional[int] = None, exit_when_idle: bool = False,
            wake: Optional[threading.Event] = None, resume_interrupted: bool = False) -> list[tuple[int, str]]:
        """Runs queued runs until `stop` (or `interrupt`, which also ends the current run) is set.

        With `resume_interrupted`, interrupted runs (a killed worker, a restarted machine) go back
        in the queue and are resumed from their last saved epoch.

        Returns:
            (run number, final status) of each run it executed.
        """
        interrupt = interrupt or threading.Event()
        device_lost = threading.Event()
        done: list[tuple[int, str]] = []
        while not (stop.is_set() or interrupt.is_set()) and (max_runs is None or len(done) < max_runs):
            self.store.check_present()
            try:
                self._expire_stale()
                if resume_interrupted:
                    self._requeue_interrupted()
                run_id = self.store.claim(self.id, groups=self.groups)
            except StoreError:
                raise  # the file itself is the problem (gone, full, unwritable): polling would meet it again
            except Exception as err:  # the store is briefly unreachable: keep polling
                print(f"kdcore worker {self.id}: could not read the queue: {err}", file=sys.stderr)
                run_id = None
            if run_id is None:
                if exit_when_idle:
                    break
                (wake or stop).wait(self.poll_s)
                if wake is not None:
                    wake.clear()
                continue
            self.current = run_id
            try:
                listener = self.listener_for(run_id) if self.listener_for else None
                status = execute_job(self.store, run_id, worker=self.id, device=self.device, interrupt=interrupt,
                                     listener=listener, device_lost=device_lost)
            except StoreError:
                raise  # the store itself is gone, full or unwritable: every later run would meet it too
            except Exception as err:  # the store failed mid-run; the lease will expire and say so
                print(f"kdcore worker {self.id}: run {run_id} could not be recorded: {err}", file=sys.stderr)
                status = "failed"
            finally:
                self.current = None
            done.append((run_id, status))
            if status == "failed" and self.store.get_run(run_id).failure == failure.NO_SPACE:
                raise StoreFull(f"run {run_id} failed: {self.store.get_run(run_id).error.splitlines()[0]}; "
                                "this worker stops rather than fail every run after it")
            if device_lost.is_set():
                # its CUDA context cannot run anything more: taking runs would only fail them
                print(f"kdcore worker {self.id}: run {run_id} hit a CUDA device-side error on {self.device}; "
                      "this worker stops taking runs (restart it to use the GPU again)", file=sys.stderr)
                self.device_lost = True
                break
        return done

    def _requeue_interrupted(self) -> None:
        """Puts interrupted runs back in the queue, except those whose folder is gone (said once per run)."""
        for run_id, why in RunService(self.store, here=False).resume_interrupted():
            if run_id not in self._left:
                self._left.add(run_id)
                print(f"kdcore worker {self.id}: not resuming {why}", file=sys.stderr, flush=True)

    def _expire_stale(self) -> None:
        """Marks runs of dead workers interrupted, so none stays `running` when nobody lists runs."""
        for run_id in self.store.expire_leases():  # at most every few seconds, as readers do
            print(f"kdcore worker {self.id}: run {run_id} had no heartbeat for {lease_grace_s():g} s "
                  "(KDCORE_LEASE_GRACE_S): marked interrupted", file=sys.stderr, flush=True)


def run_here(store: Store, config: RunConfig, *, interrupt: Optional[threading.Event] = None,
             listener: Optional[Callable[[Event], None]] = None) -> tuple[int, str]:
    """Submits a run already claimed by this process and executes it here; returns (number, status)."""
    worker = this_worker("here")
    run_id = store.create_run(config, worker=worker)
    return run_id, execute_job(store, run_id, worker=worker, interrupt=interrupt, listener=listener)
