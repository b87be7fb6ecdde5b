"""train.compile and train.cuda_graphs: where the student's step runs compiled, its fall-backs, and what a run records.

The logic is checked with torch.compile's cheap backends (a counting one, aot_eager); one test compiles
for real with inductor on a small MLP.
"""
import pytest
import torch
from torch import nn

from kdcore.configure import build_config
from kdcore.data import load_dataset
from kdcore.engine import compiled as compiled_module
from kdcore.engine.compiled import compile_mode
from kdcore.engine.device import fast_path
from kdcore.engine.events import no_callback
from kdcore.engine.trainer import fit
from kdcore.models import create_model

CPU = torch.device("cpu")


def _config(method="soft", **train):
    return build_config({
        "dataset": {"name": "digits", "val_fraction": 0.15}, "teacher": {"arch": "small_cnn"},
        "student": {"arch": "tiny_cnn"}, "distill": {"method": method},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.003, "seed": 0, "device": "cpu", **train},
    })


@pytest.fixture
def quiet_cpu(monkeypatch):
    """One thread and no thread policy, so two fits of the same settings give the same bits."""
    monkeypatch.setenv("KDCORE_CPU_WATCH", "0")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def counting_backend(monkeypatch):
    """A torch.compile backend that runs the graph as traced and counts each run's batch size."""
    torch._dynamo.reset()
    runs: list[int] = []

    def backend(gm, example_inputs):
        def run(*args):
            images = [a for a in args if isinstance(a, torch.Tensor) and a.dim() == 4 and a.shape[1:] == (1, 8, 8)]
            runs.extend(len(x) for x in images[:1])  # the batch of digits images (parameters are inputs too)
            return gm.forward(*args)
        return run

    monkeypatch.setattr(compiled_module, "BACKEND", backend)
    yield runs
    torch._dynamo.reset()


def _baseline_fit(cfg, data, **kw):
    torch.manual_seed(1)
    model = create_model("tiny_cnn", num_classes=data.num_classes, in_channels=data.in_channels,
                         image_size=data.image_size)
    result = fit(model, data, phase="baseline", epochs=cfg.train.epochs, train_cfg=cfg.train, device=CPU,
                 callback=no_callback, **kw)
    return model, result


def test_compile_and_cuda_graphs_are_off_by_default_and_the_fast_path_records_it():
    train = _config().train
    assert (train.compile, train.cuda_graphs) == (False, False)
    assert fast_path(CPU, train).describe()["compile"] == "off"
    on = _config(compile=True).train
    assert fast_path(CPU, on).describe()["compile"] == "default"
    assert fast_path(torch.device("cuda"), _config(cuda_graphs=True).train).describe()["compile"] == "reduce-overhead"


def test_the_compile_mode_follows_the_device_and_says_why_when_a_switch_cannot_apply():
    cuda, mps = torch.device("cuda"), torch.device("mps")
    assert compile_mode(CPU, False, False) == (None, "off")
    assert compile_mode(CPU, True, False) == ("default", "default")
    assert compile_mode(CPU, True, True) == ("default", "default")  # no CUDA graphs off CUDA: compiled without
    assert compile_mode(CPU, False, True) == (None, "off (train.cuda_graphs needs a CUDA device)")
    assert compile_mode(cuda, True, False) == ("default", "default")
    assert compile_mode(cuda, False, True) == ("reduce-overhead", "reduce-overhead")
    assert compile_mode(cuda, True, True) == ("reduce-overhead", "reduce-overhead")
    mode, described = compile_mode(mps, True, False)
    assert mode is None and described.startswith("off (") and "mps" in described


def test_a_compiled_fit_runs_its_full_batches_compiled_and_the_last_smaller_batch_eagerly(counting_backend):
    cfg = _config(compile=True)
    data = load_dataset(cfg.dataset)
    model, result = _baseline_fit(cfg, data)
    full, rest = divmod(len(data.train), 64)
    assert rest, "the digits split should end in a smaller batch"
    assert result.compiled == "default"
    # forward graphs run once per full batch of each epoch, never on the smaller one
    assert counting_backend and set(counting_backend) == {64}
    assert len(counting_backend) == full * cfg.train.epochs
    assert model._compiled_call_impl is None  # evaluation and later uses run the plain module


def test_teachers_run_on_every_batch_are_compiled_with_the_student_and_cached_ones_are_not(counting_backend):
    data = load_dataset(_config().dataset)
    shape = dict(num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size)
    full = len(data.train) // 64
    for augment, graphs_per_step in (({"crop_padding": 1}, 2), (None, 1)):  # augmented: no logits cache
        counting_backend.clear()
        cfg = _config(compile=True, epochs=1)
        torch.manual_seed(0)
        teacher = create_model("small_cnn", **shape).eval()
        student = create_model("tiny_cnn", **shape)
        augment_cfg = cfg.dataset.augment.model_copy(update=augment or {})
        result = fit(student, data, phase="student", epochs=1, train_cfg=cfg.train, device=CPU, teachers=[teacher],
                     distill_cfg=cfg.distill, augment=augment_cfg, callback=no_callback)
        assert result.compiled == "default"
        assert len(counting_backend) == graphs_per_step * full, augment
        assert teacher._compiled_call_impl is None


def test_a_fit_without_a_full_batch_records_that_nothing_ran_compiled(counting_backend):
    cfg = _config(compile=True, batch_size=4096, epochs=1)
    data = load_dataset(cfg.dataset)
    _, result = _baseline_fit(cfg, data)
    assert counting_backend == []
    assert result.compiled == "off (no full batch of 4096 images to compile)"


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_a_failure_to_compile_falls_back_to_eager_with_the_weights_an_eager_fit_gives(where, quiet_cpu, monkeypatch):
    from torch._dynamo.backends.common import aot_autograd

    torch._dynamo.reset()

    def no_compiler(gm, example_inputs):
        raise RuntimeError("no C++ compiler found")

    compilers = {"fw_compiler": lambda gm, ex: gm, "bw_compiler": lambda gm, ex: gm}
    compilers["fw_compiler" if where == "forward" else "bw_compiler"] = no_compiler
    monkeypatch.setattr(compiled_module, "BACKEND", aot_autograd(**compilers))
    cfg = _config(compile=True)
    data = load_dataset(cfg.dataset)
    eager, _ = _baseline_fit(_config(), data)
    fell_back, result = _baseline_fit(cfg, data)
    torch._dynamo.reset()
    assert result.compiled.startswith("off (compiling failed: ") and "no C++ compiler" in result.compiled
    # the failed step starts again from the same BatchNorm statistics and random states
    for (name, a), b in zip(eager.state_dict().items(), fell_back.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_method_reading_the_students_layers_keeps_its_step_eager_and_says_why(counting_backend):
    cfg = _config(method="fitnets", compile=True)
    data = load_dataset(cfg.dataset)
    shape = dict(num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size)
    torch.manual_seed(0)
    teacher = create_model("small_cnn", **shape).eval()
    student = create_model("tiny_cnn", **shape)
    result = fit(student, data, phase="student", epochs=1, train_cfg=cfg.train, device=CPU, teachers=[teacher],
                 distill_cfg=cfg.distill, callback=no_callback)
    assert result.compiled == "off (the method reads the student's layers through hooks)"
    assert counting_backend == []


def test_a_distilled_student_with_dropout_compiles_and_draws_the_eager_fits_masks(quiet_cpu, monkeypatch):
    """kdcore's Dropout draws from the fit's own generator between two graphs: the same masks as eagerly."""
    torch._dynamo.reset()
    monkeypatch.setattr(compiled_module, "BACKEND", "aot_eager")
    data = load_dataset(_config().dataset)
    shape = dict(num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size)
    torch.manual_seed(0)
    teacher = create_model("small_cnn", **shape).eval()
    probs = []
    for compiled in (False, True):
        cfg = _config(compile=compiled)
        torch.manual_seed(1)
        student = create_model("mlp_tiny", dropout=0.3, **shape)
        result = fit(student, data, phase="student", epochs=1, train_cfg=cfg.train, device=CPU, teachers=[teacher],
                     distill_cfg=cfg.distill, callback=no_callback)
        assert result.compiled == ("default" if compiled else "off")
        probs.append(student(data.val.x).softmax(1).detach())
    torch._dynamo.reset()
    assert torch.allclose(probs[0], probs[1], atol=1e-4)


def test_a_run_summary_records_the_compile_asked_for_and_what_each_phase_ran(tmp_path, counting_backend):
    from kdcore.engine.run import execute_run

    cfg = build_config({"dataset": {"name": "digits", "val_fraction": 0.15}, "teacher": {"arch": "tiny_cnn"},
                        "student": {"arch": "tiny_cnn"}, "distill": {"method": "fitnets"},
                        "train": {"epochs": 1, "batch_size": 128, "device": "cpu", "compile": True}})
    summary = execute_run(cfg, tmp_path / "run")
    assert summary["fast_path"]["compile"] == "default"
    assert summary["teacher_compile"] == summary["baseline_compile"] == "default"
    assert summary["student_compile"] == "off (the method reads the student's layers through hooks)"
    plain = execute_run(cfg.model_copy(update={"train": cfg.train.model_copy(update={"compile": False})}),
                        tmp_path / "plain")
    assert plain["fast_path"]["compile"] == "off" and "student_compile" not in plain


def test_inductor_compiles_a_small_students_step_on_this_cpu(quiet_cpu):
    """The real compiler once (a C++ toolchain is on this machine): the compiled fit learns like the eager one."""
    torch._dynamo.reset()
    data = load_dataset(_config().dataset)
    accs = []
    for compiled in (False, True):
        cfg = _config(compile=compiled, epochs=1, amp=False)
        torch.manual_seed(1)
        model = nn.Sequential(nn.Flatten(), nn.Linear(data.image_size ** 2 * data.in_channels, 32), nn.ReLU(),
                              nn.Linear(32, data.num_classes))
        result = fit(model, data, phase="baseline", epochs=1, train_cfg=cfg.train, device=CPU, callback=no_callback)
        assert result.compiled == ("default" if compiled else "off")
        accs.append(result.best_val_acc)
    torch._dynamo.reset()
    assert accs[1] == pytest.approx(accs[0], abs=0.02)
