"""The run store: runs, their metrics and artefacts, and the queue of runs to execute.

Nothing outside this package writes SQL. One engine per process and URL, its schema
brought up to date by Alembic on first open; one Session per unit of work; metric
rows arrive in batches. The store is also the queue: submitting writes a queued run,
workers claim the oldest atomically and hold a lease renewed by heartbeats, and a
cancel is a flag in the row, so any process on any host can watch or stop any run.
"""
from __future__ import annotations

from kdcore.store.connect import (CHECK_MAX_BYTES, DEFAULT_URL, ELSEWHERE, MIGRATIONS, SQLITE_MAGIC,  # noqa: F401
                                  FolderOutsideRoot, StoreError, StoreFull, StoreGone, StoreReadOnly,
                                  StoreUnwritable, _as_store_error, _check_schema, _checked_url, _connect_read_only,
                                  _damaged, _engine_for, _engines, _engines_lock, _file_problem, _migrate,
                                  _migration_lock, _not_a_store, _open_sqlite_file, _quick_check, _read_only_error,
                                  _read_only_why, _revisions, _schema, _sqlite_engine, _sqlite_path,
                                  _why_not_writable, default_artefact_root, default_url)
from kdcore.store.frames import FRAME_FROM_SUMMARY, TEXT_FROM_SUMMARY, _ci, _loads, _loads_any  # noqa: F401
from kdcore.store.queue import (DEFAULT_GRACE_S, EXPIRE_EVERY_S, HEARTBEAT_S, host_name,  # noqa: F401
                                lease_grace_s, lease_note, this_worker)
from kdcore.store.runs import RunNotFound, Store  # noqa: F401
from kdcore.store.studies import StudyExists, StudyNotFound, StudyRecords  # noqa: F401
from kdcore.store.tables import (ACTIVE, DAMAGED_LABEL, FINISHED, JSON_COLUMNS, STATUSES, Artefact,  # noqa: F401
                                 Metric, Run, Study, Trial, unreadable, utcnow)
