"""Store faults and clean shutdown, each fed for real: a file that is not a store, a damaged store, a
read-only store, damaged rows, and Ctrl-C or SIGTERM on a dashboard whose worker is training.

Each case checks what the user gets (one line and exit status 2 from `kdcore`, a message instead of a
traceback in the dashboard) and that nothing stored changed. docs/reliability.md lists them.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the app's own packages (ui), as `streamlit run` would see them

from streamlit.testing.v1 import AppTest  # noqa: E402

from kdcore.configure import build_config  # noqa: E402
from kdcore.jobs import run_here  # noqa: E402
from kdcore.store import DAMAGED_LABEL, Store, StoreError  # noqa: E402
from tests.helpers import cli  # noqa: E402

# A busy machine is slow, not broken: waits fail only when nothing has progressed for this long.
STALL_S = 300
PAGES = ["pages/home.py", "pages/new_experiment.py", "pages/live.py", "pages/runs.py", "pages/distributions.py"]
TINY = {"dataset": {"name": "digits"}, "teacher": {"arch": "tiny_cnn", "epochs": 1}, "student": {"arch": "mlp_tiny"},
        "train": {"epochs": 1, "batch_size": 256}}
GROUP = "seeds of r"
READS = [("runs", "list"), ("runs", "list", "--json"), ("runs", "show", "1"), ("runs", "show", "1", "--json"),
         ("groups", "list"), ("groups", "show", GROUP)]
WRITES = [("runs", "cancel", "2"), ("runs", "delete", "1", "--yes"), ("submit", "examples/digits.yaml"),
          ("train", "examples/digits.yaml"), ("worker", "--exit-when-idle")]


def kdcore(*args, db: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdcore", "--db", db, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return lines[0]


# ---- stores to break -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A real store, closed: run 1 completed with curves, run 2 queued, runs 3-4 a seed group; 20 more runs."""
    path = tmp_path_factory.mktemp("template") / "kd.db"
    store = Store(_url(path))
    config = build_config({**TINY, "name": "r"})
    first = store.create_run(config)
    store.finish_run(first, "completed", {"student_test_acc": 0.9, "baseline_test_acc": 0.8, "kd_gain": 0.1})
    store.add_metrics(first, [dict(phase="student", kind="step", step=k, epoch=1, name="train_loss", value=1 / (k + 1))
                              for k in range(3000)])
    store.create_run(config)
    for seed in (0, 1):
        run_id = store.create_run(build_config({**TINY, "name": f"r seed {seed}", "group": GROUP,
                                                "train": {**TINY["train"], "seed": seed}}))
        store.finish_run(run_id, "completed", {"kd_gain": 0.01 * seed})
    for i in range(20):
        store.finish_run(store.create_run(build_config({**TINY, "name": f"filler {i}"})), "completed", {})
    store.engine.dispose()  # the last connection folds the WAL into the file
    assert sorted(p.name for p in path.parent.iterdir()) == ["kd.db", "kd.db.lock"]
    return path


def _copy(template: Path, to: Path) -> Path:
    to.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, to)
    return to


def _not_a_store(kind: str, template: Path, path: Path) -> Path:
    """A store file broken as `kind` describes, at `path`."""
    rng = random.Random(0)
    data = template.read_bytes() if kind not in ("text", "random bytes") else b""
    if kind == "text":
        path.write_text("run_id,name\n1,my runs are in the other file\n")
    elif kind == "random bytes":
        path.write_bytes(rng.randbytes(64 * 1024))
    elif kind == "damaged pages":  # a valid header, then pages of noise in the middle (a bad sector, a bad copy)
        middle = (len(data) // 4096 // 2) * 4096
        path.write_bytes(data[:middle] + rng.randbytes(8 * 4096) + data[middle + 8 * 4096:])
    elif kind == "cut short":  # half a download
        path.write_bytes(data[:len(data) // 2])
    elif kind == "damaged header":
        path.write_bytes(data[:16] + b"\xff\xff" + data[18:])
    return path


@contextlib.contextmanager
def read_only(*paths: Path):
    """Makes files and folders read-only for this process for real.

    A user gets chmod (0o444 files, 0o555 folders). Root ignores those bits, so as root the paths get
    the immutable attribute (chattr +i), which stops root too; where that is impossible the test skips.
    """
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in paths}
        for p in paths:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            yield
        finally:
            for p in paths:
                p.chmod(modes[p])
        return
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("running as root, whom chmod does not stop, and chattr is missing to make the store immutable")
    made = subprocess.run([chattr, "+i", *map(str, paths)], capture_output=True, text=True)
    try:
        if made.returncode != 0:
            pytest.skip(f"running as root, whom chmod does not stop, and chattr +i failed: {made.stderr.strip()}")
        yield
    finally:
        subprocess.run([chattr, "-i", *map(str, paths)], capture_output=True)


# ---- 3a: a file that is not a store, or a damaged one --------------------------------------------------
@pytest.mark.parametrize("kind, commands", [
    ("damaged pages", READS + WRITES),  # every command; the others, which fail at the same open, a few each
    ("text", [("runs", "list", "--json"), ("groups", "show", GROUP), ("runs", "delete", "1", "--yes"),
              ("train", "examples/digits.yaml")]),
    ("random bytes", [("runs", "show", "1"), ("worker", "--exit-when-idle")]),
    ("cut short", [("runs", "list"), ("submit", "examples/digits.yaml")]),
    ("damaged header", [("runs", "show", "1"), ("runs", "cancel", "2")]),
], ids=["damaged pages", "text", "random bytes", "cut short", "damaged header"])
def test_a_file_that_is_not_a_store_is_one_line_and_exit_2_from_every_command_and_stays_untouched(
        tmp_path, template, kind, commands, capsys):
    path = _not_a_store(kind, template, tmp_path / "runs.db")
    digest, files = _digest(path), sorted(tmp_path.iterdir())
    for i, command in enumerate(commands):
        # the first two as the user runs them, in a process of their own; the rest in this one (a refused
        # open leaves nothing behind in the process), which saves a PyTorch import per command
        result = kdcore(*command, db=_url(path)) if i < 2 else cli(capsys, *command, db=_url(path))
        assert result.returncode == 2, (command, result.stderr[-3000:])
        line = _one_error_line(result)
        assert str(path) in line and "point --db" in line, line
        assert ("is not a kdcore store (file is not a database)" in line if kind in ("text", "random bytes")
                else "is damaged (" in line), line
        assert _digest(path) == digest, command
        assert sorted(tmp_path.iterdir()) == files, f"{command} left {sorted(tmp_path.iterdir())}"


def test_a_database_of_another_program_is_not_turned_into_a_store(tmp_path):
    path = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        conn.commit()
    digest = _digest(path)
    with pytest.raises(StoreError, match=r"is not a kdcore store \(it holds other tables: invoices\)"):
        Store(_url(path))
    assert _digest(path) == digest


def test_a_store_of_a_newer_kdcore_is_refused_unchanged(tmp_path, template):
    path = _copy(template, tmp_path / "kd.db")
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099'")
        conn.commit()
    digest = _digest(path)
    result = kdcore("runs", "list", db=_url(path))
    assert result.returncode == 2
    assert "was written by a newer kdcore (schema 0099" in _one_error_line(result)
    assert _digest(path) == digest


@pytest.mark.parametrize("page", PAGES)
def test_the_dashboard_shows_a_store_fault_in_place_of_every_page(tmp_path, monkeypatch, page):
    path = _not_a_store("text", Path(), tmp_path / "runs.db")
    digest = _digest(path)
    monkeypatch.setenv("KDCORE_DB_URL", _url(path))
    monkeypatch.setenv("KDCORE_LOCAL_WORKERS", "thread")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    if page != "pages/home.py":
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    assert [e.value for e in at.error] == [f"{path} is not a kdcore store (file is not a database): point --db (or "
                                           "KDCORE_DB_URL) at another file or move this one away"]
    assert _digest(path) == digest and sorted(p.name for p in tmp_path.iterdir()) == ["runs.db"]


# ---- 3b: a store that cannot be written ----------------------------------------------------------------
@pytest.mark.parametrize("locked, reads, writes", [
    ("file", READS, WRITES),
    ("folder", READS[:2], [("runs", "cancel", "2"), ("submit", "examples/digits.yaml")]),  # the same checks
], ids=["file", "folder"])
def test_a_read_only_store_lists_and_shows_its_runs_and_refuses_every_write_in_one_line(
        tmp_path, template, locked, reads, writes, capsys):
    path = _copy(template, tmp_path / "store" / "kd.db")
    url = _url(path)
    before = json.loads(kdcore("runs", "list", "--json", db=url).stdout)
    digest = _digest(path)

    def run(i: int, command: tuple) -> subprocess.CompletedProcess:
        # the first read and write as the user runs them; the rest in this process, which first opens the store
        # here while it is read-only, as a fresh process does
        return kdcore(*command, db=url) if i == 0 else cli(capsys, *command, db=url)

    with read_only(path if locked == "file" else path.parent):
        assert not os.access(path if locked == "file" else path.parent, os.W_OK)
        for i, command in enumerate(reads):
            result = run(i, command)
            assert result.returncode == 0, (command, result.stderr[-3000:])
            if command == ("runs", "list", "--json"):
                assert json.loads(result.stdout) == before
            if command == ("groups", "show", GROUP):
                assert "2 runs (2 completed)" in result.stdout
        why = "may not write the file" if locked == "file" else f"may not write its folder {path.parent}"
        for i, command in enumerate(writes):
            result = run(i, command)
            assert result.returncode == 2, (command, result.stderr[-3000:])
            line = _one_error_line(result)
            assert line.startswith(f"error: {path} is read-only: ") and why in line, line
        assert _digest(path) == digest
    assert _digest(path) == digest
    assert json.loads(kdcore("runs", "list", "--json", db=url).stdout) == before  # writable again, nothing changed


def test_an_old_read_only_store_says_it_needs_an_upgrade_and_is_never_migrated(tmp_path):
    path = _copy(ROOT / "tests" / "fixtures" / "store-0.1.0" / "kdcore.db", tmp_path / "old" / "kdcore.db")
    digest = _digest(path)
    with read_only(path):
        result = kdcore("runs", "list", db=_url(path))
        assert result.returncode == 2
        line = _one_error_line(result)
        assert "needs an upgrade (schema of release 0.1.0 to 0004) and is read-only here" in line, line
        assert "someone who can write it must open it once" in line
    assert _digest(path) == digest
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        assert "alembic_version" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    upgraded = kdcore("runs", "list", "--json", db=_url(path))  # writable again: the upgrade happens
    assert upgraded.returncode == 0 and {r["id"] for r in json.loads(upgraded.stdout)} == {1, 2}


def test_the_dashboard_shows_a_read_only_store_and_a_launch_says_why_it_failed(tmp_path, template, monkeypatch):
    path = _copy(template, tmp_path / "store" / "kd.db")
    digest = _digest(path)
    monkeypatch.setenv("KDCORE_DB_URL", _url(path))
    monkeypatch.setenv("KDCORE_LOCAL_WORKERS", "thread")
    with read_only(path):
        for page in PAGES:
            at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
            if page != "pages/home.py":
                at.switch_page(page).run()
            assert not at.exception, (page, [e.value for e in at.exception])
            assert not at.error, (page, [e.value for e in at.error])
        home = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()  # app.py's sidebar: on Home
        assert any("Read-only store" in c.value for c in home.sidebar.caption)
        assert [b.disabled for b in home.button if b.label.startswith("Run ")] == [True, True]
        runs = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
        runs.switch_page("pages/runs.py").run()
        assert len(runs.dataframe[0].value) == 24
        form = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
        form.switch_page("pages/new_experiment.py").run()
        form.button(key="ui.launch").click().run()
        assert not form.exception, [e.value for e in form.exception]
        assert any(e.value.startswith(f"{path} is read-only: ") for e in form.error), [e.value for e in form.error]
    assert _digest(path) == digest


# ---- 3c: rows whose JSON columns are damaged -----------------------------------------------------------
@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """A store with a real finished run whose JSON columns are then damaged, a damaged member of a group, a
    running run whose progress is damaged, and intact runs around them."""
    url = _url(tmp_path_factory.mktemp("damaged") / "kd.db")
    store = Store(url)
    real, status = run_here(store, build_config({**TINY, "name": "real"}))
    assert status == "completed"
    group = [store.create_run(build_config({**TINY, "name": f"g{s}", "group": "g", "train": {**TINY["train"],
                                                                                              "seed": s}}))
             for s in (0, 1)]
    for run_id in group:
        store.finish_run(run_id, "completed", {"kd_gain": 0.02})
    running = store.create_run(build_config({**TINY, "name": "running"}))
    store.claim("elsewhere:1", run_id=running)
    intact = store.create_run(build_config({**TINY, "name": "intact"}))
    store.finish_run(intact, "completed", {"kd_gain": 0.03})
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE runs SET config_json = '{\"dataset\": {\"name\": \"dig', summary_json = "
                             "'not json', tags = '{oops', live_json = '[' WHERE id = ?", (real,))
        conn.exec_driver_sql("UPDATE runs SET config_json = '[1, 2]', tags = '[1, {\"a\": 2}]' WHERE id = ?",
                             (group[1],))
        # its worker is alive elsewhere: a lease renewed far ahead, so no reader marks it interrupted
        conn.exec_driver_sql("UPDATE runs SET live_json = '{\"epoch\": ', heartbeat_at = datetime('now', '+1 day') "
                             "WHERE id = ?", (running,))
    rows = _rows(store)
    return {"url": url, "real": real, "group": group, "running": running, "intact": intact, "rows": rows}


def _rows(store: Store) -> list[tuple]:
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql("SELECT * FROM runs ORDER BY id")]


def test_the_cli_lists_and_shows_damaged_runs_as_damaged(damaged):
    url, real = damaged["url"], damaged["real"]
    listed = kdcore("runs", "list", "--json", db=url)
    assert listed.returncode == 0, listed.stderr[-3000:]
    by_id = {r["id"]: r for r in json.loads(listed.stdout)}
    assert by_id[real]["damaged"] == ["config_json", "summary_json", "live_json", "tags"]
    assert by_id[real]["status"] == "completed" and by_id[real]["config"] is None and by_id[real]["summary"] is None
    assert by_id[real]["kd_gain"] is not None  # the columns outside the JSON are intact and shown
    assert by_id[damaged["group"][1]]["damaged"] == ["config_json", "tags"]
    assert by_id[damaged["running"]]["damaged"] == ["live_json"] and by_id[damaged["intact"]]["damaged"] == []
    table = kdcore("runs", "list", db=url)
    assert table.returncode == 0 and table.stdout.count(DAMAGED_LABEL) == 3
    shown = kdcore("runs", "show", str(real), db=url)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert f"run {real}: real {DAMAGED_LABEL}" in shown.stdout and "config: unreadable" in shown.stdout
    assert json.loads(kdcore("runs", "show", str(real), "--json", db=url).stdout)["config"] is None
    group = kdcore("groups", "show", "g", db=url)
    assert group.returncode == 0, group.stderr[-3000:]
    assert "2 runs (2 completed)" in group.stdout and DAMAGED_LABEL in group.stdout
    assert _rows(Store(url)) == damaged["rows"]  # reading changed nothing


@pytest.mark.parametrize("page", ["pages/home.py", "pages/runs.py", "pages/live.py", "pages/distributions.py"])
def test_every_page_shows_damaged_runs_as_damaged(damaged, monkeypatch, page):
    monkeypatch.setenv("KDCORE_DB_URL", damaged["url"])
    monkeypatch.setenv("KDCORE_LOCAL_WORKERS", "thread")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    if page != "pages/home.py":
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    real = damaged["real"]
    if page in ("pages/home.py", "pages/runs.py"):
        names = list(at.dataframe[0].value["name"])
        assert f"real {DAMAGED_LABEL}" in names and "intact" in names
    if page == "pages/runs.py":
        row = list(at.dataframe[0].value["id"]).index(real)
        at.session_state[at.dataframe[0].key] = {"selection": {"rows": [row], "columns": [], "cells": []}}
        at.run()
        assert any(DAMAGED_LABEL in s.value for s in at.subheader)
        for view in ("Summary", "Config", "Curves", "Downloads"):
            at.radio(key="runs_detail_view").set_value(view).run()
            assert not at.exception, (view, [e.value for e in at.exception])
    if page in ("pages/live.py", "pages/distributions.py"):
        box = at.selectbox(key="live_pick" if page == "pages/live.py" else "dist_run")
        assert any(DAMAGED_LABEL in label for label in box.options), box.options
        for shown in (real, damaged["running"]) if page == "pages/live.py" else (real,):
            box.set_value(shown).run()
            assert not at.exception, (shown, [e.value for e in at.exception])
    if page == "pages/distributions.py":
        assert any("cannot be read" in w.value for w in at.warning)
        assert len(at.get("plotly_chart")) == 5  # everything that comes from the stored logits
    assert _rows(Store(damaged["url"])) == damaged["rows"]


# ---- the dashboard as `make run` serves it ----------------------------------------------------------------
@contextlib.contextmanager
def _dashboard(url: str, log: Path, **env):
    """The dashboard as `make run` starts it (`python -m ui.launch`) on `url`, in a process group of its own as
    a terminal would start it; yields (process, port) once it answers, and kills what is left of it at the end."""
    pytest.importorskip("websockets.sync.client", reason="the dashboard is opened through Streamlit's websocket")
    from ui.serve import free_port

    port = free_port()
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "ui.launch", "--server.port", str(port)],
                                  cwd=ROOT, env=dict(os.environ, KDCORE_DB_URL=url, PYTHONUNBUFFERED="1", **env),
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def up() -> bool:
            assert server.poll() is None, log.read_text()[-3000:]
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok"
            except OSError:
                return False

        _wait(up, "the dashboard to answer", progress=lambda: log.stat().st_size)
        yield server, port
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@contextlib.contextmanager
def _open_a_session(port: int, page: str = ""):
    """Opens a page in a session as a browser tab would (the dashboard starts its job manager on the first)."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}/_stcore/stream", subprotocols=["streamlit"], open_timeout=60) as socket:
        message = BackMsg()
        message.rerun_script.query_string = ""
        message.rerun_script.page_name = page
        socket.send(message.SerializeToString())
        yield socket


def _rendered(socket) -> dict[str, list[str]]:
    """The alerts and exceptions of the session's first script run, as the browser receives them."""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    seen: dict[str, list[str]] = {"alert": [], "exception": []}
    while True:
        msg = ForwardMsg()
        msg.ParseFromString(socket.recv(timeout=STALL_S))
        if msg.WhichOneof("type") == "script_finished":
            return seen
        if msg.WhichOneof("type") == "delta" and msg.delta.WhichOneof("type") == "new_element":
            kind = msg.delta.new_element.WhichOneof("type")
            if kind == "alert":
                seen["alert"].append(msg.delta.new_element.alert.body)
            elif kind == "exception":
                seen["exception"].append(msg.delta.new_element.exception.message)


def _wait(condition, what: str, progress=lambda: None, poll_s: float = 0.2):
    """Polls until `condition()` holds; fails only when `progress()` has not changed for STALL_S."""
    last, since = progress(), time.monotonic()
    while not condition():
        now = progress()
        if now != last:
            last, since = now, time.monotonic()
        if time.monotonic() - since > STALL_S:
            pytest.fail(f"{what}: nothing progressed for {STALL_S} s (last seen {last!r})")
        time.sleep(poll_s)


def test_the_served_dashboard_shows_a_store_fault_on_the_first_page_a_browser_opens(tmp_path):
    # a first visit straight to /runs runs pages/runs.py without app.py (Streamlit's pages/ folder routing)
    path = _not_a_store("random bytes", Path(), tmp_path / "runs.db")
    digest = _digest(path)
    with _dashboard(_url(path), tmp_path / "streamlit.log", KDCORE_LOCAL_WORKERS="process") as (_, port):
        for page in ("runs", ""):
            with _open_a_session(port, page) as socket:
                seen = _rendered(socket)
            assert seen["exception"] == [], (page, seen)
            assert [a for a in seen["alert"] if "is not a kdcore store (file is not a database)" in a], (page, seen)
    assert _digest(path) == digest and sorted(p.name for p in tmp_path.iterdir()) == ["runs.db", "streamlit.log"]


# ---- 5: Ctrl-C and SIGTERM on the dashboard --------------------------------------------------------------
@pytest.mark.parametrize("sig, to, workers", [
    (signal.SIGINT, "terminal", "process"),  # Ctrl-C: the terminal signals the whole foreground group
    (signal.SIGTERM, "server", "process"),  # kill, docker stop, systemd: the server's own process
    (signal.SIGTERM, "server", "thread"),  # KDCORE_LOCAL_WORKERS=thread: the worker is a thread of the server
], ids=["ctrl-c", "sigterm", "sigterm-thread-worker"])
def test_the_dashboard_ends_its_run_interrupted_and_exits_cleanly_on_ctrl_c_or_sigterm(tmp_path, sig, to, workers):
    url = _url(tmp_path / "runs" / "kdcore.db")
    store = Store(url)
    run_id = store.create_run(build_config({**TINY, "name": "long", "teacher": {"arch": "tiny_cnn", "epochs": 10000},
                                            "train": {"epochs": 1, "batch_size": 64}}))
    log = tmp_path / "streamlit.log"
    step = lambda: store.get_run(run_id).live.get("step", 0)  # noqa: E731
    progress = lambda: (log.stat().st_size, store.get_run(run_id).status, step())  # noqa: E731
    with _dashboard(url, log, KDCORE_LOCAL_WORKERS=workers) as (server, port):
        with _open_a_session(port):
            _wait(lambda: store.get_run(run_id).status == "running" and step() > 0, "the run to start training",
                  progress=progress)
            worker = store.get_run(run_id).worker
            os.killpg(server.pid, sig) if to == "terminal" else server.send_signal(sig)
            _wait(lambda: server.poll() is not None, "the dashboard to exit", progress=progress)
    output = log.read_text()
    assert server.returncode in (0, 128 + sig), f"exit status {server.returncode}:\n{output[-3000:]}"
    for bad in ("terminate called", "Aborted", "Traceback", "core dumped"):
        assert bad not in output, output[-3000:]
    run = store.get_run(run_id)
    assert run.status == "interrupted", (run.status, run.error, output[-3000:])
    assert "stopped" in run.error and run.finished_at is not None and not store.metrics_frame([run_id]).empty
    if workers == "process":  # its `kdcore worker` child ended too, not orphaned
        pid = int(worker.rsplit(":", 1)[1])
        _wait(lambda: _gone(pid), "the worker process to end")


def test_the_dashboard_trains_runs_queued_from_the_command_line_before_any_browser_opens_it(tmp_path):
    # `kdcore submit` then `make run`, and nobody opens the page: the run must not wait for a browser
    url = _url(tmp_path / "runs" / "kdcore.db")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "name": "queued from the CLI"}))
    submitted = kdcore("submit", str(config), "--json", db=url)
    assert submitted.returncode == 0, submitted.stderr
    [run_id] = json.loads(submitted.stdout)["runs"]
    store = Store(url)
    assert store.get_run(run_id).status == "queued"
    log = tmp_path / "streamlit.log"
    run = lambda: store.get_run(run_id)  # noqa: E731
    with _dashboard(url, log, KDCORE_LOCAL_WORKERS="process") as (server, _):
        _wait(lambda: run().status not in ("queued", "running"), "the queued run to finish",
              progress=lambda: (log.stat().st_size, run().status, run().live.get("step", 0)))
        assert server.poll() is None
    assert run().status == "completed", (run().status, run().error, log.read_text()[-3000:])
    assert run().worker and not store.metrics_frame([run_id]).empty


def _gone(pid: int) -> bool:
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


# ---- 6: a worker process that dies is replaced -----------------------------------------------------------
def test_a_killed_worker_process_is_replaced_and_the_fresh_one_trains(tmp_path):
    # a worker stops itself after a CUDA device-side error (its context is lost); SIGKILL stands in for any exit
    from kdcore.jobs import JobManager

    store = Store(_url(tmp_path / "runs" / "kdcore.db"))
    manager = JobManager(store, devices=["cpu"], workers="process", cpu_threads=1)
    try:
        first = manager._children[0]
        warm_up = manager.submit(build_config({**TINY, "name": "before"}))
        assert manager.wait(warm_up, timeout=600) == "completed"  # the first worker took runs
        first.kill()
        _wait(lambda: manager.restarts == 1 and manager._children[0].poll() is None,
              "a fresh worker process", progress=lambda: (first.poll(), manager.restarts))
        assert manager._children[0].pid != first.pid and first.returncode == -signal.SIGKILL
        after = manager.submit(build_config({**TINY, "name": "after"}))
        assert manager.wait(after, timeout=600) == "completed"
        assert store.get_run(after).worker.rsplit(":", 1)[1] == str(manager._children[0].pid)
    finally:
        manager.shutdown()
    assert all(child.poll() is not None for child in manager._children)
