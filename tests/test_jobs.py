"""The whole path on real data: config → job → trainer → events → store."""
import os
import time

import pytest
import torch

from kdcore.configure import build_config
from kdcore.engine.checkpoint import CheckpointError, load_model_from_checkpoint, read_checkpoint, save_checkpoint
from kdcore.jobs import JobManager
from kdcore.models import create_model


def digits_config(**sections):
    data = {
        "dataset": {"name": "digits", "val_fraction": 0.15},
        "teacher": {"arch": "small_cnn", "epochs": 2},
        "student": {"arch": "mlp_tiny"},
        "distill": {"temperature": 4.0, "alpha": 0.9},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.003, "seed": 0},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value) if isinstance(value, dict) else data.__setitem__(key, value)
    return build_config(data)


@pytest.fixture
def manager(store):
    m = JobManager(store, devices=["cpu"])
    yield m
    m.shutdown()


def _wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_digits_run_goes_teacher_student_baseline_into_the_store(store, manager):
    run_id = manager.submit(digits_config())
    assert manager.wait(run_id, timeout=120) == "completed"
    run = store.get_run(run_id)
    assert run.status == "completed" and run.error is None
    s = run.summary
    for key in ("teacher_test_acc", "student_test_acc", "baseline_test_acc", "kd_gain", "student_params", "teacher_flops"):
        assert key in s
    assert s["teacher_test_acc"] > 0.8  # real training on real digits, not chance (0.1)
    # the gain is exact (right images / n); each accuracy is a float32 mean: compare counts of right images
    n = s["test_images"]
    right = {phase: round(s[f"{phase}_test_acc"] * n) for phase in ("student", "baseline")}
    assert s["kd_gain"] == (right["student"] - right["baseline"]) / n
    assert run.kd_gain == pytest.approx(s["student_test_acc"] - s["baseline_test_acc"], abs=0.5 / n)
    assert s["teacher_params"] > s["student_params"]
    metrics = store.metrics_frame([run_id])
    assert set(metrics["phase"]) == {"teacher", "student", "baseline"}
    epochs = metrics[metrics["kind"] == "epoch"]
    assert {"train_loss", "train_acc", "val_acc", "lr"} <= set(epochs["name"])
    student = epochs[epochs["phase"] == "student"]
    assert {"train_kd", "train_ce", "agreement"} <= set(student["name"])
    assert "train_kd" not in set(epochs[epochs["phase"] == "baseline"]["name"])
    # phases in order: all teacher rows were written before the first student row
    first_student = metrics.index[metrics["phase"] == "student"].min()
    assert (metrics.loc[first_student:, "phase"] != "teacher").all()
    artefacts = store.artefacts(run_id)
    for kind in ("teacher_weights", "student_weights", "baseline_weights", "test_logits"):
        assert artefacts[kind].is_file()
    logits = torch.load(artefacts["test_logits"], weights_only=True)
    assert logits["teacher"].shape == (len(logits["labels"]), 10)
    live = manager.snapshot(run_id)
    assert live.status == "completed" and live.summary["student_test_acc"] == s["student_test_acc"]


def test_runs_submitted_together_queue_and_all_finish(store, manager):
    ids = [manager.submit(digits_config(train={"epochs": 1}, teacher={"epochs": 1}, baseline=False)) for _ in range(3)]
    assert len(manager.active()) >= 2
    for run_id in ids:
        assert manager.wait(run_id, timeout=120) == "completed"
    started = [store.get_run(i).started_at for i in ids]
    assert started == sorted(started)  # one after another, in order


def test_cancel_mid_run_keeps_metrics_and_last_checkpoint(store, manager):
    run_id = manager.submit(digits_config(teacher={"epochs": 500}))
    assert _wait_for(lambda: (manager.snapshot(run_id).epoch or 0) >= 2)
    assert manager.cancel(run_id)
    assert manager.wait(run_id, timeout=60) == "cancelled"
    run = store.get_run(run_id)
    assert run.status == "cancelled"
    assert not store.metrics_frame([run_id]).empty
    assert (store.run_dir(run_id) / "teacher_last.pt").is_file()
    assert not manager.cancel(run_id)  # nothing left to cancel


def test_cancelling_a_queued_run_drops_it(store, manager):
    first = manager.submit(digits_config(teacher={"epochs": 500}))
    second = manager.submit(digits_config())
    assert manager.cancel(second)
    assert store.get_run(second).status == "cancelled"
    manager.cancel(first)
    assert manager.wait(first, timeout=60) == "cancelled"
    assert store.get_run(second).started_at is None


def test_a_new_manager_marks_runs_with_expired_leases_interrupted(store):
    from datetime import timedelta

    from kdcore.store import utcnow

    run_id = store.create_run(digits_config())
    store.claim("a-host-that-restarted:4242", run_id=run_id)
    store._update(run_id, heartbeat_at=utcnow() - timedelta(hours=1))
    m = JobManager(store, devices=["cpu"])
    try:
        assert run_id in m.expired
        assert store.get_run(run_id).status == "interrupted"
    finally:
        m.shutdown()


def test_teacher_reused_from_a_stored_run(store, manager):
    first = manager.submit(digits_config(baseline=False))
    assert manager.wait(first, timeout=120) == "completed"
    second = manager.submit(digits_config(teacher={"source": "run", "run_id": first}, baseline=False))
    assert manager.wait(second, timeout=120) == "completed"
    assert store.get_run(second).teacher_test_acc == pytest.approx(store.get_run(first).teacher_test_acc)
    phases = set(store.metrics_frame([second])["phase"])
    assert "teacher" not in phases  # loaded, not trained again


def test_a_teacher_is_not_reused_from_an_unfinished_run(store, manager):
    first = manager.submit(digits_config(teacher={"epochs": 500}))
    assert _wait_for(lambda: (store.run_dir(first) / "teacher.pt").is_file())
    second = manager.submit(digits_config(teacher={"source": "run", "run_id": first}))
    manager.cancel(first)
    assert manager.wait(second, timeout=60) == "failed"
    assert "its teacher did not finish training; only a finished teacher can be reused" in store.get_run(second).error


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_checkpoint_is_refused_and_never_runs(store, manager, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _RunsCode(marker)}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(evil)
    run_id = manager.submit(digits_config(teacher={"source": "checkpoint", "checkpoint": str(evil)}))
    assert manager.wait(run_id, timeout=60) == "failed"
    error = store.get_run(run_id).error
    assert "refused" in error and "could run code" in error
    assert not marker.exists()


def test_checkpoint_mismatches_are_explained(tmp_path):
    model = create_model("small_cnn", num_classes=10, in_channels=1, image_size=8)
    path = tmp_path / "t.pt"
    save_checkpoint(path, model, arch="small_cnn", num_classes=10, in_channels=1, image_size=8)
    with pytest.raises(CheckpointError, match="holds a 'small_cnn' model"):
        load_model_from_checkpoint(path, arch="resnet8", num_classes=10, in_channels=1, image_size=8)
    with pytest.raises(CheckpointError, match="trained for 10 classes"):
        load_model_from_checkpoint(path, arch="small_cnn", num_classes=100, in_channels=1, image_size=8)
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)  # a plain state_dict from another tool
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_model_from_checkpoint(bare, arch="small_cnn", num_classes=100, in_channels=1, image_size=8)
    loaded = load_model_from_checkpoint(bare, arch="small_cnn", num_classes=10, in_channels=1, image_size=8)
    assert torch.equal(loaded.state_dict()[next(iter(model.state_dict()))], next(iter(model.state_dict().values())))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        read_checkpoint(corrupt)
    noise = tmp_path / "noise.pt"
    noise.write_bytes(bytes(range(256)) * 4)  # not code, just not a checkpoint: no "could run code" scare
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        read_checkpoint(noise)


def test_a_loss_that_stops_being_finite_stops_the_run_with_a_reason():
    from kdcore.data import load_dataset
    from kdcore.engine.events import no_callback
    from kdcore.engine.trainer import TrainingDiverged, fit

    cfg = digits_config()
    data = load_dataset(cfg.dataset)
    data.train.x = data.train.x.clone()
    data.train.x[:, :, 0, 0] = float("nan")  # a corrupt input image poisons the loss
    model = create_model("mlp_tiny", num_classes=10, in_channels=1, image_size=8)
    with pytest.raises(TrainingDiverged, match="loss became nan"):
        fit(model, data, phase="teacher", epochs=1, train_cfg=cfg.train, device=torch.device("cpu"), callback=no_callback)


def test_same_seed_repeats_a_cpu_run(tmp_path):
    from kdcore.engine.run import execute_run

    cfg = digits_config(baseline=False)
    a = execute_run(cfg, tmp_path / "a")
    b = execute_run(cfg, tmp_path / "b")
    assert a["student_test_acc"] == b["student_test_acc"] and a["teacher_test_acc"] == b["teacher_test_acc"]


def test_cached_teacher_logits_give_the_same_result_as_per_step_teacher():
    """With augmentation off the teacher runs once over the training set; the result must not change."""
    from kdcore.data import load_dataset
    from kdcore.engine.events import no_callback
    from kdcore.engine.trainer import fit, predict_logits

    cfg = digits_config()
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"amp": False})})  # bf16 rounds differently per batch
    data = load_dataset(cfg.dataset)
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    teacher = create_model("small_cnn", num_classes=10, in_channels=1, image_size=8)
    fit(teacher, data, phase="teacher", epochs=1, train_cfg=cfg.train, device=cpu, callback=no_callback)
    results = []
    for cache in (True, False):
        torch.manual_seed(1)
        student = create_model("mlp_tiny", num_classes=10, in_channels=1, image_size=8)
        fit(student, data, phase="student", epochs=2, train_cfg=cfg.train, device=cpu, teachers=[teacher],
            distill_cfg=cfg.distill, callback=no_callback, cache_teacher_logits=cache)
        results.append(predict_logits(student, data.test, cpu))
    assert torch.allclose(results[0], results[1], atol=1e-5)


def test_every_run_summary_carries_its_gain_interval_and_p_value(store, manager):
    run_id = manager.submit(digits_config())
    assert manager.wait(run_id, timeout=300) == "completed"
    s = store.get_run(run_id).summary
    low, high = s["kd_gain_ci95"]
    assert low <= s["kd_gain"] <= high and 0 <= s["kd_gain_p_value"] <= 1
    assert s["test_images"] == s["test_size"] == 359
    d = s["kd_gain_discordant"]
    assert s["kd_gain"] == pytest.approx((d["student_only"] - d["baseline_only"]) / 359)


def test_a_2x2_sweep_trains_one_teacher_and_one_baseline(store, manager):
    ids = manager.submit_sweep(digits_config(), [2.0, 4.0], [0.5, 0.9], group="grid")
    assert [manager.wait(i, timeout=300) for i in ids] == ["completed"] * 4
    metrics = store.metrics_frame(ids, kind="epoch")
    trained = metrics.groupby("phase")["run_id"].unique().map(sorted).to_dict()
    assert trained["teacher"] == [ids[0]] and trained["baseline"] == [ids[0]]
    assert sorted(trained["student"]) == sorted(ids)
    runs = [store.get_run(i) for i in ids]
    assert len({r.teacher_test_acc for r in runs}) == 1 and len({r.baseline_test_acc for r in runs}) == 1
    assert all(r.summary["teacher_from_run"] == ids[0] == r.summary["baseline_from_run"] for r in runs[1:])
    assert {(r.temperature, r.alpha) for r in runs} == {(2.0, 0.5), (2.0, 0.9), (4.0, 0.5), (4.0, 0.9)}


def test_a_seed_group_trains_one_teacher_unless_asked_for_one_per_seed(store, manager):
    from kdcore.experiments import expand

    shared = manager.submit_many(expand(digits_config(), seeds=[0, 1], group="shared"))
    own = manager.submit_many(expand(digits_config(), seeds=[0, 1], group="own", teacher_per_seed=True))
    assert [manager.wait(i, timeout=300) for i in shared + own] == ["completed"] * 4
    teacher_runs = set(store.metrics_frame(shared + own, kind="epoch").query("phase == 'teacher'")["run_id"])
    assert teacher_runs == {shared[0], *own}
    # the reused teacher is the one the second seed would have trained with the group's teacher seed
    assert store.get_run(shared[1]).teacher_test_acc == store.get_run(shared[0]).teacher_test_acc
    baselines = set(store.metrics_frame(shared, kind="epoch").query("phase == 'baseline'")["run_id"])
    assert baselines == set(shared)  # a baseline per seed: different seeds are not identical settings


def test_a_worker_keeps_its_own_gpu_for_a_plain_cuda_run_and_yields_to_another_kind():
    from kdcore.jobs.worker import choose_device

    assert choose_device(torch.device("cuda:1"), torch.device("cuda")) == torch.device("cuda:1")
    assert choose_device(torch.device("cuda:1"), torch.device("cpu")) == torch.device("cpu")
    assert choose_device(torch.device("cpu"), torch.device("cuda")) == torch.device("cuda")
    assert choose_device(None, torch.device("cpu")) == torch.device("cpu")
