"""The Runs table as a person reads it: no "None", one way per kind of number, the minus sign "−" throughout,
the KD gain among the first columns (it was the 14th, off-screen at 1400 px), and every teacher of a run with
its accuracy (the first teacher's alone before)."""
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the app's own packages (ui), as `streamlit run` would see them

from kdcore.configure import build_config  # noqa: E402
from kdcore.store import Store  # noqa: E402
from tests.helpers import open_page  # noqa: E402

BASE = {"dataset": {"name": "digits"}, "student": {"arch": "mlp_tiny"}, "train": {"epochs": 1, "batch_size": 256}}


@pytest.fixture
def table_db(tmp_path, monkeypatch):
    """A store with a completed run of two teachers and a lost gain, a failed run and a queued one."""
    url = f"sqlite:///{tmp_path}/kdcore.db"
    monkeypatch.setenv("KDCORE_DB_URL", url)
    monkeypatch.setenv("KDCORE_LOCAL_WORKERS", "0")  # nothing trains: the queued run stays queued
    store = Store(url)
    two = store.create_run(build_config({**BASE, "name": "two teachers", "teachers": [
        {"arch": "tiny_cnn", "epochs": 1}, {"arch": "small_cnn", "epochs": 1}]}))
    store.finish_run(two, "completed", {
        "teacher_test_acc": 0.91, "teacher2_test_acc": 0.87, "ensemble_test_acc": 0.93, "student_test_acc": 0.7152,
        "baseline_test_acc": 0.7598, "kd_gain": -0.0446, "kd_gain_ci95": [-0.0975, -0.0028],
        "kd_gain_p_value": 0.000042, "student_params": 75_258, "teacher_params": 1000, "teacher2_params": 3000,
        "teachers": [{"phase": "teacher", "arch": "tiny_cnn", "test_acc": 0.91},
                     {"phase": "teacher2", "arch": "small_cnn", "test_acc": 0.87}]})
    failed = store.create_run(build_config({**BASE, "name": "failed", "teacher": {"arch": "tiny_cnn"}}))
    store.finish_run(failed, "failed", error="RuntimeError: out of memory")
    store.create_run(build_config({**BASE, "name": "queued", "teacher": {"arch": "tiny_cnn"}}))
    return {"two": two}


def test_the_runs_table_reads_one_way_with_no_none_and_the_gain_up_front(table_db):
    table = open_page("pages/runs.py").dataframe[0].value
    columns = list(table.columns)
    assert columns.index("kd_gain") <= 4, columns
    cells = [str(v) for column in columns if column not in ("id", "tags") for v in table[column]]
    assert not [c for c in cells if c in ("None", "nan", "NaN", "<NA>", "NaT", "")], table.to_string()
    assert not [c for c in cells if re.search(r"(^|[\s(\[])-\d", c)], "a hyphen for a minus sign"
    two = table[table["id"] == table_db["two"]].iloc[0]
    assert two["kd_gain"] == "−4.46" and two["kd_gain_interval"] == "−9.75 to −0.28"
    assert two["kd_gain_p_value"] == "< 0.001"
    assert two["teachers"] == "tiny_cnn 91.0% + small_cnn 87.0%"
    for column in ("student_test_acc", "baseline_test_acc", "ensemble_test_acc", "student_best_val_acc"):
        assert all(re.fullmatch(r"\d{1,3}\.\d%|—", v) for v in table[column]), (column, list(table[column]))


def test_the_runs_table_sorts_by_the_gain_as_a_number(table_db):
    at = open_page("pages/runs.py")
    at.selectbox(key="runs_sort").set_value("KD gain, highest first").run()
    assert list(at.dataframe[0].value["id"])[0] == table_db["two"]  # the one run with a gain, then the rest
