"""The run store: runs, their metrics and artefacts, and the queue of runs to execute.

Nothing outside this module writes SQL. One engine per process and URL, its schema
brought up to date by Alembic on first open; one Session per unit of work; metric
rows arrive in batches. The store is also the queue: submitting writes a queued run,
workers claim the oldest atomically and hold a lease renewed by heartbeats, and a
cancel is a flag in the row, so any process on any host can watch or stop any run.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import socket
import sqlite3
import threading
import time
import uuid as uuidlib
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Optional
from urllib.parse import quote

import pandas as pd
from sqlalchemy import event, func, insert, inspect, or_, text, update
from sqlalchemy.pool import NullPool, StaticPool
from sqlmodel import Session, create_engine, delete, select

from kdcore.store.studies import StudyExists, StudyNotFound, StudyRecords  # noqa: F401
from kdcore.store.tables import (ACTIVE, DAMAGED_LABEL, FINISHED, JSON_COLUMNS, STATUSES, Artefact,  # noqa: F401
                                 Metric, Run, Study, Trial, unreadable, utcnow)

DEFAULT_URL = "sqlite:///runs/kdcore.db"
SUMMARY_COLUMNS = ("teacher_test_acc", "student_test_acc", "baseline_test_acc", "kd_gain", "student_best_val_acc",
                   "teacher_params", "student_params", "teacher_flops", "student_flops")
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
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


class StoreError(RuntimeError):
    """The store cannot do what was asked: not a kdcore store, damaged, newer than this kdcore, or read-only.

    Its message is one line for people: which file, what is wrong, what to do. `kdcore` prints it and
    exits with status 2; the dashboard shows it in place of its pages.
    """


class StoreReadOnly(StoreError):
    """A write asked of a store that this process can only read."""


class StoreFull(StoreError):
    """The store's disk is full: nothing more can be written to it until space is freed."""


class StoreUnwritable(StoreError):
    """A write the store accepted before now fails: the file was made read-only or immutable, or its disk failed."""


class StoreGone(StoreError):
    """The store's file was deleted or replaced under this process: writing on would write into nothing."""


class FolderOutsideRoot(StoreError):
    """A run's folder column leads outside the artefact root: kdcore neither reads nor deletes there.

    A store can come from someone else (a file handed over, a shared PostgreSQL), so its rows are not trusted
    to name folders on this machine.
    """


SQLITE_MAGIC = b"SQLite format 3\x00"
ELSEWHERE = "point --db (or KDCORE_DB_URL) at another file or move this one away"
CHECK_MAX_BYTES = 256 << 20  # SQLite's quick_check reads about 300 MB/s: stores up to this size are checked on open

_engines: dict[str, Any] = {}
_engines_lock = threading.Lock()
_read_only_why: dict[str, str] = {}  # URL -> why this process opened that store read-only


def _sqlite_path(url: str) -> Optional[Path]:
    if url.startswith("sqlite:///") and ":memory:" not in url and url != "sqlite://":
        return Path(url.removeprefix("sqlite:///"))
    return None


def _not_a_store(path: Path, why: str) -> StoreError:
    return StoreError(f"{path} is not a kdcore store ({why}): {ELSEWHERE}")


def _damaged(path: Path, why: str) -> StoreError:
    return StoreError(f"{path} is damaged ({why}): restore it from a backup, or {ELSEWHERE}")


def _read_only_error(where, why: str) -> StoreReadOnly:
    return StoreReadOnly(f"{where} is read-only: {why}; its runs can be listed and shown, not started, changed or "
                         "deleted (get write access to the file and its folder, or point --db at another store)")


def _as_store_error(where, err: BaseException, read_only_why: Optional[str] = None) -> Optional[StoreError]:
    """SQLite's errors that mean the file itself is the problem, as a StoreError; None for any other error."""
    if not isinstance(err, sqlite3.Error):
        return None
    name, message = getattr(err, "sqlite_errorname", "") or "", str(err)
    if name.startswith("SQLITE_NOTADB") or message == "file is not a database":
        return _not_a_store(where, message)
    if name.startswith("SQLITE_CORRUPT") or "malformed" in message:
        return _damaged(where, message)
    if name.startswith("SQLITE_READONLY") or "readonly database" in message:
        return _read_only_error(where, read_only_why or f"SQLite refused to write it ({message})")
    if name.startswith("SQLITE_FULL") or "database or disk is full" in message:
        return StoreFull(f"no space left on the disk of the store {where}: free some space there; runs stopped "
                         "by it can be resumed (kdcore runs resume ID)")
    if name.startswith("SQLITE_IOERR") or "disk I/O error" in message:
        return StoreUnwritable(f"{where} can no longer be written (SQLite: {message}): it was made read-only or "
                               "immutable, or its disk failed; get write access back, then resume its runs")
    return None


def _file_problem(path: Path) -> Optional[StoreError]:
    """What rules a file out as a store, read from its first 100 bytes and its size without opening it in SQLite."""
    with open(path, "rb") as f:
        head = f.read(100)
    if not head:
        return None  # an empty file is an empty database: the store is created in it
    if len(head) < 100 or not head.startswith(SQLITE_MAGIC):
        return _not_a_store(path, "file is not a database")
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1) or head[21:24] != b"\x40\x20\x20":
        return _damaged(path, "its SQLite header is damaged")
    pages, size = int.from_bytes(head[28:32], "big"), path.stat().st_size
    pending = any(Path(f"{path}{s}").is_file() and Path(f"{path}{s}").stat().st_size for s in ("-wal", "-journal"))
    # the header's page count is valid when its two counters agree (SQLite's rule) and no journal is pending
    if pages and head[24:28] == head[92:96] and not pending and size < pages * page_size:
        return _damaged(path, f"the file is cut short: {size:,} of its {pages * page_size:,} bytes")
    return None


def _why_not_writable(path: Path) -> Optional[str]:
    folder = os.path.abspath(path.parent)
    if path.exists() and not os.access(path, os.W_OK):
        return "this process may not write the file"
    if not os.access(folder, os.W_OK):
        return f"this process may not write its folder {folder}, where SQLite keeps its journal"
    return None


def _open_sqlite_file(path: Path) -> Optional[str]:
    """Checks a store file before SQLite touches it; returns why it can only be read (None: it can be written)."""
    try:
        if path.is_dir():
            raise _not_a_store(path, "it is a folder")
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            why = _why_not_writable(path)
            if why:
                raise StoreError(f"{path} does not exist and cannot be created: {why}; point --db at a folder "
                                 "you can write")
            return None
        problem = _file_problem(path)
    except OSError as err:
        raise StoreError(f"{path} cannot be opened ({err.strerror}: {err.filename}): get read access to it or "
                         "point --db at another file") from err
    if problem is not None:
        raise problem
    return _why_not_writable(path)


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that cannot write: SQLite's mode=ro, else an immutable snapshot.

    mode=ro reads a WAL store through its -shm file and creates it when missing; in a folder it cannot
    write, with no -shm there (no writer has the store open), only immutable=1 reads it. That snapshot
    does not see later writes, so every new connection tries mode=ro first (the engine pools none).
    """
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=30)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError as err:
        conn.close()
        if "unable to open" not in str(err):
            raise
    return sqlite3.connect(uri + "&immutable=1", uri=True, check_same_thread=False)


def _sqlite_engine(url: str, path: Path, read_only_why: Optional[str]):
    if read_only_why is None:
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
    else:
        engine = create_engine("sqlite://", creator=lambda: _connect_read_only(path), poolclass=NullPool)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(conn, _record):
        cur = conn.cursor()
        cur.execute("PRAGMA busy_timeout=30000")  # first: every later statement may wait on a lock
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "handle_error")
    def _explain(context):  # a damaged page or a refused write, met at any query, is one StoreError
        known = _as_store_error(path, context.original_exception, read_only_why)
        if known is not None:
            raise known from context.original_exception

    return engine


def _checked_url(url: str) -> str:
    """The URL with its password hidden; StoreError saying what to write where kdcore cannot use it."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    kinds = "sqlite:///FILE for a file, or postgresql+psycopg://USER@HOST/DATABASE for a server"
    if "://" not in url:  # a plain path: the most likely slip
        raise StoreError(f"{url} is a path, not a store URL: write sqlite:///{url} (or {kinds})")
    try:
        parsed = make_url(url)
    except ArgumentError:  # not echoed: a malformed URL may hold a password
        raise StoreError(f"the store URL cannot be read: write {kinds}") from None
    shown = parsed.render_as_string(hide_password=True)
    try:
        parsed.get_dialect().import_dbapi()
    except (NoSuchModuleError, ImportError):
        raise StoreError(f"{shown}: no database kind or driver {parsed.drivername!r} is installed here; write "
                         f"{kinds}") from None
    return shown


def _engine_for(url: str):
    with _engines_lock:
        if url not in _engines:
            shown = _checked_url(url)
            path = _sqlite_path(url)
            read_only_why = None
            if path is not None:
                read_only_why = _open_sqlite_file(path)
                engine = _sqlite_engine(url, path, read_only_why)
            elif url.startswith("sqlite"):  # in memory: one connection, or each thread sees its own empty database
                engine = create_engine(url, connect_args={"check_same_thread": False}, poolclass=StaticPool)
            elif url.startswith("postgresql"):
                # timestamps are stored without a zone, always in UTC
                engine = create_engine(url, pool_pre_ping=True, connect_args={"options": "-c timezone=UTC"})
            else:
                engine = create_engine(url, pool_pre_ping=True)
            try:
                if path is not None and read_only_why is None:
                    _quick_check(engine, path)  # a store that can be written is never written while damaged
                if read_only_why is None:
                    _migrate(engine, path)
                else:  # never migrated: it cannot be written
                    with engine.connect() as conn:
                        _check_schema(conn, path, read_only_why)
            except BaseException as err:
                engine.dispose()  # closes the file, so SQLite removes the -wal and -shm it made beside it
                from sqlalchemy.exc import OperationalError

                if path is None and isinstance(err, OperationalError):  # the driver's message runs to 40 lines
                    why = str(err.orig).strip().splitlines()[0] if str(err.orig).strip() else type(err.orig).__name__
                    raise StoreError(f"{shown} cannot be reached ({why}): start the server or point --db (or "
                                     "KDCORE_DB_URL) at another store") from err
                known = _as_store_error(path, getattr(err, "orig", err), read_only_why) if path else None
                if known is not None:
                    raise known from err
                raise
            _engines[url] = engine
            if read_only_why is not None:
                _read_only_why[url] = read_only_why
        return _engines[url]


def _quick_check(engine, path: Path) -> None:
    """SQLite's check of every page of a store up to CHECK_MAX_BYTES; larger ones are checked as they are read."""
    if not path.is_file() or path.stat().st_size > CHECK_MAX_BYTES:
        return
    with engine.connect() as conn:
        found = [row[0] for row in conn.exec_driver_sql("PRAGMA quick_check(1)")]
    if found != ["ok"]:
        first = " ".join(str(found[0]).replace("*** in database main ***", "").split())
        raise _damaged(path, f"SQLite's check found {first[:120]}")


@functools.lru_cache(maxsize=1)
def _revisions() -> tuple[str, frozenset]:
    """This kdcore's schema version and every version it knows."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(MIGRATIONS))
    return script.get_current_head(), frozenset(s.revision for s in script.walk_revisions())


def _schema(conn) -> tuple[set, Optional[str]]:
    """The store's tables and its schema version (None: no version yet, or release 0.1.0's store)."""
    tables = set(inspect(conn).get_table_names())
    version = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() \
        if "alembic_version" in tables else None
    return tables, version


def _check_schema(conn, sqlite_path: Optional[Path], read_only_why: Optional[str] = None) -> None:
    """Raises StoreError where the store cannot be used as it is: another program's database, a newer kdcore's
    store, or a read-only store that needs an upgrade. Writers call it under the migration lock, where no other
    process is half way through creating the tables."""
    where = sqlite_path or conn.engine.url.render_as_string(hide_password=True)
    tables, version = _schema(conn)
    head, known = _revisions()
    if sqlite_path is not None and tables and "runs" not in tables:  # another program's database: never add ours
        raise _not_a_store(sqlite_path, f"it holds other tables: {', '.join(sorted(tables)[:5])}")
    if version is not None and version not in known:
        raise StoreError(f"{where} was written by a newer kdcore (schema {version}; this one knows up to {head}): "
                         "upgrade kdcore to open it")
    current = "runs" in tables and version == head
    if read_only_why is not None and not current:
        if "runs" not in tables:
            raise _read_only_error(where, f"{read_only_why}, and it holds no store yet")
        raise StoreReadOnly(f"{where} needs an upgrade (schema {version or 'of release 0.1.0'} to {head}) and is "
                            f"read-only here ({read_only_why}): someone who can write it must open it once with this "
                            "kdcore, e.g. `kdcore runs list`")


@contextlib.contextmanager
def _migration_lock(conn, sqlite_path: Optional[Path]):
    """One process at a time brings a store's schema up to date; the others wait, then find it done."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SELECT pg_advisory_lock(7271)")
        try:
            yield
        finally:
            conn.exec_driver_sql("SELECT pg_advisory_unlock(7271)")
        return
    if sqlite_path is None:
        yield
        return
    import fcntl

    with open(f"{sqlite_path}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _migrate(engine, sqlite_path: Optional[Path]) -> None:
    """Creates a new store, or stamps a 0.1.0 store (no version table) and upgrades it in place."""
    from alembic import command
    from alembic.config import Config

    with engine.connect() as conn:
        tables, version = _schema(conn)
        if "runs" in tables and version == _revisions()[0] and (
                sqlite_path is None or conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"):
            return  # up to date: nothing to write, so no lock file and no transaction
        conn.rollback()
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")  # a batch rebuild drops and renames tables
        with _migration_lock(conn, sqlite_path):
            _check_schema(conn, sqlite_path)
            tables = set(inspect(conn).get_table_names())
            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            cfg.attributes["connection"] = conn
            if "runs" in tables and "alembic_version" not in tables:
                command.stamp(cfg, "0001")  # release 0.1.0 had no version table
            command.upgrade(cfg, "head")
            conn.commit()
            if sqlite_path is not None:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")  # kept in the file; set once, under the lock
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")


def default_url() -> str:
    return os.environ.get("KDCORE_DB_URL", DEFAULT_URL)


def default_artefact_root(url: str) -> Path:
    """$KDCORE_ARTEFACT_ROOT, else the SQLite file's folder, else ./runs."""
    root = os.environ.get("KDCORE_ARTEFACT_ROOT") or os.environ.get("KDCORE_RUNS_DIR")
    if root:
        return Path(root)
    path = _sqlite_path(url)
    return path.parent if path is not None else Path("runs")


def _loads_any(text: Optional[str]):
    try:
        return json.loads(text or "null")
    except ValueError:
        return None


def _loads(text: Optional[str]) -> dict:
    value = _loads_any(text)
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
    "ensemble_test_acc": lambda s: s.get("ensemble_test_acc"),
    "student_latency_ms_b1": lambda s: s.get("student_latency_ms_b1"),
    "teacher_latency_ms_b1": lambda s: s.get("teacher_latency_ms_b1"),
}
TEXT_FROM_SUMMARY = {"precision": lambda s: s.get("eval_precision")}  # bf16 or fp32


class RunNotFound(KeyError):
    pass


class Store(StudyRecords):
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
                   worker: Optional[str] = None) -> bool:
        """Records a run's end. With `worker`, only while that worker still holds the run's lease.

        Returns:
            False when the lease was lost (another process already marked the run interrupted).
        """
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": error, "phase": None}
        if summary is not None:
            values["summary_json"] = json.dumps(summary, default=float)
            for key in SUMMARY_COLUMNS:
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

    def runs_frame(self) -> pd.DataFrame:
        """One row per run, the columns a runs table shows; read in one query."""
        self.expire_leases()
        cols = [Run.id, Run.name, Run.status, Run.dataset, Run.teacher_arch, Run.student_arch, Run.method,
                Run.temperature, Run.alpha, Run.student_best_val_acc, Run.teacher_test_acc, Run.student_test_acc,
                Run.baseline_test_acc, Run.kd_gain, Run.teacher_params, Run.student_params, Run.teacher_flops,
                Run.student_flops, Run.tags, Run.group, Run.notes, Run.error, Run.device, Run.created_at,
                Run.started_at, Run.finished_at, Run.config_json, Run.summary_json, Run.live_json]
        # selected through the table's columns, so a missing column is an error, never a string constant
        with self.engine.connect() as conn:
            frame = pd.read_sql_query(select(*cols).order_by(Run.id.desc()), conn)
        for col in ("created_at", "started_at", "finished_at"):
            frame[col] = pd.to_datetime(frame[col], utc=True)
        frame["duration_s"] = (frame["finished_at"] - frame["started_at"]).dt.total_seconds()
        # a row whose JSON cannot be read stays listed, with the names of its damaged columns
        frame["damaged"] = [[c for c, t in zip(JSON_COLUMNS, texts) if unreadable(c, t)]
                            for texts in zip(*(frame[c] for c in JSON_COLUMNS))]
        frame.pop("live_json")
        frame["tags"] = frame["tags"].map(lambda t: [] if unreadable("tags", t) else _loads_any(t) or [])
        summaries = frame.pop("summary_json").map(_loads)
        configs = frame.pop("config_json").map(_loads)
        for column, read in FRAME_FROM_SUMMARY.items():
            frame[column] = pd.to_numeric(summaries.map(read), errors="coerce")
        for column, read in TEXT_FROM_SUMMARY.items():
            frame[column] = summaries.map(lambda s: read(s) if isinstance(read(s), str) else None)
        seeds = configs.map(lambda c: c["train"].get("seed") if isinstance(c.get("train"), dict) else None)
        frame["seed"] = pd.to_numeric(seeds, errors="coerce").astype("Int64")
        return frame

    # ---- the queue ------------------------------------------------------------------------
    def claim(self, worker: str, run_id: Optional[int] = None, groups: Optional[Iterable[str]] = None) -> Optional[int]:
        """Takes the oldest queued run (or `run_id` if still queued; of `groups` only, if given) for `worker`,
        atomically.

        PostgreSQL locks the row with FOR UPDATE SKIP LOCKED, so concurrent workers take
        different runs; SQLite serialises claims with a short BEGIN IMMEDIATE transaction.

        Returns:
            The claimed run's number, or None when nothing (or not that run) is queued.
        """
        now = utcnow()
        values = dict(status="running", worker=worker, heartbeat_at=now, started_at=now, finished_at=None,
                      cancel_requested=False, attempt=Run.attempt + 1, live_json="{}")
        pick = select(Run.id).where(Run.status == "queued")
        if groups is not None:
            pick = pick.where(Run.group.in_(list(groups)))
        pick = pick.where(Run.id == run_id) if run_id is not None else pick.order_by(Run.id).limit(1)
        if self.engine.dialect.name == "sqlite":
            with self.engine.connect() as conn:
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # take the write lock before reading the queue
                chosen = conn.execute(pick).scalar()
                if chosen is not None:
                    conn.execute(update(Run).where(Run.id == chosen, Run.status == "queued").values(**values))
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

    def requeue(self, run_id: int, statuses: Iterable[str] = ("interrupted", "cancelled", "failed")) -> bool:
        """Puts a stopped run back in the queue to be resumed by a worker; False if it is not stopped."""
        with Session(self.engine) as s:
            done = s.execute(update(Run).where(Run.id == run_id, Run.status.in_(list(statuses))).values(
                status="queued", finished_at=None, worker=None, heartbeat_at=None, cancel_requested=False,
                phase=None, live_json="{}")).rowcount
            s.commit()
        return bool(done)

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
