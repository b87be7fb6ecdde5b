"""The CUDA path on a real GPU: a run with AMP and augmentation, a worker on cuda:0, and a step loop without host syncs.

Skipped where PyTorch sees no CUDA GPU (tests/test_gpu_path.py checks the same fixes' CPU side).
"""
import math
import threading

import pytest
import torch
from torch import nn

from kdcore.config import AugmentConfig
from kdcore.configure import build_config
from kdcore.data import load_dataset, make_loader
from kdcore.data.augment import augment_batch
from kdcore.engine.events import Event
from kdcore.engine.trainer import fit
from kdcore.models import create_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU visible to PyTorch")

AUGMENT = {"crop_padding": 1, "flip": True, "rotation": 10}


def _gpu_config(**train):
    return build_config({
        "dataset": {"name": "digits", "val_fraction": 0.15, "augment": AUGMENT},
        "teacher": {"arch": "small_cnn", "epochs": 2}, "student": {"arch": "mlp_tiny"},
        "distill": {"temperature": 4.0, "alpha": 0.9},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.003, "seed": 0, "device": "cuda", "amp": True, **train},
    })


@pytest.fixture
def sync_debug_off():
    yield
    torch.cuda.set_sync_debug_mode(0)  # whatever a test left, the next one starts without it


def test_a_digits_run_with_amp_and_augmentation_trains_on_cuda(tmp_path):
    from kdcore.engine.run import execute_run

    summary = execute_run(_gpu_config(), tmp_path / "run")
    assert summary["eval_precision"] == "bf16"
    assert summary["device"] == torch.cuda.get_device_name(0)
    for phase in ("teacher", "student", "baseline"):
        assert 0.2 < summary[f"{phase}_test_acc"] <= 1.0  # chance is 0.1
    assert math.isfinite(summary["kd_gain"])


def test_a_worker_on_cuda_0_completes_a_queued_run(store):
    from kdcore.jobs.worker import Worker

    run_id = store.create_run(_gpu_config(epochs=1))
    worker = Worker(store, "cuda:0", poll_s=0.05)
    assert worker.run(threading.Event(), exit_when_idle=True) == [(run_id, "completed")]
    run = store.get_run(run_id)
    assert run.summary["eval_precision"] == "bf16" and not worker.device_lost
    assert "test_logits" in store.artefacts(run_id)


def test_device_augmentation_makes_no_host_copies(sync_debug_off):
    d = load_dataset(build_config({"dataset": {"name": "digits"}}).dataset)
    loader = make_loader(d.train, 64, shuffle=True, device="cuda", augment=AugmentConfig(**AUGMENT), seed=3)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    batches = [x for x, _, _ in loader]  # a blocking host-to-device copy in here raises
    torch.cuda.set_sync_debug_mode(0)
    assert batches[0].device.type == "cuda"
    again = make_loader(d.train, 64, shuffle=True, device="cuda", augment=AugmentConfig(**AUGMENT), seed=3)
    assert all(torch.equal(a, b) for a, (b, _, _) in zip(batches, again))  # repeatable from (seed, epoch)
    g = torch.Generator(device="cuda").manual_seed(0)
    assert augment_batch(d.train.x[:8].cuda(), AugmentConfig(**AUGMENT), g).device.type == "cuda"


@pytest.mark.parametrize("distilled", [False, True], ids=["scratch", "distilled with a teacher per step"])
def test_the_step_loop_makes_no_host_syncs(distilled, sync_debug_off):
    """Syncs are checked from the first step on; the trainer's reporting points (every
    steps_per_epoch // REPORTS_PER_EPOCH steps, and each epoch's end) read metrics to the host
    on purpose and are exempt (kdcore.engine.trainer._host_reads)."""
    cfg = _gpu_config()
    data = load_dataset(cfg.dataset)
    cuda = torch.device("cuda")
    torch.manual_seed(0)
    teacher = create_model("small_cnn", num_classes=10, in_channels=1, image_size=8) if distilled else None
    student = create_model("small_cnn", num_classes=10, in_channels=1, image_size=8)
    steps = []

    def callback(event: Event) -> None:
        if event.kind == "phase":  # setup is done: the step loop starts now
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        elif event.kind == "step":
            steps.append(event.step)

    try:
        result = fit(student, data, phase="student", epochs=1, train_cfg=cfg.train, device=cuda, teachers=[teacher],
                     distill_cfg=cfg.distill if distilled else None, augment=cfg.dataset.augment, callback=callback)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert result.epochs_run == 1 and steps
    conv = next(m for m in student.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.backends.cudnn.benchmark
