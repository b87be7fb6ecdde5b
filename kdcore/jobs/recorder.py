"""Turns a run's events into batched metric rows and its live state; the heartbeat stores the state."""
from __future__ import annotations

import threading
import time
from typing import Callable, Optional

from kdcore.engine.events import Event
from kdcore.jobs.live import LiveState
from kdcore.store import HEARTBEAT_S, Store

FLUSH_SECONDS = 2.0  # metric rows are written at each epoch end or at least this often
HISTORY_LIMIT = 5000  # step points kept in memory per run


class Recorder:
    """The trainer's callback: metric rows to the store in batches, progress into `live`."""

    def __init__(self, store: Store, live: LiveState, listener: Optional[Callable[[Event], None]] = None,
                 on_phase: Callable[[], None] = lambda: None):
        self.store, self.live, self.listener, self.on_phase = store, live, listener, on_phase
        self.lock = threading.Lock()
        self.buffer: list[dict] = []
        self.last_flush = time.monotonic()
        self.stored_any = False  # the run's first rows are written at once: Live shows a first point at once

    def __call__(self, event: Event) -> None:
        rows = [dict(phase=event.phase, kind=event.kind, step=event.step, epoch=event.epoch, name=k, value=float(v))
                for k, v in event.metrics.items()]
        with self.lock:
            live = self.live
            if event.kind == "plan":
                live.phases = list(event.info.get("phases", live.phases))
                live.planned_steps = dict(event.info.get("steps", {}))
            elif event.kind == "phase":
                live.phase, live.epoch, live.step = event.phase, event.epoch, event.step  # > 0 when resumed
                live.epochs = event.info.get("epochs", 0)
                live.steps_per_epoch = event.info.get("steps_per_epoch", 0)
                live.phase_started = time.time()
                live.begin_pace()
            elif event.kind in ("step", "epoch"):
                live.epoch, live.step = event.epoch, event.step
                if "images_per_s" in event.metrics:
                    live.images_per_s = event.metrics["images_per_s"]
                live.history.extend(rows)
                if len(live.history) > HISTORY_LIMIT:
                    del live.history[: len(live.history) - HISTORY_LIMIT]
            elif event.kind == "summary":
                live.summary = dict(event.info)
        if event.kind == "phase" and "resumed_from_epoch" in event.info:
            # a phase trained here replaces whatever an earlier attempt stored past its last saved epoch
            self.flush()
            self.store.delete_metrics_after(self.live.run_id, event.phase, event.info["resumed_from_epoch"])
        self.buffer.extend(rows)
        if event.kind == "epoch" or time.monotonic() - self.last_flush > FLUSH_SECONDS or not self.stored_any:
            self.flush()
        if event.kind == "phase":
            self.on_phase()  # store the new phase now, not at the next heartbeat
        if self.listener is not None:
            self.listener(event)

    def flush(self) -> None:
        if self.buffer:
            rows, self.buffer = self.buffer, []
            self.store.add_metrics(self.live.run_id, rows)
            self.stored_any = True
        self.last_flush = time.monotonic()

    def stored_state(self) -> tuple[dict, str]:
        with self.lock:
            return self.live.stored(), self.live.phase


class Heartbeat:
    """Renews a run's lease every HEARTBEAT_S seconds with its progress, and reads its cancel flag."""

    def __init__(self, store: Store, run_id: int, worker: str, recorder: Recorder, interval: float = HEARTBEAT_S):
        self.store, self.run_id, self.worker, self.recorder, self.interval = store, run_id, worker, recorder, interval
        self.cancel = threading.Event()  # someone asked to cancel the run
        self.lost = threading.Event()  # the lease is gone: another process marked the run interrupted
        self.store_gone: Optional[str] = None  # why the store's file is no longer there, once it is not
        self._poke = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"kdcore-heartbeat-{run_id}")

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._poke.set()
        self._thread.join(10)

    def poke(self) -> None:
        self._poke.set()

    def beat(self) -> None:
        self.store_gone = self.store_gone or self.store.gone()
        if self.store_gone:
            return  # a write now would go into a deleted file and be lost with it
        live, phase = self.recorder.stored_state()
        answer = self.store.heartbeat(self.run_id, self.worker, live, phase or None)
        if answer == "cancel":
            self.cancel.set()
        elif answer == "lost":
            self.lost.set()

    def _loop(self) -> None:
        while not self._done.is_set():
            try:
                self.beat()
            except Exception:  # a busy or unreachable store: try again at the next beat
                pass
            self._poke.wait(self.interval)
            self._poke.clear()
