"""Opening a store: its URL, the checks of its file, the SQLite and PostgreSQL engines, and its schema.

One engine per process and URL, its schema brought up to date by Alembic on first open (one process at
a time, under a lock). A file that is not a store, is damaged, is newer than this kdcore or cannot be
written is a StoreError whose message says which file, what is wrong and what to do.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

from sqlalchemy import event, inspect
from sqlalchemy.pool import NullPool, StaticPool
from sqlmodel import create_engine

DEFAULT_URL = "sqlite:///runs/kdcore.db"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


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
