"""How long does the dashboard take to exit on SIGTERM while its worker trains (docker stop allows 10 s)?

    .venv/bin/python bench/dashboard_stop.py                      # idle, 5 stops of each way of starting it
    .venv/bin/python bench/dashboard_stop.py --load               # with a busy process on every core
    .venv/bin/python bench/dashboard_stop.py --load --markdown docs/benchmarks.md
    .venv/bin/python bench/dashboard_stop.py --root ../old --label "before"   # another checkout's dashboard

Each stop: a fresh SQLite store holding one queued run (the digits data, a teacher of 10,000 epochs, so
it is still training when stopped); the dashboard started on it, either as `make run` does
(`python -m ui.launch`) or as `streamlit run app.py`; a session opened over Streamlit's websocket as a
browser tab would (a plain `streamlit run` starts its worker only then); once the run has taken a
training step, SIGTERM to the server's process alone (as `docker stop` sends it) and the seconds until
the server has exited. Also counted: how many runs ended `interrupted` (the rest were killed and left
`running`) and how many worker processes were still alive when the server had gone. The two ways of
starting alternate, so a change in the machine's load falls on both.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.machine import cpu_model  # noqa: E402
from bench.markdown import old_block, put_block  # noqa: E402
from kdcore.configure import build_config  # noqa: E402
from kdcore.store import Store  # noqa: E402
from ui.serve import free_port  # noqa: E402

BEGIN, END = "<!-- dashboard-stop:begin -->", "<!-- dashboard-stop:end -->"
HEADING = "## Stopping the dashboard"
LONG_RUN = {"name": "long", "dataset": {"name": "digits"}, "teacher": {"arch": "tiny_cnn", "epochs": 10000},
            "student": {"arch": "mlp_tiny"}, "train": {"epochs": 1, "batch_size": 64}}
WAYS = {"python -m ui.launch": ["-m", "ui.launch"], "streamlit run app.py": ["-m", "streamlit", "run", "app.py"]}
DEADLINE_S = 600  # a start or a stop that takes this long is a failure, not a figure


def _spin() -> None:
    parent = os.getppid()
    while os.getppid() == parent:  # ends with the bench, even one killed
        for _ in range(10**6):
            pass


def _wait(condition, what: str, poll_s: float = 0.05) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {DEADLINE_S} s")
        time.sleep(poll_s)


@contextlib.contextmanager
def _session(port: int):
    """A page opened as a browser tab would: the first script run of a session over the websocket."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}/_stcore/stream", subprotocols=["streamlit"], open_timeout=60,
                 ping_interval=None) as socket:  # no keepalive thread to complain when the server goes
        message = BackMsg()
        message.rerun_script.query_string = ""
        message.rerun_script.page_name = ""
        socket.send(message.SerializeToString())
        yield socket


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def one_stop(way: str, root: Path, tmp: Path) -> dict:
    url = f"sqlite:///{tmp}/runs/kdcore.db"
    store = Store(url)
    run_id = store.create_run(build_config(LONG_RUN))
    port = free_port()
    env = dict(os.environ, KDCORE_DB_URL=url, KDCORE_LOCAL_WORKERS="process", PYTHONUNBUFFERED="1")
    log = open(tmp / "server.log", "w")
    server = subprocess.Popen([sys.executable, *WAYS[way], "--server.port", str(port)], cwd=root, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        def up() -> bool:
            if server.poll() is not None:
                raise RuntimeError(f"{way} exited with {server.returncode}:\n" + (tmp / "server.log").read_text()[-2000:])
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok"
            except OSError:
                return False

        _wait(up, "the dashboard to answer", 0.2)
        with _session(port):
            _wait(lambda: store.get_run(run_id).status == "running" and store.get_run(run_id).live.get("step", 0) > 0,
                  "the run to train", 0.2)
            worker_pid = int(store.get_run(run_id).worker.rsplit(":", 1)[1])
            sent = time.monotonic()
            server.send_signal(signal.SIGTERM)
            _wait(lambda: server.poll() is not None, "the dashboard to exit", 0.01)
            seconds = time.monotonic() - sent
        worker_left = _alive(worker_pid)
        run = store.get_run(run_id)
        return {"way": way, "seconds": seconds, "interrupted": run.status == "interrupted",
                "worker_left": worker_left, "exit": server.returncode}
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        log.close()


def measure(root: Path, repeats: int, ways: list[str]) -> list[dict]:
    results = []
    for i in range(repeats):
        for way in ways:
            with tempfile.TemporaryDirectory() as tmp:
                result = one_stop(way, root, Path(tmp))
            print(f"  {i + 1}/{repeats} {way}: {result['seconds']:.2f} s, "
                  f"{'interrupted' if result['interrupted'] else 'NOT interrupted'}, exit {result['exit']}"
                  + (", worker process left alive" if result["worker_left"] else ""), flush=True)
            results.append(result)
    return results


def rows(results: list[dict], load: str, label: str) -> list[str]:
    out = []
    for way in WAYS:
        mine = [r for r in results if r["way"] == way]
        if not mine:
            continue
        secs = [r["seconds"] for r in mine]
        out.append(f"| {label} | `{way}` | {load} | {len(mine)} | {statistics.median(secs):.2f} | {max(secs):.2f} "
                   f"| {sum(r['interrupted'] for r in mine)} of {len(mine)} "
                   f"| {sum(r['worker_left'] for r in mine)} |")
    return out


HEADER = ["| code | started as | CPU load | stops | median s | max s | run ended `interrupted` | worker left alive |",
          "| --- | --- | --- | --- | ---: | ---: | --- | ---: |"]


def _key(line: str) -> tuple[str, str]:
    cells = [c.strip() for c in line.split("|")[1:-1]]
    return cells[0], cells[2]  # code, load


def block(new_rows: list[str], old: list[str], load: str, label: str, repeats: int) -> str:
    """The table with this measurement's rows in place of earlier rows of the same code and load."""
    kept = [line for line in old if line.startswith("| ") and line not in HEADER and _key(line) != (label, load)]
    table = sorted(kept + new_rows, key=lambda line: (_key(line)[1] != "idle", _key(line)[0], line))
    intro = (f"Seconds from SIGTERM to the server's exit while its `kdcore worker` child trains a digits run, "
             f"{repeats} stops of each way of starting the dashboard, alternated, idle and with one spinning process "
             f"per core beside it (`bench/dashboard_stop.py`); a run that ends `interrupted` kept its curves, and "
             f"docker stop kills whatever is left after 10 s. Machine: {os.cpu_count()}-core {cpu_model()}, "
             f"{datetime.date.today().isoformat()}, shared with other processes of the same user at the time.")
    return "\n".join([intro, "", *HEADER, *table])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="stops of each way of starting it")
    parser.add_argument("--load", action="store_true", help="a busy process on every core for the whole bench")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose dashboard is started")
    parser.add_argument("--label", default="this", help="names the checkout in the table")
    parser.add_argument("--ways", default=",".join(WAYS), help="which ways of starting it, comma-separated "
                        "(a checkout without ui/launch.py has only `streamlit run app.py`)")
    parser.add_argument("--markdown", type=Path, help="write the table into this file between its markers")
    args = parser.parse_args()

    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(os.cpu_count() or 1)] \
        if args.load else []
    for p in spinners:
        p.start()
    load = f"busy ({len(spinners)} spinners)" if spinners else "idle"
    print(f"{args.label} ({args.root}), {load}:", flush=True)
    try:
        ways = [w.strip() for w in args.ways.split(",")]
        unknown = set(ways) - set(WAYS)
        if unknown:
            parser.error(f"unknown --ways {sorted(unknown)}; known: {', '.join(WAYS)}")
        results = measure(args.root.resolve(), args.repeats, ways)
    finally:
        for p in spinners:
            p.terminate()
    new_rows = rows(results, load, args.label)
    print("\n".join([*HEADER, *new_rows]))
    if args.markdown:
        text = args.markdown.read_text() if args.markdown.exists() else ""
        if HEADING not in text:
            args.markdown.write_text(text.rstrip() + f"\n\n{HEADING}\n\n{BEGIN}\n{END}\n")
            text = args.markdown.read_text()
        put_block(args.markdown, BEGIN, END, block(new_rows, old_block(text, BEGIN, END), load, args.label,
                                                      args.repeats))


if __name__ == "__main__":
    main()
