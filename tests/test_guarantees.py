"""Guarantees behind the KD gain (distilled student minus scratch baseline).

Each test protects one behaviour whose silent loss would bias the gain or the model
choice, or lose or misplace a run, while every other test stays green. Tiny runs on the
embedded digits data, CPU only; the queue's on a real SQLite file and a real PostgreSQL.
"""
import threading
import time
from dataclasses import replace

import pytest
import torch

from kdcore.configure import build_config
from kdcore.data import load_dataset
from kdcore.data.splitting import stratified_split
from kdcore.engine.checkpoint import load_model_from_checkpoint
from kdcore.engine.run import TEST_LOGITS_FILE, _build, execute_run
from kdcore.engine.trainer import accuracy, fit, freeze_early_layers

CPU = torch.device("cpu")


def tiny_config(**sections):
    data = {
        "dataset": {"name": "digits", "val_fraction": 0.15},
        "teacher": {"arch": "mlp_tiny", "epochs": 1},
        "student": {"arch": "mlp_tiny"},
        "distill": {"temperature": 4.0, "alpha": 0.9},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.003, "seed": 0, "device": "cpu", "amp": False},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value) if isinstance(value, dict) else data.__setitem__(key, value)
    return build_config(data)


def epoch_events(phase=None):
    events = []

    def callback(event):
        if event.kind == "epoch" and (phase is None or event.phase == phase):
            events.append(event)

    return events, callback


def load_phase(run_dir, phase, config, data):
    return load_model_from_checkpoint(run_dir / f"{phase}.pt", arch=config.student.arch, num_classes=data.num_classes,
                                      in_channels=data.in_channels, image_size=data.image_size).eval()


@torch.no_grad()
def plain_logits(model, split):
    # straight through the model, bypassing loaders and predict_logits, which are under test
    return model.eval()(split.x)


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_baseline_starts_from_the_students_initial_weights_and_data_order(tmp_path):
    # with alpha = 0 the distilled phase is plain cross-entropy, so any difference between
    # student and baseline can only come from init or data order, and would leak into the gain
    config = tiny_config(distill={"alpha": 0.0})
    summary = execute_run(config, tmp_path, device=CPU)
    logits = torch.load(tmp_path / TEST_LOGITS_FILE, weights_only=True)
    assert torch.equal(logits["student"], logits["baseline"])
    assert summary["kd_gain"] == 0.0
    assert summary["student_test_acc"] == summary["baseline_test_acc"]
    data = load_dataset(config.dataset)
    assert same_weights(load_phase(tmp_path, "student", config, data), load_phase(tmp_path, "baseline", config, data))


def test_fit_ends_holding_the_best_validation_epochs_weights():
    # SGD at lr 1.0 overshoots after an early peak, so the best epoch is not the last
    data = load_dataset(tiny_config().dataset)
    train_cfg = tiny_config(train={"optimizer": "sgd", "lr": 1.0, "schedule": "none"}).train
    model = _build("mlp_tiny", {}, data, 1)
    events, callback = epoch_events()
    result = fit(model, data, phase="student", epochs=5, train_cfg=train_cfg, device=CPU, callback=callback)
    val_accs = [e.metrics["val_acc"] for e in events]
    assert len(val_accs) == 5
    assert result.best_epoch < 5 and val_accs[-1] < max(val_accs), "setting no longer has an early best epoch"
    assert result.best_val_acc == max(val_accs) == val_accs[result.best_epoch - 1]
    assert accuracy(plain_logits(model, data.val), data.val.y) == pytest.approx(result.best_val_acc, abs=1e-9)


class _Untouchable:
    """A test split that fails the test on any use."""

    def __getattr__(self, name):
        raise AssertionError(f"the test split was read during training (.{name})")

    def __len__(self):
        raise AssertionError("the test split was read during training (len)")


def test_model_selection_never_reads_the_test_split():
    # choosing epochs on test images would make every reported test accuracy optimistic
    config = tiny_config(train={"epochs": 3})
    data = load_dataset(config.dataset)
    blind = replace(data, test=_Untouchable())
    model = _build("mlp_tiny", {}, data, 1)
    result = fit(model, blind, phase="student", epochs=3, train_cfg=config.train, device=CPU, callback=lambda e: None)
    reference = _build("mlp_tiny", {}, data, 1)
    expected = fit(reference, data, phase="student", epochs=3, train_cfg=config.train, device=CPU,
                   callback=lambda e: None)
    assert result.epochs_run == 3 and result.best_val_acc > 0.5
    assert (result.best_epoch, result.best_val_acc) == (expected.best_epoch, expected.best_val_acc)
    assert same_weights(model, reference)


def test_validation_and_test_images_are_never_augmented(tmp_path):
    # augmented evaluation makes the reported accuracies noisy and lower than the model's real ones
    config = tiny_config(dataset={"augment": {"crop_padding": 2, "flip": True}}, baseline=False)
    events, callback = epoch_events("student")
    execute_run(config, tmp_path, device=CPU, callback=callback)
    data = load_dataset(config.dataset)
    stored = torch.load(tmp_path / TEST_LOGITS_FILE, weights_only=True)
    best = load_phase(tmp_path, "student", config, data)
    torch.testing.assert_close(stored["student"], plain_logits(best, data.test), rtol=1e-4, atol=1e-4)
    last = load_phase(tmp_path, "student_last", config, data)
    assert events[-1].metrics["val_acc"] == pytest.approx(accuracy(plain_logits(last, data.val), data.val.y), abs=1e-9)


def test_early_stopping_stops_after_patience_epochs_without_gain():
    # at lr 1e-9 validation accuracy cannot move after epoch 1, so patience 1 ends at epoch 2
    config = tiny_config(train={"lr": 1e-9, "schedule": "none", "early_stopping_patience": 1})
    data = load_dataset(config.dataset)
    model = _build("mlp_tiny", {}, data, 1)
    events, callback = epoch_events()
    result = fit(model, data, phase="student", epochs=6, train_cfg=config.train, device=CPU, callback=callback)
    assert result.epochs_run == 2
    assert [e.epoch for e in events] == [1, 2]
    assert result.best_epoch == 1


def test_frozen_layers_keep_their_initial_weights(tmp_path):
    # a freeze that silently trains everything would make freeze_fraction sweeps meaningless
    fresh = _build("mlp_tiny", {}, load_dataset(tiny_config().dataset), 1)
    params = list(fresh.parameters())
    assert freeze_early_layers(fresh, 0.5) == len(params) // 2 > 0
    assert [p.requires_grad for p in params] == [False] * (len(params) // 2) + [True] * (len(params) - len(params) // 2)

    config = tiny_config(student={"freeze_fraction": 0.5}, distill={"alpha": 0.5})
    execute_run(config, tmp_path, device=CPU)
    data = load_dataset(config.dataset)
    initial = list(_build(config.student.arch, config.student.options, data, config.train.seed + 1).parameters())
    frozen = len(initial) // 2
    for phase in ("student", "baseline"):
        trained = list(load_phase(tmp_path, phase, config, data).parameters())
        unchanged = [torch.equal(a, b) for a, b in zip(initial, trained)]
        assert unchanged == [True] * frozen + [False] * (len(initial) - frozen), phase


def test_validation_split_is_stratified():
    # an unstratified validation split skews per-class accuracy and, on small data, model selection
    sizes = [50 * (i + 1) for i in range(10)]
    y = torch.cat([torch.full((s,), c) for c, s in enumerate(sizes)])
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(3))]
    for fraction in (0.1, 0.15, 0.3):
        kept, carved = stratified_split(y, fraction)
        assert len(carved) == round(fraction * len(y))
        assert torch.equal(torch.sort(torch.cat([kept, carved])).values, torch.arange(len(y)))
        counts = torch.bincount(y[carved], minlength=10)
        for c, s in enumerate(sizes):
            assert abs(counts[c].item() - fraction * s) <= 1, (fraction, c, counts.tolist())

    config = tiny_config()
    data = load_dataset(config.dataset)
    val_counts = torch.bincount(data.val.y, minlength=data.num_classes)
    all_counts = val_counts + torch.bincount(data.train.y, minlength=data.num_classes)
    for c in range(data.num_classes):
        assert abs(val_counts[c].item() - config.dataset.val_fraction * all_counts[c].item()) <= 1, c


# ---- model construction -----------------------------------------------------------------------
def test_building_a_model_depends_on_its_seed_only():
    # a student and its baseline (and a run and its resume) must start from the same weights, whatever
    # randomness the process consumed before; another seed must give other weights
    data = load_dataset(tiny_config().dataset)
    torch.manual_seed(123)
    first = _build("mlp_tiny", {}, data, 5)
    torch.rand(1000)  # randomness consumed between the two builds
    again = _build("mlp_tiny", {}, data, 5)
    torch.manual_seed(999)
    after_a_reseed = _build("mlp_tiny", {}, data, 5)
    assert same_weights(first, again) and same_weights(first, after_a_reseed)
    assert not same_weights(first, _build("mlp_tiny", {}, data, 6))
    conv = [_build("small_cnn", {}, data, 5) for _ in range(2)]  # batch norms and convolutions too
    assert same_weights(*conv)


# ---- the teachers' logits under augmentation -------------------------------------------------------
def test_a_distilled_fit_with_augmentation_gives_the_teacher_the_augmented_images(monkeypatch):
    # the teacher-logit cache holds logits of unaugmented images: read while augmenting, the student
    # would be taught on images other than those it sees. Forcing the cache on must change nothing.
    import kdcore.engine.trainer as trainer

    built = []

    class Recorded(trainer.TeacherLogitCache):
        def __init__(self, *args, **kwargs):
            built.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(trainer, "TeacherLogitCache", Recorded)
    config = tiny_config(dataset={"augment": {"crop_padding": 2, "flip": True}})
    assert config.dataset.augment.enabled
    data = load_dataset(config.dataset)
    teacher = _build("mlp_tiny", {}, data, 7)
    fit(teacher, data, phase="teacher", epochs=1, train_cfg=config.train, device=CPU, callback=lambda e: None)
    students = []
    for cache in (True, False):
        student = _build("mlp_tiny", {}, data, 1)
        fit(student, data, phase="student", epochs=2, train_cfg=config.train, device=CPU, teachers=[teacher],
            distill_cfg=config.distill, augment=config.dataset.augment, cache_teacher_logits=cache,
            callback=lambda e: None)
        students.append(student)
    assert built == [], "a teacher-logit cache was built for an augmented fit"
    for a, b in zip(students[0].state_dict().values(), students[1].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


# ---- the gain's sign ---------------------------------------------------------------------------
def test_paired_gain_is_the_first_models_accuracy_minus_the_seconds():
    from kdcore.stats import paired_gain

    student = [True, True, True, False, True, False]  # 4 of 6 right
    baseline = [True, False, False, False, True, True]  # 3 of 6 right
    gain = paired_gain(student, baseline)
    assert gain.gain == pytest.approx(1 / 6) and (gain.only_a_right, gain.only_b_right) == (2, 1)
    assert paired_gain(baseline, student).gain == pytest.approx(-1 / 6)


@pytest.fixture(scope="module")
def stored_run(tmp_path_factory):
    """One tiny run trained by a worker of a real SQLite store, its summary stored: (store, run number)."""
    from kdcore.jobs.worker import run_here
    from kdcore.store import Store

    folder = tmp_path_factory.mktemp("stored")
    store = Store(f"sqlite:///{folder}/kd.db")
    run_id, status = run_here(store, tiny_config())
    assert status == "completed"
    return store, run_id


def test_the_stored_gain_is_the_students_accuracy_minus_the_baselines(stored_run):
    # a gain with its arguments swapped turns every improvement into a loss; at alpha 0 (gain 0) it cannot show
    store, run_id = stored_run
    run = store.get_run(run_id)
    logits = torch.load(store.run_dir(run_id) / TEST_LOGITS_FILE, weights_only=True)
    labels = logits["labels"]
    student, baseline = logits["student"].argmax(1) == labels, logits["baseline"].argmax(1) == labels
    n, right_s, right_b = len(labels), int(student.sum()), int(baseline.sum())
    assert right_s != right_b, "this setting no longer gives the student and baseline different accuracies"
    s = run.summary
    assert (round(s["student_test_acc"] * n), round(s["baseline_test_acc"] * n)) == (right_s, right_b)
    assert s["kd_gain"] == (right_s - right_b) / n and run.kd_gain == pytest.approx((right_s - right_b) / n, abs=1e-12)
    assert s["kd_gain_discordant"] == {"student_only": int((student & ~baseline).sum()),
                                       "baseline_only": int((baseline & ~student).sum())}
    low, high = s["kd_gain_ci95"]
    assert low <= s["kd_gain"] <= high


# ---- exports ----------------------------------------------------------------------------------
def test_an_export_off_by_a_finite_error_above_the_tolerance_is_refused(stored_run, tmp_path, monkeypatch, capsys):
    # an exporter that writes a slightly wrong file: every logit 0.01 off, finite (not NaN), above 1e-3
    import onnx
    from onnx import numpy_helper

    from kdcore.cli import main
    from kdcore.export import TOLERANCE, check_images, export_checkpoint

    real_export = torch.onnx.export

    def off_by_a_hundredth(model, args, path, **kwargs):
        result = real_export(model, args, path, **kwargs)
        graph = onnx.load(str(path))
        (bias,) = [t for t in graph.graph.initializer if list(t.dims) == [10]]  # mlp_tiny's last bias only
        bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 0.01, bias.name))
        onnx.save(graph, str(path))
        return result

    monkeypatch.setattr(torch.onnx, "export", off_by_a_hundredth)
    store, run_id = stored_run
    images = check_images(store.get_run(run_id).config["dataset"])
    result = export_checkpoint(store.run_dir(run_id) / "student.pt", tmp_path / "s.onnx", "onnx", images)
    assert result.max_abs_diff == pytest.approx(0.01, abs=1e-4)
    assert not result.within() and not result.within(TOLERANCE)
    assert result.within(0.02)
    capsys.readouterr()
    code = main(["--db", store.url, "export", str(run_id), "--format", "onnx", "-o", str(tmp_path / "c.onnx")])
    assert code == 3 and f"above the float32 tolerance {TOLERANCE:g}" in capsys.readouterr().err


# ---- the worker's device ----------------------------------------------------------------------
def test_a_worker_on_the_second_gpu_trains_a_plain_cuda_run_there(store, monkeypatch):
    # workers started on cuda:0 and cuda:1 spread runs over the GPUs only if each keeps a "cuda" run on its own
    import kdcore.jobs.worker as worker_module
    from kdcore.jobs.worker import Worker

    real_available, real_execute = torch.cuda.is_available, worker_module.execute_run
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with two GPUs, as PyTorch sees it
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: f"pretend GPU {torch.device(d).index}")
    handed = []

    def trainer_on_the_cpu(config, run_dir, *, device, **kwargs):
        handed.append(device)  # where the worker asked the run to train; it really trains on the CPU
        monkeypatch.setattr(torch.cuda, "is_available", real_available)
        try:
            return real_execute(config, run_dir, device=CPU, **kwargs)
        finally:
            monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    monkeypatch.setattr(worker_module, "execute_run", trainer_on_the_cpu)
    cuda_run = store.create_run(tiny_config(train={"device": "cuda", "epochs": 1}, baseline=False))
    cpu_run = store.create_run(tiny_config(train={"device": "cpu", "epochs": 1}, baseline=False))
    done = Worker(store, "cuda:1", name="gpu1").run(threading.Event(), exit_when_idle=True)
    assert done == [(cuda_run, "completed"), (cpu_run, "completed")]
    assert handed == [torch.device("cuda:1"), CPU]
    assert store.get_run(cuda_run).device == "pretend GPU 1"


# ---- leases -----------------------------------------------------------------------------------
class HeldRun:
    """A real worker thread training a run, held still inside its first training step until released."""

    def __init__(self, store):
        from kdcore.jobs.worker import Worker

        self.store = store
        self.run_id = store.create_run(tiny_config(baseline=False))
        self.reached, self._release = threading.Event(), threading.Event()
        self.done: list = []

        def listener_for(run_id):
            def listen(event):
                if event.kind == "step" and not self.reached.is_set():
                    self.reached.set()
                    self._release.wait(DEADLINE_S)
            return listen

        worker = Worker(store, "cpu", name="held", listener_for=listener_for)
        self._thread = threading.Thread(target=lambda: self.done.extend(worker.run(threading.Event(), max_runs=1)),
                                        daemon=True)

    def __enter__(self):
        self._thread.start()
        assert self.reached.wait(DEADLINE_S), "the worker never reached its first training step"
        return self

    def release(self):
        self._release.set()
        self._thread.join(DEADLINE_S)
        assert not self._thread.is_alive(), "the released worker did not finish its run"
        return self.done

    def __exit__(self, *exc):
        self._release.set()
        self._thread.join(DEADLINE_S)

    def heartbeat(self):
        return self.store.get_run(self.run_id).heartbeat_at


DEADLINE_S = 120.0  # generous: each wait ends as soon as the state it waits on is seen


def test_a_worker_renews_its_lease_while_it_trains(store):
    # without beats during a long phase, another process declares the run dead after the grace period
    with HeldRun(store) as held:
        seen = [held.heartbeat()]
        deadline = time.monotonic() + DEADLINE_S
        # three renewals while the worker sits in one step: at most two beats (its first, and the one its
        # phase's start asks for) can still be on their way when the step is reached, so these are periodic beats
        while len(seen) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
            if held.heartbeat() != seen[-1]:
                seen.append(held.heartbeat())
        assert len(seen) == 4 and seen == sorted(seen), f"the heartbeat did not advance three times: {seen}"
        assert store.get_run(held.run_id).status == "running"
        assert held.release() == [(held.run_id, "completed")]


def test_a_dashboard_starting_beside_a_live_worker_leaves_its_run_running(store):
    # a JobManager expires dead workers' leases when it starts, never those whose heartbeats are fresh
    from kdcore.jobs import JobManager

    with HeldRun(store) as held:
        manager = JobManager(store, workers="none")
        try:
            assert held.run_id not in manager.expired
            assert store.get_run(held.run_id).status == "running"
        finally:
            manager.shutdown()
        assert held.release() == [(held.run_id, "completed")]  # the lease was still its own
    assert store.get_run(held.run_id).status == "completed"


# ---- claims that meet -------------------------------------------------------------------------
def _reads_the_queue(statement: str) -> bool:
    text = " ".join(statement.split())
    return text.startswith("SELECT runs.id FROM runs WHERE runs.status")  # = or IN (a resume takes stopped runs)


@pytest.mark.parametrize("which", ["oldest", "by number"])
def test_two_claims_meeting_on_one_queued_run_give_it_to_one_worker(any_store, which):
    # claim B reads the queue while claim A sits between its read and its write; a claim without its lock
    # (SQLite's BEGIN IMMEDIATE, PostgreSQL's FOR UPDATE) would hand the run to both
    from sqlalchemy import event

    store = any_store
    run_id = store.create_run(tiny_config())
    a_read, b_read, b_locking = threading.Event(), threading.Event(), threading.Event()

    def before(conn, cursor, statement, *rest):
        if threading.current_thread().name == "claim-b" and statement.strip().upper().startswith("BEGIN"):
            b_locking.set()  # B asks for the write lock A holds: it waits there until A commits

    def after(conn, cursor, statement, *rest):
        me = threading.current_thread().name
        if not _reads_the_queue(statement) or me not in ("claim-a", "claim-b"):
            return
        if me == "claim-b":
            b_read.set()
            return
        a_read.set()
        deadline = time.monotonic() + DEADLINE_S  # hold A between its read and its write until B has read,
        while not b_read.wait(0.05) and time.monotonic() < deadline:
            if waits_on_a_lock():  # or until B is seen waiting on A's lock (PostgreSQL's FOR UPDATE without
                break  # SKIP LOCKED), where it cannot read before A commits
            if b_locking.is_set():  # or has asked SQLite for the write lock A holds
                b_read.wait(1.0)
                break

    def waits_on_a_lock() -> bool:
        if store.engine.dialect.name != "postgresql":
            return False
        with store.engine.connect() as conn:
            return bool(conn.exec_driver_sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                             "AND datname = current_database()").scalar())

    results, errors = {}, []

    def claim(name):
        try:
            results[name] = store.claim(f"host-{name}:1", run_id=run_id if which == "by number" else None)
        except Exception as err:  # a claim that fails is a lost run too
            errors.append(err)

    event.listen(store.engine, "before_cursor_execute", before)
    event.listen(store.engine, "after_cursor_execute", after)
    try:
        a = threading.Thread(target=claim, args=("a",), name="claim-a")
        a.start()
        assert a_read.wait(DEADLINE_S)
        b = threading.Thread(target=claim, args=("b",), name="claim-b")
        b.start()
        a.join(DEADLINE_S)
        b.join(DEADLINE_S)
    finally:
        event.remove(store.engine, "before_cursor_execute", before)
        event.remove(store.engine, "after_cursor_execute", after)
    assert not errors, errors
    assert sorted(results.values(), key=str) == [run_id, None], results
    winner = "host-a:1" if results["a"] == run_id else "host-b:1"
    run = store.get_run(run_id)
    assert (run.status, run.worker, run.attempt) == ("running", winner, 1)
