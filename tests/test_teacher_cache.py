"""The teachers' logit cache: filled over epoch 1's batches, in a second thread on a multi-core CPU."""
import contextlib
import re
import threading
import time

import pytest
import torch
from torch import nn

from kdcore.configure import build_config
from kdcore.data import load_dataset, make_loader
from kdcore.engine import teacher_cache as cache_module
from kdcore.engine.device import fast_path
from kdcore.engine.events import no_callback
from kdcore.engine.teacher_cache import TeacherLogitCache, folded_for_inference
from kdcore.engine.trainer import fit, predict_logits
from kdcore.models import create_model

CPU = torch.device("cpu")
FP32 = {"amp": False}  # exact comparisons; bf16 would round the teacher's logits


def _config(**train):
    return build_config({
        "dataset": {"name": "digits", "val_fraction": 0.15},
        "teacher": {"arch": "small_cnn"}, "student": {"arch": "tiny_cnn"},
        "distill": {"temperature": 4.0, "alpha": 0.9},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.003, "seed": 0, **train},
    })


def _teacher(data, seed=0):
    torch.manual_seed(seed)
    model = create_model("small_cnn", num_classes=10, in_channels=1, image_size=data.image_size)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):  # statistics a fold must carry
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def test_folding_batch_norms_keeps_the_logits_and_leaves_the_teacher_as_it_was():
    data = load_dataset(_config().dataset)
    teacher = _teacher(data)
    folded = folded_for_inference(teacher)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in teacher.modules()) == 2
    with torch.inference_mode():
        assert torch.allclose(folded(data.test.x), teacher(data.test.x), atol=1e-5)


def test_a_model_torch_fx_cannot_trace_is_used_unfolded():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                return self.bn(self.conv(x)).mean((2, 3))
            return self.conv(x).mean((2, 3))

    model = Branchy().eval()
    copy = folded_for_inference(model)
    assert copy is not model and isinstance(copy.bn, nn.BatchNorm2d)
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(copy(x), model(x))


@pytest.mark.parametrize("background", [False, True], ids=["inline", "second-thread"])
def test_the_cache_holds_each_images_teacher_logits(background):
    cfg = _config(**FP32)
    data = load_dataset(cfg.dataset)
    teacher = _teacher(data)
    path = fast_path(CPU, cfg.train)
    loader = make_loader(data.train, 64, shuffle=True, seed=5, channels_last=path.channels_last)
    cache = TeacherLogitCache([teacher], lambda each: each[0], loader, path, background=background)
    try:
        logits = cache.complete()
    finally:
        cache.close()
    expected = predict_logits(teacher, data.train, CPU, 64, path=path)
    assert logits.shape == expected.shape
    assert torch.allclose(logits, expected, atol=1e-4)


def test_the_second_thread_runs_one_batch_ahead_with_half_the_threads_and_gives_them_back():
    cfg = _config(**FP32)
    data = load_dataset(cfg.dataset)
    path = fast_path(CPU, cfg.train)
    loader = make_loader(data.train, 32, shuffle=True, seed=1)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cache = TeacherLogitCache([_teacher(data)], lambda each: each[0], loader, path, background=True)
        assert torch.get_num_threads() == 1  # the student's half while both run
        first = next(iter(loader.epoch_view(0)))[2]
        assert torch.isfinite(cache.wait_for(1)[first]).all()
        cache.complete()
        assert torch.get_num_threads() == 2 and not any(t.name == "kdcore-teacher-pass" for t in threading.enumerate())
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _beside_cache(arch: str = "small_cnn"):
    """A cache over 32-image digits batches with its second thread, on two torch threads; closed after."""
    cfg = _config(**FP32)
    data = load_dataset(cfg.dataset)
    path = fast_path(CPU, cfg.train)
    torch.manual_seed(0)
    teacher = _teacher(data) if arch == "small_cnn" else create_model(arch, num_classes=10, in_channels=1,
                                                                       image_size=data.image_size).eval()
    expected = predict_logits(teacher, data.train, CPU, 64, path=path)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    # the second thread starts here: the test asks for its first batch at once, before it can run far ahead
    cache = TeacherLogitCache([teacher], lambda each: each[0], make_loader(data.train, 32, shuffle=True, seed=3),
                              path, background=True)
    try:
        yield cache, expected
    finally:
        cache.close()
        torch.set_num_threads(before)


def test_a_student_kept_waiting_times_the_pass_both_ways_and_keeps_the_faster_with_the_same_logits():
    with _beside_cache("resnet8x4") as (cache, expected):  # about 5 ms a batch here: it cannot run far ahead
        assert cache.batches >= 2 + 4 * cache_module.PROBE_BATCHES
        for batch in range(1, cache.batches + 1):  # a student whose steps take no time always waits
            logits = cache.wait_for(batch)
        assert torch.get_num_threads() == 2 and not cache.beside
        assert not any(t.name == "kdcore-teacher-pass" for t in threading.enumerate())
    assert re.fullmatch(r"(beside the student|in turn): \d+ ms a batch beside, \d+ ms in turn", cache.measured)
    assert torch.allclose(logits, expected, atol=1e-4)  # every row filled once, whichever thread filled it


def test_a_teacher_that_keeps_up_stays_beside_the_student_untimed():
    with _beside_cache() as (cache, expected):
        for batch in range(1, 2 + cache_module.PROBE_BATCHES + 2):
            cache.wait_for(batch)
            time.sleep(0.05)  # the student's step: far longer than the small teacher's batch
        assert cache.measured == "" and cache._probe is None
        assert torch.allclose(cache.complete(), expected, atol=1e-4)


def test_a_resumed_fit_asking_for_every_batch_at_once_is_not_timed():
    with _beside_cache() as (cache, expected):
        assert torch.allclose(cache.complete(), expected, atol=1e-4)
        assert cache.measured == "" and cache._probe is None and torch.get_num_threads() == 2


def test_a_fit_cancelled_in_its_first_epoch_stops_the_teachers_thread(monkeypatch):
    cfg = _config()
    data = load_dataset(cfg.dataset)
    monkeypatch.setattr(TeacherLogitCache, "overlaps", staticmethod(lambda path: True))
    before = torch.get_num_threads()
    steps = iter(range(100))
    result = fit(create_model("tiny_cnn", num_classes=10, in_channels=1, image_size=data.image_size), data,
                 phase="student", epochs=2, train_cfg=cfg.train, device=CPU, teachers=[_teacher(data)],
                 distill_cfg=cfg.distill, callback=no_callback, should_stop=lambda: next(steps) >= 3)
    assert result.cancelled and result.epochs_run == 1
    assert torch.get_num_threads() == before
    assert not any(t.name == "kdcore-teacher-pass" for t in threading.enumerate())


def test_an_error_in_the_teachers_thread_is_raised_by_the_fit(monkeypatch):
    cfg = _config()
    data = load_dataset(cfg.dataset)
    monkeypatch.setattr(TeacherLogitCache, "overlaps", staticmethod(lambda path: True))
    real = cache_module.folded_for_inference

    def failing_after_two_batches(model):
        copy, calls = real(model), iter(range(100))
        forward = copy.forward

        def forward_or_fail(x):
            if next(calls) >= 2:
                raise RuntimeError("the teacher failed on its third batch")
            return forward(x)
        copy.forward = forward_or_fail
        return copy

    monkeypatch.setattr(cache_module, "folded_for_inference", failing_after_two_batches)
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="third batch"):
        fit(create_model("tiny_cnn", num_classes=10, in_channels=1, image_size=data.image_size), data,
            phase="student", epochs=1, train_cfg=cfg.train, device=CPU, teachers=[_teacher(data)],
            distill_cfg=cfg.distill, callback=no_callback)
    assert torch.get_num_threads() == before
