"""Optuna's storage inside the run store: its journal of operations, one row each.

Optuna's own RDB storage would add tables (and an alembic_version of its own) beside kdcore's;
its journal storage needs only a log that every process reads in one order, which the store's
`optuna_journal` table is, on SQLite and PostgreSQL alike.
"""
from __future__ import annotations

import threading
import warnings
from typing import Any, Iterable

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend

from kdcore.store import Store

optuna.logging.set_verbosity(optuna.logging.WARNING)  # a study reports through kdcore, not Optuna's log lines
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class StoreJournal(BaseJournalBackend):
    def __init__(self, store: Store):
        self.store = store

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        return self.store.journal_logs(log_number_from)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self.store.append_journal(logs)


_storages: dict[str, JournalStorage] = {}
_lock = threading.Lock()


def optuna_storage(store: Store) -> JournalStorage:
    """This process's Optuna storage for a store (it replays the journal once, then reads what is new)."""
    with _lock:
        if store.url not in _storages:
            _storages[store.url] = JournalStorage(StoreJournal(store))
        return _storages[store.url]
