"""The dashboard's own workers: started once per process and store, by ui/launch.py as the server starts
(so runs queued from the CLI train before any browser opens the dashboard) or, under a plain
`streamlit run app.py`, by the first page a browser renders.

Stopping: Streamlit handles SIGTERM and SIGINT by stopping its runtime, and the manager used to signal
its workers only from Python's exit hooks, after that. A watcher signals them as soon as the runtime
starts stopping, so their grace (kdcore.jobs.manager.STOP_GRACE_S) runs beside Streamlit's own
shutdown; ui/launch.py also spares the process Python's slow teardown.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from kdcore.jobs import JobManager
    from kdcore.store import Store

# kdcore is imported where it is used, not here: ui/launch.py imports this module before the server starts,
# and importing torch first kept the port closed (and the browser on an error page) for 15 s or more.

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
    from kdcore.jobs import get_manager

    # A worker child process by default: as a thread beside the page server it waited on Python's GIL while
    # pages rendered, and the demo took twice as long (docs/benchmarks.md).
    mgr = get_manager(store, workers=worker_mode(store))
    with _watched_lock:
        if id(mgr) in _watched or _runtime_state() is None:  # no server (AppTest): the exit hook stops them
            return mgr
        _watched.add(id(mgr))
    threading.Thread(target=_stop_with_streamlit, args=(mgr,), daemon=True, name="kdcore-stop-watch").start()
    return mgr


def start_workers(url: Optional[str] = None) -> threading.Thread:
    """For the launcher, called before the server: starts the workers on the store at `url` (default
    $KDCORE_DB_URL) as soon as the server listens, before any browser connects. Not before: a server that
    cannot take its port (one already running) exits, and a worker of its would interrupt the run it claimed.
    A store that cannot be opened starts nothing and is left untouched; the pages show why."""
    def start() -> None:
        from streamlit.runtime import RuntimeState

        while _runtime_state() in (None, RuntimeState.INITIAL):  # it leaves INITIAL once the port is bound
            time.sleep(0.1)
        if _runtime_state() in (RuntimeState.STOPPING, RuntimeState.STOPPED):
            return
        from kdcore.store import Store, StoreError, default_url

        try:
            start_manager(Store(url or default_url()))
        except StoreError as err:
            print(f"kdcore: no worker started: {err}", file=sys.stderr, flush=True)

    thread = threading.Thread(target=start, daemon=True, name="kdcore-start-workers")
    thread.start()
    return thread


def _runtime_state():
    from streamlit.runtime import Runtime

    return Runtime.instance().state if Runtime.exists() else None


def _stop_with_streamlit(mgr: JobManager, poll_s: float = 0.1) -> None:
    from streamlit.runtime import RuntimeState

    while _runtime_state() not in (RuntimeState.STOPPING, RuntimeState.STOPPED):
        time.sleep(poll_s)
    mgr.begin_shutdown()
    mgr.shutdown()  # kills what outlives the grace even if the interpreter's exit is slow to get there
