"""Hostile input to `kdcore`, fed for real to the CLI in a subprocess on a real SQLite file: store URLs it cannot
use, run ids beyond 64 bits, summaries of the wrong types, report paths it cannot write, bad environment values,
typos in --db, and configs that would fail only at run time or quietly run defaults.

Each case checks what the user gets (one line and exit status 2, or a run shown as damaged) and that nothing
stored was lost or changed. docs/reliability.md lists them.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdcore.configure import build_config  # noqa: E402
from kdcore.jobs import run_here  # noqa: E402
from kdcore.store import DAMAGED_LABEL, Store  # noqa: E402
from tests.helpers import cli  # noqa: E402
from tests.test_faults import TINY, _digest, _one_error_line, _url, kdcore, read_only  # noqa: E402

DIGITS = "examples/digits.yaml"
BIG = "99999999999999999999"  # beyond 2**64


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A closed store's folder: run 1 a real completed run with its files, runs 2-3 a completed seed group "g"."""
    folder = tmp_path_factory.mktemp("finished")
    store = Store(_url(folder / "kd.db"))
    real, status = run_here(store, build_config({**TINY, "name": "real"}))
    assert (real, status) == (1, "completed")
    for seed in (0, 1):
        run_id = store.create_run(build_config({**TINY, "name": f"g{seed}", "group": "g",
                                                "train": {**TINY["train"], "seed": seed}}))
        store.finish_run(run_id, "completed", {**store.get_run(real).summary, "kd_gain": 0.01 * seed})
    store.engine.dispose()  # the last connection folds the WAL into the file
    return folder


def _copy(finished: Path, to: Path) -> Path:
    """A copy of the finished store and its run folders in `to`; the store file's path."""
    shutil.copytree(finished, to)
    return to / "kd.db"


def _files(folder: Path) -> list:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _refused(result, *needles: str) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    line = _one_error_line(result)
    assert all(n in line for n in needles), line
    return line


# ---- 1. a --db that is not a store URL kdcore can use --------------------------------------------------
@pytest.mark.parametrize("kind", ["new plain path", "existing plain path", "unknown dialect", "unknown driver",
                                  "unreachable server"])
def test_a_store_url_kdcore_cannot_use_is_one_line_saying_what_to_write(tmp_path, finished, kind):
    store = _copy(finished, tmp_path / "store")
    digest, files = _digest(store), _files(tmp_path)
    db, needles = {
        "new plain path": (str(tmp_path / "new.db"), [f"write sqlite:///{tmp_path / 'new.db'}"]),
        "existing plain path": (str(store), [f"write sqlite:///{store}"]),
        "unknown dialect": ("mysqlx://u:secret@127.0.0.1/x", ["mysqlx", "sqlite:///", "postgresql+psycopg://"]),
        "unknown driver": ("postgresql+nosuchdrv://u:secret@127.0.0.1/x", ["postgresql+nosuchdrv", "sqlite:///"]),
        # port 1 on this machine's loopback: nothing listens there
        "unreachable server": ("postgresql://u:secret@127.0.0.1:1/x", ["postgresql://u:***@127.0.0.1:1/x",
                                                                      "cannot be reached", "Connection refused"]),
    }[kind]
    for command in (("runs", "list"), ("submit", DIGITS)):
        result = kdcore(*command, db=db)
        _refused(result, *needles)
        assert "secret" not in result.stderr
    assert _digest(store) == digest and _files(tmp_path) == files


# ---- 2. run ids beyond 64 bits -------------------------------------------------------------------------
@pytest.mark.parametrize("command", [("runs", "show", BIG), ("runs", "cancel", BIG), ("runs", "delete", BIG, "--yes"),
                                     ("runs", "resume", BIG), ("export", BIG, "--format", "onnx", "-o", "OUT"),
                                     ("report", BIG, "-o", "OUT")])
def test_a_run_id_beyond_64_bits_is_one_line_and_exit_2(tmp_path, finished, command):
    store = _copy(finished, tmp_path / "store")
    digest, files = _digest(store), _files(tmp_path)
    command = [str(tmp_path / "out") if a == "OUT" else a for a in command]
    _refused(kdcore(*command, db=_url(store)), f"run id {BIG} is out of range")
    assert _digest(store) == digest and _files(tmp_path) == files


# ---- 3. a summary of valid JSON but the wrong types ----------------------------------------------------
@pytest.mark.parametrize("summary", ['[1, 2]', '{"kd_gain": "abc"}', '{"teachers": {"phase": "teacher"}}',
                                     '{"kd_gain_ci95": "wide", "student_test_acc": [0.9]}'])
def test_a_summary_of_the_wrong_types_is_shown_as_damaged_by_show_and_both_reports(tmp_path, finished, summary, capsys):
    store = _copy(finished, tmp_path / "store")
    url = _url(store)
    with contextlib.closing(sqlite3.connect(store)) as conn:
        conn.execute("UPDATE runs SET summary_json = ? WHERE id IN (1, 3)", (summary,))
        conn.commit()
    digest = _digest(store)
    shown = cli(capsys, "runs", "show", "1", db=url)  # in this process: a raised error fails the test as a traceback would
    assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr[-3000:]
    assert f"run 1: real {DAMAGED_LABEL}" in shown.stdout and "damaged: summary_json cannot be read" in shown.stdout
    as_json = json.loads(cli(capsys, "runs", "show", "1", "--json", db=url).stdout)
    assert as_json["damaged"] == ["summary_json"] and as_json["summary"] is None
    group = cli(capsys, "groups", "show", "g", db=url)
    assert group.returncode == 0 and DAMAGED_LABEL in group.stdout, group.stderr[-3000:]
    for target in ("1", "g"):
        out = tmp_path / f"report-{target}.html"
        result = cli(capsys, "report", target, "-o", str(out), "--no-latency", db=url)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert DAMAGED_LABEL in out.read_text(encoding="utf-8")
    assert _digest(store) == digest


# ---- 4. a report path that cannot be written -----------------------------------------------------------
@pytest.mark.parametrize("kind", ["a folder", "/dev/full", "a parent that is a file", "an immutable folder"])
def test_a_report_path_that_cannot_be_written_is_one_line_and_exit_2(tmp_path, finished, kind):
    store = _copy(finished, tmp_path / "store")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.html").write_text("an older report")
    (tmp_path / "file").write_text("not a folder")
    out = {"a folder": tmp_path / "out", "/dev/full": Path("/dev/full"),
           "a parent that is a file": tmp_path / "file" / "r.html",
           "an immutable folder": tmp_path / "out" / "old.html"}[kind]
    digest, files = _digest(store), _files(tmp_path)
    command = ("report", "1", "-o", str(out), "--no-latency")
    if kind == "an immutable folder":
        with read_only(tmp_path / "out", tmp_path / "out" / "old.html"):
            result = kdcore(*command, db=_url(store))
    else:
        result = kdcore(*command, db=_url(store))
    _refused(result, f"cannot write the report to {out}")
    assert _digest(store) == digest and _files(tmp_path) == files
    assert (tmp_path / "out" / "old.html").read_text() == "an older report"


def test_a_report_path_that_cannot_be_written_is_refused_before_the_report_is_built(tmp_path, finished, monkeypatch,
                                                                                     capsys):
    import kdcore.report
    from kdcore.cli import main

    store = _copy(finished, tmp_path / "store")
    built = []  # a spy: the report's seconds of work must not start
    monkeypatch.setattr(kdcore.report, "build_report", lambda *a, **k: built.append(a) or "<!DOCTYPE html>")
    assert main(["--db", _url(store), "report", "1", "-o", str(tmp_path), "--no-latency"]) == 2
    assert f"cannot write the report to {tmp_path}" in capsys.readouterr().err and built == []


# ---- 5. KDCORE_CPU_THREADS that is not a count ---------------------------------------------------------
@pytest.mark.parametrize("value", ["abc", "0", "-1", "1.5"])
def test_a_cpu_thread_count_that_is_not_a_whole_number_above_0_is_one_line_naming_the_variable(tmp_path, value,
                                                                                              monkeypatch):
    monkeypatch.setenv("KDCORE_CPU_THREADS", value)
    for command in (("train", DIGITS), ("worker", "--exit-when-idle")):
        _refused(kdcore(*command, db=_url(tmp_path / "kd.db")), f"KDCORE_CPU_THREADS={value}", "whole number")
    assert not list(tmp_path.iterdir())


# ---- 6. a typo in --db on a command that only reads ----------------------------------------------------
@pytest.mark.parametrize("command", [("runs", "list"), ("runs", "list", "--json"), ("runs", "show", "1"),
                                     ("runs", "cancel", "1"), ("runs", "delete", "1", "--yes"), ("groups", "list"),
                                     ("groups", "show", "g"), ("report", "1", "-o", "OUT"),
                                     ("export", "1", "--format", "onnx", "-o", "OUT"), ("studies", "list"),
                                     ("studies", "show", "s")])
def test_a_read_command_on_a_store_that_does_not_exist_says_so_and_creates_nothing(tmp_path, command):
    typo = tmp_path / "typo" / "kd.db"
    command = [str(tmp_path / "out") if a == "OUT" else a for a in command]
    _refused(kdcore(*command, db=_url(typo)), f"no store at {typo}")
    assert not list(tmp_path.iterdir())


def test_a_write_command_still_creates_its_store(tmp_path):
    result = kdcore("submit", DIGITS, db=_url(tmp_path / "new" / "kd.db"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r.id for r in Store(_url(tmp_path / "new" / "kd.db")).list_runs()] == [1]


# ---- 7-9. numbers a run cannot use ---------------------------------------------------------------------
TWO_TEACHERS = "teachers=[{arch: tiny_cnn}, {arch: tiny_cnn}]"


@pytest.mark.parametrize("overrides, needle", [
    (["distill.alpha=.nan"], "distill.alpha: nan is not a number"),
    (["distill.temperature=.nan"], "distill.temperature: nan is not a number"),
    (["train.lr=.nan"], "train.lr: nan is not a number"),
    (["train.lr=.inf"], "train.lr: inf is not a finite number"),
    (["distill.method=dkd", "distill.options={nckd_weight: .nan}"], "distill.options.nckd_weight: nan is not a number"),
    (["teacher.train={lr: .nan}"], "teacher.train: lr: nan is not a number"),
    # two teachers: the weights are used only after both trained, so they must be refused before
    ([TWO_TEACHERS, "distill.teacher_weights=[1, .nan]"], "distill.teacher_weights.1: nan is not a number"),
    ([TWO_TEACHERS, "distill.teacher_weights=[.inf, 1]"], "distill.teacher_weights.0: inf is not a finite number"),
    (["train.seed=18446744073709551616"], "train.seed: 18446744073709551616 is out of range"),
    (["train.seed=-1"], "train.seed: -1 is out of range"),
    (["teacher.seed=4294967296"], "teacher.seed: 4294967296 is out of range"),
])
def test_a_number_a_run_cannot_use_is_refused_in_the_config_naming_the_key(tmp_path, overrides, needle, capsys):
    sets = [a for o in overrides for a in ("--set", o)]
    for command in ("train", "submit"):
        line = _refused(cli(capsys, command, DIGITS, *sets, db=_url(tmp_path / "kd.db")), "invalid config", needle)
        if "seed" in needle:
            assert "a seed is a whole number from 0 to 4294967295" in line, line
    assert not list(tmp_path.iterdir())


def test_nan_in_a_yaml_file_is_refused_as_not_a_number(tmp_path):
    config = tmp_path / "nan.yaml"
    config.write_text("distill:\n  alpha: .nan\n")
    _refused(kdcore("submit", str(config), db=_url(tmp_path / "store" / "kd.db")), "distill.alpha: nan is not a number")
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("seeds", ["4294967296", "4294967290-4294967296", "-1"])
def test_seeds_out_of_range_are_refused_by_seeds_with_the_rule_of_the_config(tmp_path, seeds):
    _refused(kdcore("submit", DIGITS, "--seeds", seeds, db=_url(tmp_path / "kd.db")),
             "a seed is a whole number from 0 to 4294967295")
    assert not list(tmp_path.iterdir())


def test_the_largest_seed_is_accepted_by_the_config_and_by_seeds(tmp_path):
    for args in (("--set", "train.seed=4294967295"), ("--seeds", "4294967294-4294967295")):
        result = kdcore("submit", DIGITS, *args, db=_url(tmp_path / "kd.db"))
        assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(r.config["train"]["seed"] for r in Store(_url(tmp_path / "kd.db")).list_runs()) == [
        4294967294, 4294967295, 4294967295]


# ---- 10. an empty config file --------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n# and another\n", "---\n"])
def test_an_empty_config_file_is_refused_instead_of_running_defaults(tmp_path, text, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text(text)
    for command in ("train", "submit"):
        _refused(cli(capsys, command, str(config), db=_url(tmp_path / "store" / "kd.db")), f"{config} is empty")
    assert not (tmp_path / "store").exists()


# ---- 11. a worker given no device ----------------------------------------------------------------------
@pytest.mark.parametrize("devices", ["", " , "])
def test_a_worker_given_no_device_is_one_line_and_exit_2(tmp_path, finished, devices):
    store = _copy(finished, tmp_path / "store")
    digest = _digest(store)
    _refused(kdcore("worker", "--devices", devices, "--exit-when-idle", db=_url(store)), "--devices", "no device")
    assert _digest(store) == digest


def test_the_dashboards_manager_says_a_bad_thread_count_in_one_line_and_uses_the_default(tmp_path, monkeypatch,
                                                                                           capsys):
    from kdcore.jobs import JobManager

    monkeypatch.setenv("KDCORE_CPU_THREADS", "abc")
    manager = JobManager(Store(_url(tmp_path / "kd.db")), workers="none")
    assert manager.cpu_threads >= 1
    assert "KDCORE_CPU_THREADS=abc is not a thread count" in capsys.readouterr().err
