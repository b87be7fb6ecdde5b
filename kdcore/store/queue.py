"""The store as a queue: workers claim the oldest queued run and hold a lease renewed by heartbeats.

A cancel is a flag in the run's row, and a lease no heartbeat renewed within the grace period is
marked interrupted by whichever process looks next, so any process on any host can watch or stop any run.
"""
from __future__ import annotations

import json
import os
import socket
import time
from datetime import timedelta, timezone
from typing import Any, Iterable, Optional

from sqlalchemy import or_, update
from sqlmodel import Session, select

from kdcore.record.failure import STOPPED
from kdcore.store.frames import _loads
from kdcore.store.tables import ACTIVE, Run, utcnow

HEARTBEAT_S = 1.0  # how often a worker renews its lease, stores progress and reads the cancel flag
DEFAULT_GRACE_S = 60.0  # a running run whose lease is older than this is interrupted
EXPIRE_EVERY_S = 5.0  # readers look for expired leases at most this often


def host_name() -> str:
    """This machine's name as workers report it ($KDCORE_HOST overrides, e.g. in a container)."""
    return os.environ.get("KDCORE_HOST") or socket.gethostname()


def this_worker(suffix: str = "") -> str:
    return f"{host_name()}:{os.getpid()}" + (f":{suffix}" if suffix else "")


def lease_grace_s() -> float:
    """Seconds without a heartbeat after which a running run counts as interrupted ($KDCORE_LEASE_GRACE_S)."""
    try:
        return max(1.0, float(os.environ.get("KDCORE_LEASE_GRACE_S", DEFAULT_GRACE_S)))
    except ValueError:
        return DEFAULT_GRACE_S


def lease_note(run) -> str:
    """For a running run: how old its lease is and when another process will mark it interrupted."""
    if run.heartbeat_at is None:
        return f"no heartbeat yet; it will be marked interrupted after KDCORE_LEASE_GRACE_S ({lease_grace_s():g} s)"
    beat = run.heartbeat_at if run.heartbeat_at.tzinfo else run.heartbeat_at.replace(tzinfo=timezone.utc)
    age = max(0, round((utcnow() - beat).total_seconds()))
    return f"last heartbeat {age} s ago; it will be marked interrupted after KDCORE_LEASE_GRACE_S ({lease_grace_s():g} s)"


class QueueRecords:
    """The queue part of the Store (mixed into kdcore.store.Store)."""

    engine: Any
    read_only: bool
    _last_expiry: float

    def claim(self, worker: str, run_id: Optional[int] = None, groups: Optional[Iterable[str]] = None,
              statuses: Iterable[str] = ("queued",)) -> Optional[int]:
        """Takes the oldest queued run (or `run_id` if still queued; of `groups` only, if given) for `worker`,
        atomically. With `statuses` (STOPPED) and `run_id`, it takes a stopped run straight back to resume it
        in this process, without a trip through the queue where another worker could take it first.

        PostgreSQL locks the row with FOR UPDATE SKIP LOCKED, so concurrent workers take
        different runs; SQLite serialises claims with a short BEGIN IMMEDIATE transaction.

        Returns:
            The claimed run's number, or None when nothing (or not that run) is queued.
        """
        now = utcnow()
        statuses = list(statuses)
        values = dict(status="running", worker=worker, heartbeat_at=now, started_at=now, finished_at=None,
                      cancel_requested=False, attempt=Run.attempt + 1, live_json="{}", phase=None, failure=None)
        pick = select(Run.id).where(Run.status.in_(statuses))
        if groups is not None:
            pick = pick.where(Run.group.in_(list(groups)))
        pick = pick.where(Run.id == run_id) if run_id is not None else pick.order_by(Run.id).limit(1)
        if self.engine.dialect.name == "sqlite":
            with self.engine.connect() as conn:
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # take the write lock before reading the queue
                chosen = conn.execute(pick).scalar()
                if chosen is not None:
                    conn.execute(update(Run).where(Run.id == chosen, Run.status.in_(statuses)).values(**values))
                conn.commit()
            return chosen
        with Session(self.engine) as s:
            chosen = s.execute(pick.with_for_update(skip_locked=True)).scalar()
            if chosen is not None:
                s.execute(update(Run).where(Run.id == chosen).values(**values))
            s.commit()
            return chosen

    def heartbeat(self, run_id: int, worker: str, live: Optional[dict] = None, phase: Optional[str] = None) -> str:
        """Renews `worker`'s lease on a run and stores its progress.

        Returns:
            "ok"; "cancel" when someone asked to cancel it; "lost" when the lease is gone
            (the run was marked interrupted by another process after a missed heartbeat).
        """
        values: dict[str, Any] = {"heartbeat_at": utcnow()}
        if live is not None:
            values["live_json"] = json.dumps(live, default=float)
        if phase is not None:
            values["phase"] = phase
        with Session(self.engine) as s:
            held = s.execute(update(Run).where(Run.id == run_id, Run.worker == worker, Run.status == "running")
                             .values(**values)).rowcount
            cancel = s.execute(select(Run.cancel_requested).where(Run.id == run_id)).scalar() if held else None
            s.commit()
        if not held:
            return "lost"
        return "cancel" if cancel else "ok"

    def request_cancel(self, run_id: int) -> str:
        """Cancels a queued run at once, or flags a running one for its worker to stop at its next step.

        Returns:
            "cancelled" (it was queued) or "requested" (it is running).
        Raises:
            RunNotFound, or ValueError when the run has already finished.
        """
        with Session(self.engine) as s:
            dropped = s.execute(update(Run).where(Run.id == run_id, Run.status == "queued")
                                .values(status="cancelled", finished_at=utcnow())).rowcount
            flagged = 0 if dropped else s.execute(update(Run).where(Run.id == run_id, Run.status == "running")
                                                  .values(cancel_requested=True)).rowcount
            s.commit()
        if dropped:
            return "cancelled"
        if flagged:
            return "requested"
        run = self.get_run(run_id)
        raise ValueError(f"run {run_id} is {run.status}; only a queued or running run can be cancelled")

    def expire_leases(self, grace_s: Optional[float] = None, force: bool = False) -> list[int]:
        """Marks running runs whose lease is older than the grace period as interrupted; returns them.

        Any process may call it, on any host; readers call it at most every few seconds.
        """
        now_s = time.monotonic()
        if self.read_only or (not force and now_s - self._last_expiry < EXPIRE_EVERY_S):
            return []  # a read-only store's runs are shown as stored: marking them is a write
        self._last_expiry = now_s
        cutoff = utcnow() - timedelta(seconds=grace_s if grace_s is not None else lease_grace_s())
        stale = (Run.status == "running") & or_(Run.heartbeat_at.is_(None), Run.heartbeat_at < cutoff)
        with Session(self.engine) as s:
            ids = list(s.execute(select(Run.id).where(stale)).scalars())
            if ids:
                s.execute(update(Run).where(Run.id.in_(ids), stale).values(
                    status="interrupted", finished_at=utcnow(), phase=None,
                    error="its worker stopped sending heartbeats (the process died or its machine stopped) "
                          "before the run finished"))
                s.commit()
        return ids

    def live(self, run_id: int) -> dict:
        """A run's stored progress (see kdcore.jobs.LiveState); empty when it is not running."""
        with Session(self.engine) as s:
            text_ = s.execute(select(Run.live_json).where(Run.id == run_id)).scalar()
        return _loads(text_)

    def active_ids(self) -> tuple[list[int], list[int]]:
        """(running, queued) run numbers, oldest first."""
        self.expire_leases()
        with Session(self.engine) as s:
            rows = s.execute(select(Run.id, Run.status).where(Run.status.in_(ACTIVE)).order_by(Run.id)).all()
        return [i for i, st in rows if st == "running"], [i for i, st in rows if st == "queued"]

    def requeue(self, run_id: int, statuses: Iterable[str] = STOPPED) -> bool:
        """Puts a stopped run back in the queue to be resumed by a worker; False if it is not stopped."""
        with Session(self.engine) as s:
            done = s.execute(update(Run).where(Run.id == run_id, Run.status.in_(list(statuses))).values(
                status="queued", finished_at=None, worker=None, heartbeat_at=None, cancel_requested=False,
                phase=None, live_json="{}", failure=None)).rowcount
            s.commit()
        return bool(done)
