import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Tests compare fits with each other: the thread count must not follow whatever else the machine
# runs (tests/test_cpu_watch.py turns the watch back on where it tests it). Workers inherit it.
os.environ["KDCORE_CPU_WATCH"] = "0"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def store(tmp_path):
    from kdcore.store import Store

    return Store(f"sqlite:///{tmp_path}/runs/kdcore.db")


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"MNIST files not found under {SHARED_DATA}")
    return SHARED_DATA


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keeps each phase's report on the test item, so fixtures can save a screenshot on failure."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


# ---- a real PostgreSQL server for the store's tests ----------------------------------------------------
def _pg_bin() -> Optional[Path]:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """Starts PostgreSQL with initdb/pg_ctl in a temporary folder on a free port; yields a URL factory.

    Root cannot run the server, so as root it runs as the `postgres` user. Skips where the
    server is not installed, unless KDCORE_REQUIRE_POSTGRES=1 (CI), where that is a failure.
    """
    bin_dir = _pg_bin()
    if bin_dir is None:
        reason = "PostgreSQL is not installed (make test installs Debian's postgresql when run as root)"
        if os.environ.get("KDCORE_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="kdcore-pg-"))
    if os.geteuid() == 0:
        import pwd

        user = pwd.getpwnam("postgres")
        os.chown(base, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = base / "data", _free_port()

    def pg(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(as_user + [str(bin_dir / cmd[0]), *cmd[1:]], capture_output=True, text=True,
                              check=check, timeout=120)

    pg("initdb", "-D", str(data), "-U", "kdcore", "-A", "trust", "--no-sync", "-E", "UTF8")
    pg("pg_ctl", "-D", str(data), "-l", str(base / "server.log"), "-w", "-t", "120", "-o",
       f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200", "start")
    counter = iter(range(1_000_000))

    def new_database() -> str:
        name = f"kd{next(counter)}"
        pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "kdcore", name)
        return f"postgresql+psycopg://kdcore@127.0.0.1:{port}/{name}"

    try:
        yield new_database
    finally:
        pg("pg_ctl", "-D", str(data), "-m", "immediate", "stop", check=False)
        shutil.rmtree(base, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request, tmp_path):
    """The same store tests on a real SQLite file and on a real PostgreSQL server."""
    from kdcore.store import Store

    if request.param == "sqlite":
        return Store(f"sqlite:///{tmp_path}/runs/kdcore.db")
    return Store(request.getfixturevalue("postgres_server")(), artefact_root=tmp_path / "runs")


# ---- a real Chromium, shared by the browser tests ----------------------------------------------------
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def chromium_path() -> str:
    """Debian's chromium; a skip where it is missing, a failure where the run requires it (CI)."""
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if path is None:
        reason = "Debian's chromium is not installed (make test installs it when run as root)"
        if os.environ.get("KDCORE_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    from ui.serve import CHROMIUM_ARGS

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS + ["--headless=new"], headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, request):
    """A fresh browser page; a failing test leaves a full-page screenshot in test-artifacts/."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    yield pg
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()


@pytest.fixture(scope="module")
def dashboard_without_worker(tmp_path_factory):
    """(base URL, store URL) of a dashboard on an empty store that runs nothing itself: queued runs stay queued
    until a `kdcore worker` takes them."""
    from tests.helpers import STALL_S
    from ui.serve import serve_dashboard

    tmp = tmp_path_factory.mktemp("no_worker")
    db = f"sqlite:///{tmp}/runs/kdcore.db"
    with serve_dashboard(db, log_path=tmp / "streamlit.log", start_timeout=STALL_S,
                         env={"KDCORE_LOCAL_WORKERS": "0"}) as url:
        yield url, db
