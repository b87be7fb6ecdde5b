"""The dashboard's own workers: started once per process and store, by ui/launch.py as the server starts
(so runs queued from the CLI train before any browser opens the dashboard) or, under a plain
`streamlit run app.py`, by the first page a browser renders.

Stopping: Streamlit handles SIGTERM and SIGINT by stopping its runtime, and Python's exit hooks (where
the manager used to signal its workers) run only after that; under load the two in a row took longer
than docker stop's 10 s. A watcher signals the workers as soon as the runtime starts stopping, so their
grace (kdcore.jobs.manager.STOP_GRACE_S) runs beside Streamlit's own shutdown.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Optional

from kdcore.jobs import JobManager, get_manager
from kdcore.store import Store, StoreError, default_url

_watched: set[int] = set()
_watched_lock = threading.Lock()


def worker_mode(store: Store) -> str:
    """$KDCORE_LOCAL_WORKERS as a JobManager mode: "process" by default, "0" none, "1" process; none on a
    read-only store."""
    mode = os.environ.get("KDCORE_LOCAL_WORKERS", "process")
    return "none" if store.read_only else {"0": "none", "1": "process"}.get(mode, mode)


def start_manager(store: Store) -> JobManager:
    """The process's JobManager for `store`, its workers started on the first call (later calls, from the
    launcher or any page, get the same one), and stopped with the Streamlit server."""
    # A worker child process by default: as a thread beside the page server it waited on Python's GIL while
    # pages rendered, and the demo took twice as long (docs/benchmarks.md).
    mgr = get_manager(store, workers=worker_mode(store))
    with _watched_lock:
        if id(mgr) in _watched:
            return mgr
        _watched.add(id(mgr))
    threading.Thread(target=_stop_with_streamlit, args=(mgr,), daemon=True, name="kdcore-stop-watch").start()
    return mgr


def start_workers(url: Optional[str] = None) -> Optional[JobManager]:
    """start_manager() on the store at `url` (default $KDCORE_DB_URL), for the launcher: a store that cannot
    be opened starts nothing and is left untouched, and the pages show why."""
    try:
        return start_manager(Store(url or default_url()))
    except StoreError as err:
        print(f"kdcore: no worker started: {err}", file=sys.stderr, flush=True)
        return None


def _stop_with_streamlit(mgr: JobManager, poll_s: float = 0.1) -> None:
    from streamlit.runtime import Runtime, RuntimeState

    while not Runtime.exists():  # the launcher starts workers before the server
        time.sleep(poll_s)
    runtime = Runtime.instance()
    while runtime.state not in (RuntimeState.STOPPING, RuntimeState.STOPPED):
        time.sleep(poll_s)
    mgr.begin_shutdown()
    mgr.shutdown()  # kills what outlives the grace even if the interpreter's exit is slow to get there
