"""The Store: runs, their metrics and artefacts; the queue, frames and studies are mixed in.

Nothing outside kdcore.store writes SQL. One Session per unit of work; metric rows arrive in batches.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid as uuidlib
from pathlib import Path
from typing import Any, Iterable, Optional

from sqlalchemy import func, insert, update
from sqlmodel import Session, delete, select

from kdcore.record.summary import PROMOTED_COLUMNS
from kdcore.store.connect import (SQLITE_MAGIC, FolderOutsideRoot, StoreGone, _engine_for, _read_only_error,
                                  _read_only_why, _sqlite_path, default_artefact_root, default_url)
from kdcore.store.frames import FrameRecords
from kdcore.store.queue import QueueRecords, lease_note, this_worker
from kdcore.store.studies import StudyRecords
from kdcore.store.tables import ACTIVE, STATUSES, Artefact, Metric, Run, utcnow



class RunNotFound(KeyError):
    pass


class Store(QueueRecords, FrameRecords, StudyRecords):
    """Reads and writes runs; the queue of runs to execute. Safe to share between threads.

    Args:
        url: an SQLAlchemy URL; default $KDCORE_DB_URL, else sqlite:///runs/kdcore.db.
        artefact_root: where run folders live; default $KDCORE_ARTEFACT_ROOT, else the SQLite
            file's folder, else ./runs. Workers on several machines share it over a shared filesystem.
    """

    def __init__(self, url: Optional[str] = None, artefact_root: Optional[str | Path] = None):
        self.url = url or default_url()
        self.engine = _engine_for(self.url)
        self.artefact_root = Path(artefact_root) if artefact_root is not None else default_artefact_root(self.url)
        self._folders: dict[int, str] = {}
        self._last_expiry = 0.0
        # opened with SQLite's mode=ro where this process may not write the file or its folder
        self.read_only = self.url in _read_only_why
        path = _sqlite_path(self.url)
        try:
            stat = os.stat(path) if path is not None else None
        except OSError:
            stat = None
        self._identity = (stat.st_dev, stat.st_ino) if stat is not None else None

    def gone(self) -> Optional[str]:
        """Why this store's file is no longer the one it opened (deleted, or replaced by another); None if it is."""
        path = _sqlite_path(self.url)
        if path is None or self._identity is None:
            return None
        try:
            now = os.stat(path)
        except FileNotFoundError:
            return f"the store {path} was deleted"
        except OSError:
            return None  # cannot tell: the next write says what is wrong
        if (now.st_dev, now.st_ino) != self._identity:
            return f"the store {path} was replaced by another file"
        return None

    def check_present(self) -> None:
        """Raises StoreGone when the store's file was deleted or replaced since it was opened."""
        why = self.gone()
        if why:
            raise StoreGone(f"{why}; this process stops rather than write into a file nobody can open again")

    def make_room(self) -> None:
        """Frees the space SQLite's write-ahead log holds, so a disk that filled up may take one more write."""
        if _sqlite_path(self.url) is None:
            return
        with self.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    def check_writable(self) -> None:
        """Raises StoreReadOnly, saying why, when this store was opened read-only (before work that would write)."""
        if self.read_only:
            raise _read_only_error(_sqlite_path(self.url), _read_only_why[self.url])

    # ---- runs -----------------------------------------------------------------------------
    def create_run(self, config, status: str = "queued", worker: Optional[str] = None) -> int:
        """Stores a validated RunConfig as a new run; returns its number, never used before.

        Args:
            worker: claim it for this worker at once (`kdcore train` runs what it submits), so no
                other worker on the same queue can take it first.
        """
        run = self._new_run(config, status, worker)
        with Session(self.engine) as s:
            s.add(run)
            s.commit()
            s.refresh(run)
            self._folders[run.id] = run.folder
            return run.id

    @staticmethod
    def _new_run(config, status: str = "queued", worker: Optional[str] = None) -> Run:
        """The row of a new run of `config`, not yet added to any session."""
        cfg = config.model_dump(mode="json")
        run_uuid = uuidlib.uuid4().hex
        lease = {}
        if worker is not None:
            now = utcnow()
            status, lease = "running", dict(worker=worker, heartbeat_at=now, started_at=now, attempt=1)
        return Run(**lease,
            uuid=run_uuid, folder=run_uuid, name=config.display_name(), status=status, config_json=json.dumps(cfg),
            group=config.group, tags=json.dumps(list(config.tags)), dataset=config.dataset.name,
            teacher_arch=" + ".join(t.arch for t in config.all_teachers),  # "small_cnn + mlp" for several
            student_arch=config.student.arch, method=config.distill.method,
            temperature=config.distill.temperature, alpha=config.distill.alpha,
        )

    def get_run(self, run_id: int) -> Run:
        with Session(self.engine) as s:
            run = s.get(Run, run_id)
            if run is None:
                raise RunNotFound(f"no run with id {run_id}")
            s.expunge(run)
            return run

    def _update(self, run_id: int, **values) -> None:
        with Session(self.engine) as s:
            run = s.get(Run, run_id)
            if run is None:
                raise RunNotFound(f"no run with id {run_id}")
            for k, v in values.items():
                setattr(run, k, v)
            s.add(run)
            s.commit()

    def set_device(self, run_id: int, device: str) -> None:
        self._update(run_id, device=device)

    def mark_running(self, run_id: int, device: str, worker: Optional[str] = None) -> None:
        """Marks a run running under `worker`'s lease (seeded and imported runs; workers use claim)."""
        now = utcnow()
        self._update(run_id, status="running", device=device, started_at=now, heartbeat_at=now,
                     worker=worker or this_worker())

    def finish_run(self, run_id: int, status: str, summary: Optional[dict] = None, error: Optional[str] = None,
                   worker: Optional[str] = None, failure: Optional[str] = None) -> bool:
        """Records a run's end. With `worker`, only while that worker still holds the run's lease.

        `failure`: a failed run's kind of failure (kdcore.record.failure), when it decides what can be done next.

        Returns:
            False when the lease was lost (another process already marked the run interrupted).
        """
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": error, "phase": None,
                                  "failure": failure}
        if summary is not None:
            values["summary_json"] = json.dumps(summary, default=float)
            for key in PROMOTED_COLUMNS:
                if key in summary and summary[key] == summary[key]:  # skip NaN
                    values[key] = summary[key]
        q = update(Run).where(Run.id == run_id)
        if worker is not None:
            q = q.where(Run.worker == worker, Run.status == "running")
        with Session(self.engine) as s:
            done = s.execute(q.values(**values)).rowcount
            s.commit()
        if not done and worker is None:
            raise RunNotFound(f"no run with id {run_id}")
        return bool(done)

    def update_run(self, run_id: int, *, name: Optional[str] = None, tags: Optional[Iterable[str]] = None,
                   notes: Optional[str] = None) -> None:
        values: dict[str, Any] = {}
        if name is not None:
            if not name.strip():
                raise ValueError("a run's name cannot be empty")
            values["name"] = name.strip()
            config = self.get_run(run_id).config  # {} when unreadable: then only the column changes
            if config:  # the stored config names the run too, so a config diff shows the new name
                values["config_json"] = json.dumps({**config, "name": values["name"]})
        if tags is not None:
            values["tags"] = json.dumps(sorted({t.strip() for t in tags if t.strip()}))
        if notes is not None:
            values["notes"] = notes
        self._update(run_id, **values)

    def delete_run(self, run_id: int) -> Optional[str]:
        """Deletes a finished run, its metrics, artefact rows and its own folder (nothing of any other run).

        Returns why its folder was kept, if it was: a 0.1.0 folder another store in the same place may own.
        Raises FolderOutsideRoot, deleting nothing, when the run's folder leads outside the artefact root.
        """
        self.expire_leases(force=True)
        run = self.get_run(run_id)
        if run.status in ACTIVE:
            lease = f" ({lease_note(run)})" if run.status == "running" else ""
            raise ValueError(f"run {run_id} is {run.status}{lease}; cancel it before deleting")
        held = self.study_holding(run)
        if held:  # a study's answer is read from its runs: they go with the study or not at all
            raise ValueError(f"{held}; it can be deleted only with the study (`kdcore studies delete NAME`)")
        folder = self.run_dir(run_id)
        shared = self._shared_number_folder(folder)
        with Session(self.engine) as s:
            s.exec(delete(Metric).where(Metric.run_id == run_id))
            s.exec(delete(Artefact).where(Artefact.run_id == run_id))
            s.exec(delete(Run).where(Run.id == run_id))
            s.commit()
        self._folders.pop(run_id, None)
        if shared:
            return f"its folder {folder} was kept: {shared}"
        self._remove_folder(folder)
        return None

    def _remove_folder(self, folder: Path) -> None:
        if self._inside_root(folder) and not self._shared_number_folder(folder):
            shutil.rmtree(folder, ignore_errors=True)

    def _inside_root(self, path: Path) -> bool:
        root = self.artefact_root.resolve()
        return root in Path(path).resolve().parents

    def _shared_number_folder(self, folder: Path) -> Optional[str]:
        """Why a 0.1.0 folder, named by the run's number, may belong to another store too; None if it cannot.

        0.1.0 put every store's run 1 in `1/` beside the store file, so two stores in one folder share it.
        """
        if not folder.name.isdigit():
            return None
        own = Path(self.url.split("///", 1)[-1]).resolve() if self.url.startswith("sqlite") else None
        others = []
        for path in sorted(self.artefact_root.iterdir()) if self.artefact_root.is_dir() else []:
            if path.resolve() == own or not path.is_file() or path.name.endswith(("-wal", "-shm", "-journal")):
                continue
            try:
                with path.open("rb") as handle:
                    if handle.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC:
                        others.append(path.name)
            except OSError:
                continue
        if not others:
            return None
        return (f"it is named by the run's number (a run of release 0.1.0) and another store in "
                f"{self.artefact_root} ({', '.join(others)}) may keep its own run {folder.name} there")

    def list_runs(self, status: Optional[Iterable[str]] = None, group: Optional[str] = None,
                  limit: Optional[int] = None) -> list[Run]:
        self.expire_leases()
        with Session(self.engine) as s:
            q = select(Run).order_by(Run.id.desc())
            if status:
                q = q.where(Run.status.in_(list(status)))
            if group:
                q = q.where(Run.group == group)
            if limit:
                q = q.limit(limit)
            runs = list(s.exec(q))
            for r in runs:
                s.expunge(r)
            return runs

    def list_groups(self) -> list[dict]:
        """Every seed group and sweep with its run count, newest first (studies' trials are listed as studies)."""
        trial_groups = self.study_groups()
        with Session(self.engine) as s:
            rows = s.exec(select(Run.group, func.count(), func.max(Run.id)).where(Run.group.is_not(None))
                          .group_by(Run.group).order_by(func.max(Run.id).desc())).all()
        return [{"group": g, "runs": n} for g, n, _ in rows if g not in trial_groups]

    def count_runs(self) -> int:
        with Session(self.engine) as s:
            return s.exec(select(func.count()).select_from(Run)).one()

    # ---- metrics --------------------------------------------------------------------------
    def add_metrics(self, run_id: int, rows: list[dict]) -> None:
        """rows: dicts with phase, kind, step, epoch, name, value. One transaction for the batch."""
        if not rows:
            return
        with Session(self.engine) as s:
            s.execute(insert(Metric), [dict(run_id=run_id, **row) for row in rows])  # one executemany, no ORM objects
            s.commit()

    def delete_metrics_after(self, run_id: int, phase: str, epoch: int) -> int:
        """Drops a phase's rows past `epoch` (a resumed run replays them); returns how many."""
        with Session(self.engine) as s:
            gone = s.execute(delete(Metric).where(Metric.run_id == run_id, Metric.phase == phase,
                                                  Metric.epoch > epoch)).rowcount
            s.commit()
        return gone

    # ---- artefacts ------------------------------------------------------------------------
    def run_dir(self, run_id: int) -> Path:
        """The run's own folder under the artefact root, named by its uuid (0.1.0 runs: by their number)."""
        folder = self._folders.get(run_id)
        if folder is None:
            with Session(self.engine) as s:
                folder = s.execute(select(Run.folder).where(Run.id == run_id)).scalar() or str(run_id)
            path = self.artefact_root / folder
            if not self._inside_root(path):
                raise FolderOutsideRoot(
                    f"run {run_id}'s folder {folder!r} leads to {path.resolve()}, outside the artefact root "
                    f"{self.artefact_root.resolve()}; kdcore reads and deletes run files only under that root, "
                    "so nothing there was touched")
            self._folders[run_id] = folder
        return self.artefact_root / folder

    def add_artefact(self, run_id: int, kind: str, path: Path) -> None:
        path = Path(path)
        try:
            rel = path.relative_to(self.artefact_root)
        except ValueError:
            rel = path
        with Session(self.engine) as s:
            s.add(Artefact(run_id=run_id, kind=kind, path=str(rel)))
            s.commit()

    def artefacts(self, run_id: int) -> dict[str, Path]:
        with Session(self.engine) as s:
            rows = s.exec(select(Artefact).where(Artefact.run_id == run_id)).all()
        paths = {a.kind: (self.artefact_root / a.path) for a in rows}
        return {kind: path for kind, path in paths.items() if self._inside_root(path)}
