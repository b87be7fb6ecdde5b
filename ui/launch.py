"""The dashboard as `make run` starts it: Streamlit's server on app.py, its workers started as soon as it listens.

    python -m ui.launch [--db URL] [any `streamlit run` flag: --server.port 8501, --server.address …]

Under a plain `streamlit run app.py` the workers start when a browser first renders a page, so runs
queued from the CLI waited for someone to open the dashboard; here they start with the server. The
flags and .streamlit/config.toml (127.0.0.1 unless --server.address says otherwise) are read as by
`streamlit run`, through its own command.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]


def main(argv: Optional[list[str]] = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(args):
        if arg == "--db" and i + 1 < len(args):
            os.environ["KDCORE_DB_URL"] = args[i + 1]  # the pages read the store's URL from here
            del args[i:i + 2]
            break
        if arg.startswith("--db="):
            os.environ["KDCORE_DB_URL"] = arg.split("=", 1)[1]
            del args[i]
            break

    from ui.workers import start_workers

    start_workers()  # once the server listens
    from streamlit.web import cli

    code = 0
    try:
        cli.main(["run", str(ROOT / "app.py"), *args], prog_name="streamlit")
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 0 if done.code is None else 1
        if isinstance(done.code, str):
            print(done.code, file=sys.stderr)
    _exit(code)


def _exit(code: int) -> None:
    """Runs the exit hooks (the workers' stop among them), then ends the process without Python's own
    teardown: with torch, pandas and the rest loaded that took 7 to 8 s on a loaded 2-core machine after
    everything was stopped, pushing the exit past docker stop's 10 s (docs/benchmarks.md)."""
    import atexit
    import threading

    deadline = time.monotonic() + 2.0  # a page still rendering gets a moment, as Python would wait for it
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
