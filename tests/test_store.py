import socket
import subprocess
import sys

import pytest

from kdcore.config import build_config
from kdcore.store import Store


def _config(**distill):
    return build_config({"distill": distill or {"temperature": 4}, "tags": ["a"]})


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(store):
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000


def test_run_lifecycle_and_summary_columns(store):
    run_id = store.create_run(_config(temperature=3.0, alpha=0.5))
    run = store.get_run(run_id)
    assert run.status == "queued" and run.temperature == 3.0 and run.alpha == 0.5
    assert run.config["distill"]["temperature"] == 3.0
    store.mark_running(run_id, "CPU")
    summary = {"teacher_test_acc": 0.9, "student_test_acc": 0.8, "baseline_test_acc": 0.75, "kd_gain": 0.05,
               "student_params": 100, "student_best_val_acc": float("nan")}
    store.finish_run(run_id, "completed", summary)
    run = store.get_run(run_id)
    assert run.status == "completed" and run.kd_gain == pytest.approx(0.05)
    assert run.student_best_val_acc is None  # NaN is not stored as a number
    assert run.duration_s is not None and run.duration_s >= 0
    frame = store.runs_frame()
    assert list(frame["id"]) == [run_id] and frame.loc[0, "tags"] == ["a"]


def test_metrics_are_written_in_one_batch_and_read_back(store):
    run_id = store.create_run(_config())
    rows = [dict(phase="student", kind="epoch", step=e * 10, epoch=e, name="val_acc", value=e / 10) for e in range(1, 6)]
    store.add_metrics(run_id, rows)
    frame = store.metrics_frame([run_id], kind="epoch")
    assert list(frame["value"]) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])


def test_rename_tag_note_and_delete_removes_artefacts(store):
    run_id = store.create_run(_config())
    store.finish_run(run_id, "completed", {})
    store.update_run(run_id, name="my run", tags=["x", " y ", ""], notes="hello")
    run = store.get_run(run_id)
    assert (run.name, run.tag_list, run.notes) == ("my run", ["x", "y"], "hello")
    with pytest.raises(ValueError, match="empty"):
        store.update_run(run_id, name="  ")
    folder = store.run_dir(run_id)
    folder.mkdir(parents=True)
    (folder / "student.pt").write_bytes(b"x")
    store.add_artefact(run_id, "student_weights", folder / "student.pt")
    store.add_metrics(run_id, [dict(phase="student", kind="epoch", step=1, epoch=1, name="val_acc", value=0.5)])
    other = store.create_run(_config())
    store.delete_run(run_id)
    assert not folder.exists()
    assert [r.id for r in store.list_runs()] == [other]
    assert store.metrics_frame([run_id]).empty


def test_an_active_run_cannot_be_deleted(store):
    run_id = store.create_run(_config())
    with pytest.raises(ValueError, match="cancel it"):
        store.delete_run(run_id)


def test_runs_left_by_a_dead_process_are_marked_interrupted(store):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    host = socket.gethostname()
    running = store.create_run(_config())
    queued = store.create_run(_config())
    mine = store.create_run(_config())
    elsewhere = store.create_run(_config())
    store.mark_running(running, "CPU")
    store._update(running, owner=f"{host}:{dead_pid}")
    store._update(queued, owner=f"{host}:{dead_pid}")
    store._update(elsewhere, owner=f"another-host:{dead_pid}")
    recovered = store.recover_interrupted()
    assert sorted(recovered) == sorted([running, queued])
    assert store.get_run(running).status == "interrupted"
    assert "stopped" in store.get_run(running).error
    assert store.get_run(mine).status == "queued"  # this live process owns it
    assert store.get_run(elsewhere).status == "queued"  # another machine's run


def test_default_url_comes_from_the_environment(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/env.db"
    monkeypatch.setenv("KDCORE_DB_URL", url)
    s = Store()
    assert s.url == url and s.artefact_root == tmp_path


def test_an_in_memory_store_is_shared_between_threads():
    import threading

    mem = Store("sqlite://", artefact_root="/tmp/kdcore-unused")
    run_id = mem.create_run(_config())
    seen = []
    thread = threading.Thread(target=lambda: seen.append(mem.get_run(run_id).status))
    thread.start()
    thread.join()
    assert seen == ["queued"]
