"""Starts the dashboard in a subprocess on a free local port, for browser tests, benches and screenshots."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

ROOT = Path(__file__).resolve().parents[1]
# Headless Chromium as root on a closed network: no sandbox, no background connections.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_dashboard(db_url: str, log_path: Optional[Path] = None, start_timeout: float = 120.0,
                    env: Optional[dict] = None) -> Iterator[str]:
    """Runs the dashboard as `make run` does (`python -m ui.launch`, workers started with the server) against the
    store at `db_url`; yields its base URL, stops it after."""
    with serve_streamlit(["-m", "ui.launch"], dict(KDCORE_DB_URL=db_url, **(env or {})), log_path,
                         start_timeout, "the dashboard") as url:
        yield url


@contextmanager
def serve_streamlit(args: list[str], env: dict, log_path: Optional[Path] = None, start_timeout: float = 120.0,
                    what: str = "streamlit") -> Iterator[str]:
    """`python ARGS` (a Streamlit server) on a free local port from the repository root, once it answers its
    health check; yields its base URL, stops it after."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", **env)
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, *args, "--server.port", str(port), "--server.address",
         "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with code {proc.returncode}" + _tail(log_path))
            try:
                if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not answer within {start_timeout:.0f} s" + _tail(log_path))
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log_path:
            log.close()


def _tail(log_path: Optional[Path]) -> str:
    return ":\n" + log_path.read_text()[-3000:] if log_path and log_path.exists() else ""
