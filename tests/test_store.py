import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from kdcore.configure import build_config
from kdcore.store import Store, utcnow

FIXTURE = Path(__file__).parent / "fixtures" / "store-0.1.0"  # written by release 0.1.0's code


def _config(**distill):
    return build_config({"distill": distill or {"temperature": 4}, "tags": ["a"]})


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(store):
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000


def test_run_lifecycle_and_summary_columns(any_store):
    run_id = any_store.create_run(_config(temperature=3.0, alpha=0.5))
    run = any_store.get_run(run_id)
    assert run.status == "queued" and run.temperature == 3.0 and run.alpha == 0.5
    assert run.config["distill"]["temperature"] == 3.0
    any_store.mark_running(run_id, "CPU")
    summary = {"teacher_test_acc": 0.9, "student_test_acc": 0.8, "baseline_test_acc": 0.75, "kd_gain": 0.05,
               "student_params": 100, "student_best_val_acc": float("nan")}
    any_store.finish_run(run_id, "completed", summary)
    run = any_store.get_run(run_id)
    assert run.status == "completed" and run.kd_gain == pytest.approx(0.05)
    assert run.student_best_val_acc is None  # NaN is not stored as a number
    assert run.duration_s is not None and run.duration_s >= 0
    frame = any_store.runs_frame()
    assert list(frame["id"]) == [run_id] and frame.loc[0, "tags"] == ["a"]


def test_metrics_are_written_in_one_batch_and_read_back(any_store):
    run_id = any_store.create_run(_config())
    rows = [dict(phase="student", kind="epoch", step=e * 10, epoch=e, name="val_acc", value=e / 10) for e in range(1, 6)]
    any_store.add_metrics(run_id, rows)
    frame = any_store.metrics_frame([run_id], kind="epoch")
    assert list(frame["value"]) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])


def test_rename_tag_note_and_delete_removes_artefacts(any_store):
    run_id = any_store.create_run(_config())
    any_store.finish_run(run_id, "completed", {})
    any_store.update_run(run_id, name="my run", tags=["x", " y ", ""], notes="hello")
    run = any_store.get_run(run_id)
    assert (run.name, run.tag_list, run.notes) == ("my run", ["x", "y"], "hello")
    with pytest.raises(ValueError, match="empty"):
        any_store.update_run(run_id, name="  ")
    folder = any_store.run_dir(run_id)
    folder.mkdir(parents=True)
    (folder / "student.pt").write_bytes(b"x")
    any_store.add_artefact(run_id, "student_weights", folder / "student.pt")
    any_store.add_metrics(run_id, [dict(phase="student", kind="epoch", step=1, epoch=1, name="val_acc", value=0.5)])
    other = any_store.create_run(_config())
    any_store.delete_run(run_id)
    assert not folder.exists()
    assert [r.id for r in any_store.list_runs()] == [other]
    assert any_store.metrics_frame([run_id]).empty


def test_an_active_run_cannot_be_deleted(any_store):
    run_id = any_store.create_run(_config())
    with pytest.raises(ValueError, match="cancel it"):
        any_store.delete_run(run_id)


def test_claims_take_the_oldest_queued_run_once(any_store):
    first, second = any_store.create_run(_config()), any_store.create_run(_config())
    assert any_store.claim("host-a:1") == first
    assert any_store.claim("host-b:2") == second
    assert any_store.claim("host-c:3") is None
    run = any_store.get_run(first)
    assert (run.status, run.worker, run.attempt) == ("running", "host-a:1", 1) and run.heartbeat_at is not None
    assert any_store.claim("host-c:3", run_id=first) is None  # already taken


def test_a_run_whose_lease_is_older_than_the_grace_period_is_interrupted(any_store):
    stale, fresh, queued = (any_store.create_run(_config()) for _ in range(3))
    any_store.claim("gone:1", run_id=stale)
    any_store.claim("alive:2", run_id=fresh)
    any_store._update(stale, heartbeat_at=utcnow() - timedelta(minutes=5))
    assert any_store.expire_leases(grace_s=60, force=True) == [stale]
    run = any_store.get_run(stale)
    assert run.status == "interrupted" and "heartbeats" in run.error
    assert any_store.get_run(fresh).status == "running" and any_store.get_run(queued).status == "queued"
    # the dead worker's late heartbeat and finish are refused: the lease is gone
    assert any_store.heartbeat(stale, "gone:1") == "lost"
    assert not any_store.finish_run(stale, "completed", {}, worker="gone:1")
    assert any_store.get_run(stale).status == "interrupted"


def test_cancel_drops_a_queued_run_and_flags_a_running_one(any_store):
    queued, running = any_store.create_run(_config()), any_store.create_run(_config())
    any_store.claim("w:1", run_id=running)
    assert any_store.request_cancel(queued) == "cancelled"
    assert any_store.get_run(queued).status == "cancelled"
    assert any_store.heartbeat(running, "w:1") == "ok"
    assert any_store.request_cancel(running) == "requested"
    assert any_store.heartbeat(running, "w:1", {"step": 5}) == "cancel"
    any_store.finish_run(running, "cancelled", {}, worker="w:1")
    with pytest.raises(ValueError, match="only a queued or running run"):
        any_store.request_cancel(running)


def test_run_numbers_are_never_reused_and_folders_never_shared(any_store):
    first = any_store.create_run(_config())
    last = any_store.create_run(_config())
    any_store.finish_run(last, "completed", {})
    any_store.delete_run(last)
    again = any_store.create_run(_config())
    assert again > last
    assert any_store.run_dir(first) != any_store.run_dir(again)
    assert any_store.run_dir(again).name == any_store.get_run(again).uuid


def test_two_stores_in_one_folder_keep_separate_files(tmp_path):
    a, b = Store(f"sqlite:///{tmp_path}/a.db"), Store(f"sqlite:///{tmp_path}/b.db")
    run_a, run_b = a.create_run(_config()), b.create_run(_config())
    assert run_a == run_b == 1 and a.run_dir(run_a) != b.run_dir(run_b)
    for store, run_id in ((a, run_a), (b, run_b)):
        store.run_dir(run_id).mkdir(parents=True)
        (store.run_dir(run_id) / "student.pt").write_bytes(b"weights")
        store.finish_run(run_id, "completed", {})
    a.delete_run(run_a)
    assert not a.run_dir(run_a).exists()
    assert (b.run_dir(run_b) / "student.pt").read_bytes() == b"weights"


def test_the_runs_table_query_fails_on_a_missing_column_instead_of_showing_its_name(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/k.db")
    store.create_run(_config())
    with store.engine.begin() as conn:
        conn.exec_driver_sql('ALTER TABLE runs DROP COLUMN "dataset"')
    with pytest.raises(Exception, match="dataset"):
        store.runs_frame()


def test_a_0_1_0_store_is_upgraded_in_place_keeping_every_run_metric_and_file(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "old")
    store = Store(f"sqlite:///{tmp_path}/old/kdcore.db")
    runs = {r.id: r for r in store.list_runs()}
    assert {i: r.status for i, r in runs.items()} == {1: "completed", 2: "failed"}
    assert runs[1].kd_gain is not None and "checkpoint not found" in runs[2].error
    assert len(store.metrics_frame([1], kind="epoch")) > 0
    files = store.artefacts(1)
    assert {"teacher_weights", "student_weights", "test_logits"} <= set(files) and all(p.is_file() for p in files.values())
    assert store.run_dir(1) == tmp_path / "old" / "1"
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0004"
    assert store.list_studies() == []  # the studies' tables came with the upgrade
    new = store.create_run(_config())
    assert new == 3 and store.get_run(new).uuid


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


def test_the_teacher_of_a_0_1_0_run_is_reused_by_a_new_run(tmp_path):
    from kdcore.jobs import run_here

    shutil.copytree(FIXTURE, tmp_path / "old")
    store = Store(f"sqlite:///{tmp_path}/old/kdcore.db")
    old = store.get_run(1)
    config = build_config({"dataset": {"name": "digits", "val_fraction": 0.15},
                           "teacher": {"arch": old.teacher_arch, "source": "run", "run_id": 1},
                           "student": {"arch": "mlp_tiny"},
                           # fp32, as the old run evaluated its teacher: bf16 may flip an image or two
                           "train": {"epochs": 1, "batch_size": 256, "amp": False}})
    run_id, status = run_here(store, config)
    assert status == "completed", store.get_run(run_id).error
    new = store.get_run(run_id)
    assert new.teacher_test_acc == pytest.approx(old.teacher_test_acc)
    assert new.summary["teacher_from_run"] == 1
    assert set(store.metrics_frame([run_id])["phase"]) == {"student", "baseline"}  # loaded, not trained
