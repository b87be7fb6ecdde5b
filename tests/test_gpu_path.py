"""The CUDA path's fixes, checked on the CPU: what they would do on a GPU, and that a CPU run is unchanged."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kdcore.config import AugmentConfig, DatasetConfig
from kdcore.configure import build_config
from kdcore.data import Split, load_dataset, make_loader
from kdcore.data import loaders as loaders_module
from kdcore.data.augment import augment_batch, random_crop, random_flip, random_rotation
from kdcore.data.loaders import _epoch_generator, _num_workers
from kdcore.engine import trainer as trainer_module
from kdcore.engine.checkpoint import CheckpointError
from kdcore.engine import device as device_module
from kdcore.engine.device import fast_path, prepare_device
from kdcore.engine.events import no_callback
from kdcore.engine.trainer import TrainingDiverged, fit, predict_logits
from kdcore.jobs.worker import cuda_context_lost
from kdcore.models import create_model

CPU = torch.device("cpu")


def _digits_config(**train):
    return build_config({
        "dataset": {"name": "digits", "val_fraction": 0.15},
        "teacher": {"arch": "small_cnn", "epochs": 1}, "student": {"arch": "mlp_tiny"},
        "distill": {"temperature": 4.0, "alpha": 0.9},
        "train": {"epochs": 1, "batch_size": 64, "lr": 0.003, "seed": 0, **train},
    })


def _write_images(folder, classes=3, per_class=8):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (folder / f"class_{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8), mode="RGB").save(
                folder / f"class_{c}" / f"img_{i}.png")


# ---------------------------------------------------------------- 1. augmentation draws


def test_cpu_augmentation_draws_are_the_host_draws_of_before():
    """A CPU generator gives exactly the offsets, flips and angles drawn before the CUDA change."""
    x = torch.randn(5, 3, 8, 8)
    g = torch.Generator().manual_seed(7)
    ref = torch.Generator().manual_seed(7)
    span = 2 * 2 + 1
    oy = (torch.rand(5, generator=ref) * span).long().clamp_(max=span - 1)
    ox = (torch.rand(5, generator=ref) * span).long().clamp_(max=span - 1)
    padded = nn.functional.pad(x, (2, 2, 2, 2))
    expected = torch.stack([padded[i, :, oy[i]:oy[i] + 8, ox[i]:ox[i] + 8] for i in range(5)])
    assert torch.equal(random_crop(x, 2, g), expected)

    flip = torch.rand(5, generator=ref) < 0.5
    assert torch.equal(random_flip(x, g), torch.where(flip[:, None, None, None], x.flip(3), x))
    # the rotation takes its n angles from the same CPU stream, and nothing more
    ref.set_state(g.get_state())
    assert random_rotation(x, 10.0, g).shape == x.shape
    torch.rand(5, generator=ref)
    assert torch.equal(torch.rand(1, generator=g), torch.rand(1, generator=ref))


def test_a_cpu_loader_augments_with_a_cpu_generator_seeded_from_seed_and_epoch():
    d = load_dataset(DatasetConfig(name="digits", val_fraction=0.15))
    aug = AugmentConfig(crop_padding=2, flip=True, rotation=5)
    loader = make_loader(d.train, 32, shuffle=True, augment=aug, seed=5)
    loader.epoch = 3
    x, _, idx = next(iter(loader))
    gen = _epoch_generator(5, 3, 1)
    assert gen.device.type == "cpu"
    assert torch.equal(x, augment_batch(d.train.x[idx], aug, gen))


# ---------------------------------------------------------------- 2, 3. one device copy per split per fit


def test_a_fit_builds_one_loader_per_split_and_the_teacher_cache_reuses_the_train_loader(monkeypatch):
    cfg = _digits_config()
    data = load_dataset(cfg.dataset)
    built = []

    def counting_loader(split, *args, **kwargs):  # the real loader, counted by split
        built.append(split)
        return make_loader(split, *args, **kwargs)

    torch.manual_seed(0)
    teacher = create_model("small_cnn", num_classes=10, in_channels=1, image_size=8)
    student = create_model("mlp_tiny", num_classes=10, in_channels=1, image_size=8)
    monkeypatch.setattr(trainer_module, "make_loader", counting_loader)
    fit(student, data, phase="student", epochs=3, train_cfg=cfg.train, device=CPU, teachers=[teacher],
        distill_cfg=cfg.distill, callback=no_callback)
    # train once (its device tensors also serve the teacher-logit cache), val once for 3 epochs and the teacher
    assert [s is data.train for s in built].count(True) == 1
    assert [s is data.val for s in built].count(True) == 1
    assert len(built) == 2


def test_an_in_order_view_shares_the_loaders_device_tensors_and_predicts_like_the_split():
    d = load_dataset(DatasetConfig(name="digits", val_fraction=0.15))
    loader = make_loader(d.train, 64, shuffle=True, augment=AugmentConfig(flip=True), seed=1)
    view = loader.in_order(100)
    assert view._x.data_ptr() == loader._x.data_ptr() and view.augment is None and not view.shuffle
    assert loader.batch_size == 64 and loader.augment is not None  # the train loader is left as it was
    torch.manual_seed(0)
    model = create_model("mlp_tiny", num_classes=10, in_channels=1, image_size=8)
    assert torch.equal(predict_logits(model, view, CPU), predict_logits(model, d.train, CPU, 100))
    assert torch.equal(view.labels, d.train.y)


# ---------------------------------------------------------------- 4. streamed loaders


def test_data_workers_follow_the_cores_with_a_cap_and_the_environment(monkeypatch):
    monkeypatch.delenv("KDCORE_DATA_WORKERS", raising=False)
    monkeypatch.setattr(loaders_module.os, "cpu_count", lambda: 64)
    assert _num_workers() == loaders_module.MAX_DATA_WORKERS
    monkeypatch.setattr(loaders_module.os, "cpu_count", lambda: 4)
    assert _num_workers() == 3  # one core left to the training process
    monkeypatch.setattr(loaders_module.os, "cpu_count", lambda: None)
    assert _num_workers() == 0
    monkeypatch.setenv("KDCORE_DATA_WORKERS", "12")
    assert _num_workers() == 12
    monkeypatch.setenv("KDCORE_DATA_WORKERS", "two")
    with pytest.raises(ValueError, match="KDCORE_DATA_WORKERS"):
        _num_workers()


def test_a_streamed_loader_keeps_one_persistent_dataloader_with_the_same_orders_and_global_rng(tmp_path, monkeypatch):
    _write_images(tmp_path / "imgs")
    d = load_dataset(DatasetConfig(name="imagefolder", root=str(tmp_path / "imgs"), image_size=8, val_fraction=0.0))

    def three_epochs(workers: str):
        monkeypatch.setenv("KDCORE_DATA_WORKERS", workers)
        loader = make_loader(d.train, 5, shuffle=True, seed=2, augment=AugmentConfig(flip=True))
        torch.manual_seed(0)
        epochs, rng_after, streams = [], [], []
        for _ in range(3):
            epochs.append([(x, idx) for x, _, idx in loader])
            rng_after.append(torch.rand(1))  # dropout reads the global RNG between passes
            streams.append(loader._stream)
        return loader, epochs, rng_after, streams

    loader, persistent, rng_p, streams = three_epochs("1")
    assert loader._stream.persistent_workers and all(s is streams[0] for s in streams)
    _, fresh, rng_f, _ = three_epochs("0")  # no workers: a new iterator every pass, as before
    for a, b in zip(persistent, fresh):
        assert all(torch.equal(xa, xb) and torch.equal(ia, ib) for (xa, ia), (xb, ib) in zip(a, b))
    assert torch.equal(torch.cat(rng_p), torch.cat(rng_f))
    # epoch 2's order is that of a new loader started at epoch 2
    again = make_loader(d.train, 5, shuffle=True, seed=2)
    again.epoch = 2
    assert torch.equal(torch.cat([idx for _, _, idx in again]), torch.cat([idx for _, idx in persistent[2]]))


# ---------------------------------------------------------------- 5. the fast path per device


def test_the_fast_path_is_chosen_per_device(monkeypatch):
    monkeypatch.setattr(device_module, "cpu_runs_bf16", lambda: True)
    cuda = fast_path(torch.device("cuda"))
    assert (cuda.bf16, cuda.channels_last, cuda.fused_optimizer, cuda.cudnn_benchmark, cuda.tf32) == (True,) * 5
    cpu = fast_path(CPU)
    assert (cpu.bf16, cpu.channels_last, cpu.fused_optimizer) == (True, True, True)
    assert not cpu.cudnn_benchmark and not cpu.tf32
    mps = fast_path(torch.device("mps"))
    assert not (mps.bf16 or mps.channels_last or mps.fused_optimizer)
    monkeypatch.setattr(device_module, "cpu_runs_bf16", lambda: False)
    assert fast_path(CPU).precision == "fp32" and fast_path("cuda:1").precision == "bf16"
    off = _digits_config(amp=False, channels_last=False, fused_optimizer=False).train
    for device in (CPU, torch.device("cuda")):
        assert fast_path(device, off).describe() == {"precision": "fp32", "channels_last": False,
                                                      "fused_optimizer": False, "compile": "off"}


def test_bf16_on_cpu_needs_the_hardware_and_an_avx512_kernel_set(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert device_module.cpu_runs_bf16()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")  # ATEN_CPU_CAPABILITY=avx2
    assert not device_module.cpu_runs_bf16()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert not device_module.cpu_runs_bf16()


def test_a_cpu_process_keeps_its_backend_settings_and_gets_conv_models_in_channels_last():
    before = (torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision())
    path = fast_path(CPU)
    prepare_device(path)
    assert (torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()) == before
    model = create_model("small_cnn", num_classes=10, in_channels=3, image_size=8)
    conv = next(m for m in path.format_model(model).modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    plain = create_model("small_cnn", num_classes=10, in_channels=3, image_size=8)
    off = fast_path(CPU, _digits_config(channels_last=False).train)
    assert next(m for m in off.format_model(plain).modules() if isinstance(m, nn.Conv2d)).weight.is_contiguous()


def test_a_channels_last_loader_delivers_nhwc_batches_of_the_same_values():
    d = load_dataset(DatasetConfig(name="digits", val_fraction=0.15))
    rgb = d.train.x[:40].repeat(1, 3, 1, 1)  # three channels, where NCHW and NHWC strides differ
    split = Split(rgb, d.train.y[:40])
    plain = list(make_loader(split, 16, shuffle=True, seed=3))
    nhwc = list(make_loader(split, 16, shuffle=True, seed=3, channels_last=True))
    for (xa, ya, ia), (xb, yb, ib) in zip(plain, nhwc):
        assert xb.is_contiguous(memory_format=torch.channels_last) and not xb.is_contiguous()
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)


def test_fused_optimizers_are_made_for_each_kind():
    cfg = _digits_config().train
    params = [nn.Parameter(torch.zeros(3))]
    for kind in ("sgd", "adam", "adamw"):
        opt = trainer_module.make_optimizer(params, cfg.model_copy(update={"optimizer": kind}), fused=True)
        assert opt.defaults["fused"] is True
        assert not trainer_module.make_optimizer(params, cfg.model_copy(update={"optimizer": kind})).defaults["fused"]


# ---------------------------------------------------------------- 6. evaluation precision


def test_a_cpu_run_summary_records_its_precision_and_layout(tmp_path):
    from kdcore.engine.run import execute_run

    cfg = build_config({"dataset": {"name": "digits", "val_fraction": 0.15}, "teacher": {"arch": "mlp_tiny"},
                        "student": {"arch": "mlp_tiny"}, "baseline": False,
                        "train": {"epochs": 1, "batch_size": 128, "amp": True, "device": "cpu"}})
    summary = execute_run(cfg, tmp_path / "run")
    expected = "bf16" if device_module.cpu_runs_bf16() else "fp32"
    assert summary["eval_precision"] == expected
    assert summary["fast_path"] == {"precision": expected, "channels_last": True, "fused_optimizer": True,
                                    "compile": "off"}
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"amp": False})})
    assert execute_run(cfg, tmp_path / "fp32")["eval_precision"] == "fp32"


# ---------------------------------------------------------------- 7. a lost CUDA context


@pytest.mark.parametrize("err", [
    torch.AcceleratorError("CUDA error: an illegal memory access was encountered"),
    RuntimeError("CUDA error: device-side assert triggered\nCUDA kernel errors might be asynchronously reported"),
    RuntimeError("...: block: [0,0,0], thread: [3,0,0] Assertion `t >= 0 && t < n_classes` failed. device-side assert"),
], ids=["AcceleratorError", "RuntimeError CUDA error", "RuntimeError device-side assert"])
def test_a_cuda_device_side_error_is_a_lost_context(err):
    assert cuda_context_lost(err)
    try:  # also when wrapped by the code that met it
        try:
            raise err
        except RuntimeError as inner:
            raise ValueError("loading the batch failed") from inner
    except ValueError as outer:
        assert cuda_context_lost(outer)


@pytest.mark.parametrize("err", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),  # the context survives an OOM
    RuntimeError("train.device is 'cuda' but no CUDA GPU is visible to PyTorch"),
    CheckpointError("/runs/CUDA error notes/teacher.pt is not a checkpoint"),
    TrainingDiverged("student: the loss became nan at epoch 1, step 3"),
    ValueError("device-side assert"),
], ids=["OOM", "no GPU", "CheckpointError quoting a path", "diverged", "ValueError"])
def test_other_failures_leave_the_worker_taking_runs(err):
    assert not cuda_context_lost(err)


def test_tf32_is_set_so_that_both_of_torchs_precision_apis_can_still_be_read():
    """The CUDA path's TF32 setting, applied in a fresh process: the old and the new getters both answer (mixing
    the APIs made torch 2.11 on a GPU, and 2.14 too, refuse the old getter for the whole process)."""
    probe = ("import torch\n"
             "from kdcore.engine.device import FastPath, prepare_device\n"
             "prepare_device(FastPath(device=torch.device('cpu'), tf32=True))\n"
             "new = getattr(torch.backends.cuda.matmul, 'fp32_precision', 'tf32')\n"
             "print(torch.get_float32_matmul_precision(), new, torch.backends.cudnn.allow_tf32)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["high", "tf32", "True"]


# ---------------------------------------------------------------- 8. evaluation without per-batch host work


def test_evaluation_batches_are_at_least_1024_images_on_cuda_and_as_configured_elsewhere():
    train = _digits_config(eval_batch_size=256).train
    assert fast_path(torch.device("cuda"), train).eval_batch(256) == device_module.CUDA_EVAL_BATCH == 1024
    assert fast_path(torch.device("cuda"), train).eval_batch(4096) == 4096
    assert fast_path(CPU, train).eval_batch(256) == 256


def test_predicting_a_split_reads_nothing_to_the_host_and_writes_its_logits_into_one_tensor(monkeypatch):
    d = load_dataset(DatasetConfig(name="digits", val_fraction=0.15))
    model = create_model("small_cnn", num_classes=10, in_channels=1, image_size=8).eval()
    loader = make_loader(d.val, 32, shuffle=False)
    with torch.inference_mode():
        expected = torch.cat([model(x) for x, _, _ in loader])
    calls = []
    for name in ("item", "tolist", "cpu", "numpy", "__bool__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=original, _n=name, **k: (calls.append(_n),
                                                                                              _o(self, *a, **k))[1])
    real_cat = torch.cat
    monkeypatch.setattr(torch, "cat", lambda *a, **k: (calls.append("cat"), real_cat(*a, **k))[1])
    logits = predict_logits(model, loader, CPU)
    monkeypatch.undo()
    assert calls == []  # neither a read per batch nor a second copy to join the batches
    assert len(loader) > 2 and torch.equal(logits, expected) and logits.dtype == torch.float32


def test_validation_reads_its_accuracy_and_the_teacher_agreement_to_the_host_in_one_read(monkeypatch):
    cfg = _digits_config()
    data = load_dataset(cfg.dataset)
    torch.manual_seed(0)
    teacher = create_model("small_cnn", num_classes=10, in_channels=1, image_size=8)
    student = create_model("mlp_tiny", num_classes=10, in_channels=1, image_size=8)
    training = trainer_module._Fit(student, data, phase="student", epochs=1, train_cfg=cfg.train, device=CPU,
                                   teachers=[teacher], distill_cfg=cfg.distill, augment=None, callback=no_callback,
                                   on_checkpoint=lambda tag, m: None, cache_teacher_logits=False, seed=0)
    reads = []
    for name in ("item", "tolist"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=original, _n=name, **k: (reads.append(_n),
                                                                                              _o(self, *a, **k))[1])
    metrics = {}
    try:
        val_acc = training.validate(metrics)
    finally:
        monkeypatch.undo()
        training.close()
    assert len(reads) == 1
    preds = predict_logits(student, data.val, CPU).argmax(1)
    assert val_acc == metrics["val_acc"] == (preds == data.val.y).float().mean().item()
    teacher_preds = predict_logits(teacher, data.val, CPU).argmax(1)
    assert metrics["agreement"] == (preds == teacher_preds).float().mean().item()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU visible to PyTorch")
def test_predicting_on_cuda_makes_no_host_sync():
    d = load_dataset(DatasetConfig(name="digits", val_fraction=0.15))
    model = create_model("small_cnn", num_classes=10, in_channels=1, image_size=8).cuda().eval()
    loader = make_loader(d.val, 64, shuffle=False, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        logits = predict_logits(model, loader, torch.device("cuda"), path=fast_path("cuda"))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert logits.shape == (len(d.val), 10) and logits.device.type == "cuda"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU visible to PyTorch")
def test_a_cuda_graphs_fit_replays_the_compiled_step_and_learns_like_an_eager_fit():
    data = load_dataset(_digits_config().dataset)
    accs = {}
    for graphs in (False, True):
        cfg = _digits_config(epochs=3, cuda_graphs=graphs, device="cuda")
        torch.manual_seed(0)
        student = create_model("tiny_cnn", num_classes=10, in_channels=1, image_size=8)
        result = fit(student, data, phase="baseline", epochs=3, train_cfg=cfg.train, device=torch.device("cuda"),
                     callback=no_callback)
        assert result.compiled == ("reduce-overhead" if graphs else "off")
        accs[graphs] = result.best_val_acc
    torch._dynamo.reset()
    assert accs[True] == pytest.approx(accs[False], abs=0.05)
