"""The run store: runs, their metrics and artefacts, in SQLite (or any SQLAlchemy URL).

Nothing outside this module writes SQL. One engine per process and URL; one
Session per unit of work; metric rows arrive in batches.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Optional

import pandas as pd
from sqlalchemy import event, func, insert
from sqlalchemy.pool import StaticPool
from sqlmodel import Field, Session, SQLModel, create_engine, delete, select

STATUSES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")
ACTIVE = ("queued", "running")
DEFAULT_URL = "sqlite:///runs/kdcore.db"
SUMMARY_COLUMNS = ("teacher_test_acc", "student_test_acc", "baseline_test_acc", "kd_gain", "student_best_val_acc",
                   "teacher_params", "student_params", "teacher_flops", "student_flops")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Run(SQLModel, table=True):
    __tablename__ = "runs"
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = ""
    status: str = Field(default="queued", index=True)
    config_json: str = "{}"
    summary_json: str = "{}"
    error: Optional[str] = None
    device: Optional[str] = None
    owner: Optional[str] = None  # host:pid of the process running it, for crash recovery
    group: Optional[str] = Field(default=None, index=True)
    tags: str = "[]"  # JSON list
    notes: str = ""
    # Copied out of the config and summary so the runs table filters and sorts in SQL
    dataset: str = ""
    teacher_arch: str = ""
    student_arch: str = ""
    method: str = ""
    temperature: float = 0.0
    alpha: float = 0.0
    teacher_test_acc: Optional[float] = None
    student_test_acc: Optional[float] = None
    baseline_test_acc: Optional[float] = None
    kd_gain: Optional[float] = None
    student_best_val_acc: Optional[float] = None
    teacher_params: Optional[int] = None
    student_params: Optional[int] = None
    teacher_flops: Optional[int] = None
    student_flops: Optional[int] = None
    created_at: datetime = Field(default_factory=utcnow, index=True)
    started_at: Optional[datetime] = None
    finished_at: Optional[datetime] = None

    @property
    def config(self) -> dict:
        return json.loads(self.config_json)

    @property
    def summary(self) -> dict:
        return json.loads(self.summary_json)

    @property
    def tag_list(self) -> list[str]:
        return json.loads(self.tags)

    @property
    def duration_s(self) -> Optional[float]:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


class Metric(SQLModel, table=True):
    __tablename__ = "metrics"
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="runs.id", index=True)
    phase: str  # teacher | student | baseline
    kind: str = "epoch"  # step (inside an epoch) | epoch (end of epoch, with validation)
    step: int
    epoch: int
    name: str
    value: float


class Artefact(SQLModel, table=True):
    __tablename__ = "artefacts"
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="runs.id", index=True)
    kind: str  # teacher_weights, student_weights, baseline_weights, test_logits, ...
    path: str  # relative to the artefact root


def _loads(text: Optional[str]) -> dict:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _ci(i: int):
    def read(summary: dict):
        ci = summary.get("kd_gain_ci95")
        return ci[i] if isinstance(ci, list) and len(ci) == 2 else None
    return read


# Columns of the runs table read from each run's summary JSON
FRAME_FROM_SUMMARY = {
    "kd_gain_low": _ci(0), "kd_gain_high": _ci(1),
    "kd_gain_p_value": lambda s: s.get("kd_gain_p_value"), "test_images": lambda s: s.get("test_images"),
    "teacher_from_run": lambda s: s.get("teacher_from_run"), "baseline_from_run": lambda s: s.get("baseline_from_run"),
}


def this_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_engines: dict[str, Any] = {}
_engines_lock = threading.Lock()


def _engine_for(url: str):
    with _engines_lock:
        if url not in _engines:
            if url.startswith("sqlite:///"):
                Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
                engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

                @event.listens_for(engine, "connect")
                def _sqlite_pragmas(conn, _record):
                    cur = conn.cursor()
                    cur.execute("PRAGMA journal_mode=WAL")
                    cur.execute("PRAGMA busy_timeout=30000")
                    cur.execute("PRAGMA synchronous=NORMAL")
                    cur.execute("PRAGMA foreign_keys=ON")
                    cur.close()
            elif url.startswith("sqlite"):  # in memory: one connection, or each thread sees its own empty database
                engine = create_engine(url, connect_args={"check_same_thread": False}, poolclass=StaticPool)
            else:
                engine = create_engine(url, pool_pre_ping=True)
            SQLModel.metadata.create_all(engine)
            _engines[url] = engine
        return _engines[url]


def default_url() -> str:
    return os.environ.get("KDCORE_DB_URL", DEFAULT_URL)


class RunNotFound(KeyError):
    pass


class Store:
    """Reads and writes runs. Safe to share between threads.

    Args:
        url: an SQLAlchemy URL; default $KDCORE_DB_URL, else sqlite:///runs/kdcore.db.
        artefact_root: where runs/<id>/ folders live; default the SQLite file's folder, else ./runs.
    """

    def __init__(self, url: Optional[str] = None, artefact_root: Optional[str | Path] = None):
        self.url = url or default_url()
        self.engine = _engine_for(self.url)
        if artefact_root is None:
            artefact_root = os.environ.get("KDCORE_RUNS_DIR") or (
                Path(self.url.removeprefix("sqlite:///")).parent if self.url.startswith("sqlite:///") else "runs"
            )
        self.artefact_root = Path(artefact_root)

    # ---- runs -----------------------------------------------------------------------------
    def create_run(self, config, status: str = "queued") -> int:
        """Stores a validated RunConfig as a new run; returns its id."""
        cfg = config.model_dump(mode="json")
        run = Run(
            name=config.display_name(), status=status, config_json=json.dumps(cfg), group=config.group,
            tags=json.dumps(list(config.tags)), dataset=config.dataset.name, teacher_arch=config.teacher.arch,
            student_arch=config.student.arch, method=config.distill.method,
            temperature=config.distill.temperature, alpha=config.distill.alpha, owner=this_owner(),
        )
        with Session(self.engine) as s:
            s.add(run)
            s.commit()
            s.refresh(run)
            return run.id

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

    def mark_running(self, run_id: int, device: str) -> None:
        self._update(run_id, status="running", device=device, started_at=utcnow(), owner=this_owner())

    def finish_run(self, run_id: int, status: str, summary: Optional[dict] = None, error: Optional[str] = None) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": error}
        if summary is not None:
            values["summary_json"] = json.dumps(summary, default=float)
            for key in SUMMARY_COLUMNS:
                if key in summary and summary[key] == summary[key]:  # skip NaN
                    values[key] = summary[key]
        self._update(run_id, **values)

    def update_run(self, run_id: int, *, name: Optional[str] = None, tags: Optional[Iterable[str]] = None,
                   notes: Optional[str] = None) -> None:
        values: dict[str, Any] = {}
        if name is not None:
            if not name.strip():
                raise ValueError("a run's name cannot be empty")
            values["name"] = name.strip()
        if tags is not None:
            values["tags"] = json.dumps(sorted({t.strip() for t in tags if t.strip()}))
        if notes is not None:
            values["notes"] = notes
        self._update(run_id, **values)

    def delete_run(self, run_id: int) -> None:
        """Deletes a finished run, its metrics, artefact rows and its folder."""
        run = self.get_run(run_id)
        if run.status in ACTIVE:
            raise ValueError(f"run {run_id} is {run.status}; cancel it before deleting")
        with Session(self.engine) as s:
            s.exec(delete(Metric).where(Metric.run_id == run_id))
            s.exec(delete(Artefact).where(Artefact.run_id == run_id))
            s.exec(delete(Run).where(Run.id == run_id))
            s.commit()
        shutil.rmtree(self.run_dir(run_id), ignore_errors=True)

    def list_runs(self, status: Optional[Iterable[str]] = None, group: Optional[str] = None,
                  limit: Optional[int] = None) -> list[Run]:
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
        """Every group with its run count, newest first."""
        with Session(self.engine) as s:
            rows = s.exec(select(Run.group, func.count(), func.max(Run.id)).where(Run.group.is_not(None))
                          .group_by(Run.group).order_by(func.max(Run.id).desc())).all()
        return [{"group": g, "runs": n} for g, n, _ in rows]

    def count_runs(self) -> int:
        with Session(self.engine) as s:
            return s.exec(select(func.count()).select_from(Run)).one()

    def runs_frame(self) -> pd.DataFrame:
        """One row per run, the columns a runs table shows; read in one query."""
        cols = ["id", "name", "status", "dataset", "teacher_arch", "student_arch", "method", "temperature", "alpha",
                "student_best_val_acc", "teacher_test_acc", "student_test_acc", "baseline_test_acc", "kd_gain",
                "teacher_params", "student_params", "teacher_flops", "student_flops", "tags", "group", "notes",
                "error", "device", "created_at", "started_at", "finished_at", "config_json", "summary_json"]
        with self.engine.connect() as conn:
            frame = pd.read_sql_query(f"SELECT {', '.join(chr(34) + c + chr(34) for c in cols)} FROM runs ORDER BY id DESC", conn)
        summaries = frame.pop("summary_json").map(_loads)
        configs = frame.pop("config_json").map(_loads)
        for column, read in FRAME_FROM_SUMMARY.items():
            frame[column] = pd.to_numeric(summaries.map(read), errors="coerce")
        frame["seed"] = pd.to_numeric(configs.map(lambda c: c.get("train", {}).get("seed")), errors="coerce").astype("Int64")
        for col in ("created_at", "started_at", "finished_at"):
            frame[col] = pd.to_datetime(frame[col])
        frame["duration_s"] = (frame["finished_at"] - frame["started_at"]).dt.total_seconds()
        frame["tags"] = frame["tags"].map(lambda t: json.loads(t) if t else [])
        return frame

    def recover_interrupted(self) -> list[int]:
        """Marks runs left queued or running by a process on this host that has died as interrupted."""
        host = socket.gethostname()
        recovered = []
        with Session(self.engine) as s:
            for run in s.exec(select(Run).where(Run.status.in_(ACTIVE))):
                owner_host, _, pid = (run.owner or ":").rpartition(":")
                if owner_host != host or not pid.isdigit():
                    continue  # another machine's run: not ours to judge
                if int(pid) == os.getpid() or _pid_alive(int(pid)):
                    continue
                was = run.status
                run.status = "interrupted"
                run.finished_at = utcnow()
                run.error = f"the process that {'ran' if was == 'running' else 'had queued'} this run stopped before it finished"
                s.add(run)
                recovered.append(run.id)
            s.commit()
        return recovered

    # ---- metrics --------------------------------------------------------------------------
    def add_metrics(self, run_id: int, rows: list[dict]) -> None:
        """rows: dicts with phase, kind, step, epoch, name, value. One transaction for the batch."""
        if not rows:
            return
        with Session(self.engine) as s:
            s.execute(insert(Metric), [dict(run_id=run_id, **row) for row in rows])  # one executemany, no ORM objects
            s.commit()

    def metrics_frame(self, run_ids: Iterable[int], kind: Optional[str] = None,
                      names: Optional[Iterable[str]] = None) -> pd.DataFrame:
        run_ids = [int(r) for r in run_ids]
        if not run_ids:
            return pd.DataFrame(columns=["run_id", "phase", "kind", "step", "epoch", "name", "value"])
        q = select(Metric.run_id, Metric.phase, Metric.kind, Metric.step, Metric.epoch, Metric.name, Metric.value).where(
            Metric.run_id.in_(run_ids))
        if kind:
            q = q.where(Metric.kind == kind)
        if names:
            q = q.where(Metric.name.in_(list(names)))
        with Session(self.engine) as s:
            rows = s.exec(q.order_by(Metric.run_id, Metric.id)).all()
        return pd.DataFrame(rows, columns=["run_id", "phase", "kind", "step", "epoch", "name", "value"])

    # ---- artefacts ------------------------------------------------------------------------
    def run_dir(self, run_id: int) -> Path:
        return self.artefact_root / str(run_id)

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
        return {a.kind: (self.artefact_root / a.path) for a in rows}
