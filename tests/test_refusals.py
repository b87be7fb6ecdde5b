"""Refused before any work, with the reason (issue 8, point 4): each bad input is fed for real to the CLI, the
New experiment form or the upload code, and the test checks the message, the exit status and that no run was
stored and no folder written. docs/reliability.md, "Refused before any work", lists them.
"""
import io
import os
import resource
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the app's own packages (ui), as `streamlit run` would see them

from streamlit.testing.v1 import AppTest  # noqa: E402

from kdcore.checks import check_runnable  # noqa: E402
from kdcore.cli import main  # noqa: E402
from kdcore.configure import build_config, load_config  # noqa: E402
from kdcore.engine.checkpoint import save_checkpoint  # noqa: E402
from kdcore.models import create_model  # noqa: E402
from kdcore.store import Store  # noqa: E402
from tests.helpers import errors, new_experiment_with, no_exceptions  # noqa: E402
from kdcore import text  # noqa: E402
from ui.uploads import UploadError, extract_zip  # noqa: E402

DIGITS = str(ROOT / "examples" / "digits.yaml")
LIMITS = ("KDCORE_MAX_PARAMS", "KDCORE_MAX_MEMORY_GB", "KDCORE_MAX_UNZIPPED_MB", "KDCORE_MAX_ZIP_FILES",
          "KDCORE_DATA_ROOT", "KDCORE_ARTEFACT_ROOT", "KDCORE_RUNS_DIR")


@pytest.fixture(autouse=True)
def plain_env(monkeypatch, tmp_path):
    for name in LIMITS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KDCORE_LOCAL_WORKERS", "thread")  # the dashboard's worker as a thread, as in test_pages
    monkeypatch.setenv("KDCORE_DB_URL", f"sqlite:///{tmp_path}/store/kd.db")


@pytest.fixture
def db(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/store/kd.db"


def _kdcore(capsys, *args, db: str) -> tuple[int, str]:
    code = main(["--db", db, *args])
    return code, capsys.readouterr().err


def _nothing_stored(tmp_path) -> None:
    """No store, hence no run row and no run folder (the artefact root is the store's folder)."""
    assert not (tmp_path / "store").exists(), list((tmp_path / "store").rglob("*"))


def _teacher_file(path: Path, arch="small_cnn", classes=10, channels=1, size=8, **options) -> Path:
    model = create_model(arch, classes, channels, size, **options)
    save_checkpoint(path, model, arch=arch, num_classes=classes, in_channels=channels, image_size=size,
                    options=options)
    return path


def _image_folder(folder: Path, counts: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for cls, n in counts.items():
        (folder / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L").save(folder / cls / f"{i}.png")
    return folder


# ---- the New experiment page, as test_pages drives it ---------------------------------------------------
def _refused_in_form(at: AppTest) -> None:
    assert at.button(key="ui.launch").disabled
    assert Store().count_runs() == 0
    assert not [p for p in Store().artefact_root.iterdir() if p.is_dir() and p.name != "uploads"]  # no run folder


# ---- a. a teacher that does not fit the dataset --------------------------------------------------------
@pytest.mark.parametrize("shape, names", [
    ((10, 1, 28), ["1×28×28 images", "1×8×8 images", "image size 28 vs 8"]),  # an MNIST teacher for digits
    ((100, 1, 8), ["classes 100 vs 10"]),
    ((10, 3, 8), ["channels 3 vs 1"]),
])
def test_a_teacher_checkpoint_that_does_not_fit_the_dataset_is_refused_by_the_cli(tmp_path, capsys, db, shape, names):
    classes, channels, size = shape
    path = _teacher_file(tmp_path / "mnist_teacher.pt", classes=classes, channels=channels, size=size)
    code, err = _kdcore(capsys, "train", DIGITS, "--set", "teacher.source=checkpoint", "--set",
                        f"teacher.checkpoint={path}", "--set", "teacher.options={}", db=db)
    assert code == 2, err
    assert "teacher.checkpoint: mnist_teacher.pt was trained on" in err and "but digits has" in err
    assert all(n in err for n in names), err
    _nothing_stored(tmp_path)


def test_a_digits_teacher_offered_for_mnist_is_refused_by_submit(tmp_path, capsys, db):
    path = _teacher_file(tmp_path / "digits_teacher.pt")  # 8x8
    code, err = _kdcore(capsys, "submit", DIGITS, "--set", "dataset.name=mnist", "--set", "teacher.source=checkpoint",
                        "--set", f"teacher.checkpoint={path}", "--set", "teacher.options={}", db=db)
    assert code == 2 and "image size 8 vs 28" in err and "1×28×28 images" in err, err
    _nothing_stored(tmp_path)


def test_a_stored_runs_teacher_for_28px_images_is_refused_for_digits(tmp_path, capsys, db):
    store = Store(db)
    source = store.create_run(build_config({"dataset": {"name": "mnist"}, "name": "mnist teacher"}))
    _teacher_file(store.run_dir(source) / "teacher.pt", size=28)
    store.finish_run(source, "completed", {})
    before = sorted(p.name for p in store.artefact_root.iterdir())
    code, err = _kdcore(capsys, "train", DIGITS, "--set", "teacher.source=run", "--set", f"teacher.run_id={source}",
                        db=db)
    assert code == 2 and f"teacher.run_id: run {source}'s teacher was trained on 1×28×28 images" in err, err
    assert "image size 28 vs 8" in err
    assert store.count_runs() == 1 and sorted(p.name for p in store.artefact_root.iterdir()) == before


def test_a_teacher_upload_for_28px_images_is_refused_in_the_form(tmp_path):
    path = _teacher_file(tmp_path / "mnist_teacher.pt", size=28)
    at = new_experiment_with(**{"f.teacher.source": "checkpoint", "f.teacher.arch": "small_cnn"})
    at.file_uploader(key="ui.checkpoint").upload("mnist_teacher.pt", path.read_bytes()).run()
    no_exceptions(at)
    assert "teacher.checkpoint" in errors(at) and "image size 28 vs 8" in errors(at), errors(at)
    _refused_in_form(at)


# ---- b. the form takes an uploaded checkpoint's options -------------------------------------------------
def test_an_uploaded_checkpoints_options_fill_the_form_and_its_sizes(tmp_path):
    path = _teacher_file(tmp_path / "mlp_teacher.pt", arch="mlp", hidden=[32, 16])
    params = sum(p.numel() for p in create_model("mlp", 10, 1, 8, hidden=[32, 16]).parameters())
    at = new_experiment_with(**{"f.teacher.source": "checkpoint", "f.teacher.arch": "mlp", "f.teacher.options": "hidden: [512]"})
    at.file_uploader(key="ui.checkpoint").upload("mlp_teacher.pt", path.read_bytes()).run()
    no_exceptions(at)
    assert at.text_input(key="f.teacher.options").value == "{hidden: [32, 16]}"
    teacher_params = next(m for m in at.metric if m.label == "Parameters")  # the teacher's column comes first
    assert teacher_params.value == text.compact(params) and params == 2778
    assert not errors(at) and not at.button(key="ui.launch").disabled


# ---- c. a device that does not exist here ----------------------------------------------------------------
ABSENT = [d for d, ok in (("cuda", torch.cuda.is_available()),
                          ("mps", getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())) if not ok]


@pytest.mark.parametrize("device", ABSENT)
def test_a_device_this_machine_lacks_is_refused_by_train(tmp_path, capsys, db, device):
    code, err = _kdcore(capsys, "train", DIGITS, "--set", f"train.device={device}", db=db)
    assert code == 2 and f"train.device: '{device}' does not exist on this machine" in err, err
    assert "available here: auto, cpu" in err
    _nothing_stored(tmp_path)


def test_a_worker_on_a_gpu_that_does_not_exist_is_refused(tmp_path, capsys, db):
    device = f"cuda:{max(3, torch.cuda.device_count())}"
    code, err = _kdcore(capsys, "worker", "--devices", f"cpu,{device}", "--exit-when-idle", db=db)
    assert code == 2 and f"--devices: '{device}' does not exist on this machine" in err, err
    assert "available here: auto, cpu" in err
    assert Store(db).count_runs() == 0


def test_a_device_this_machine_lacks_is_refused_in_the_form():
    at = new_experiment_with(**{"f.train.device": "mps"})
    assert "train.device" in errors(at) and "'mps' does not exist on this machine" in errors(at), errors(at)
    assert "available here: auto, cpu" in errors(at)
    _refused_in_form(at)


# ---- d. a model too large for this machine ------------------------------------------------------------------
def test_a_30000x30000_mlp_typed_in_the_form_is_refused_with_its_estimate_and_never_built():
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    at = new_experiment_with(**{"f.student.arch": "mlp", "f.student.options": "hidden: [30000, 30000]"})
    shown = errors(at)
    assert "student.options" in shown and "mlp would have about 902.3 million parameters" in shown, shown
    assert "over the limit of 100 million (KDCORE_MAX_PARAMS)" in shown
    student_params = [m for m in at.metric if m.label == "Parameters"][1]
    assert student_params.value == text.compact(902_280_010)  # 64*30000 + 30000² + 30000*10 + biases: the estimate
    _refused_in_form(at)
    # built for real its weights alone would be 3.4 GiB
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 1024 * 1024


def test_a_12000x12000_student_is_refused_by_the_cli_with_its_estimate(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in LIMITS}
    result = subprocess.run([sys.executable, "-m", "kdcore", "--db", f"sqlite:///{tmp_path}/store/kd.db", "train",
                             "examples/digits.yaml", "--set", "student.options.hidden=[12000,12000]"],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "student.options: mlp would have about 144.9 million parameters" in result.stderr
    assert "KDCORE_MAX_PARAMS" in result.stderr
    _nothing_stored(tmp_path)


def test_the_size_limits_are_configurable(monkeypatch):
    config = load_config(DIGITS)
    assert check_runnable(config) == []
    monkeypatch.setenv("KDCORE_MAX_PARAMS", "20000")  # the demo's student has 17,226, its teacher more
    (key, message), = check_runnable(config)
    assert key == "teacher.options" and "small_cnn would have about 0.2 million parameters" in message
    assert "over the limit of 0.02 million (KDCORE_MAX_PARAMS)" in message
    monkeypatch.delenv("KDCORE_MAX_PARAMS")
    monkeypatch.setenv("KDCORE_MAX_MEMORY_GB", "0.001")
    (key, message), = check_runnable(config)
    assert "training needs about" in message and "the limit of 0.001 GiB (KDCORE_MAX_MEMORY_GB)" in message


# ---- e. an image folder outside the data roots ------------------------------------------------------------
def test_image_folders_outside_the_data_roots_are_refused_by_the_cli(tmp_path, capsys, db, monkeypatch):
    first, second = tmp_path / "data_a", tmp_path / "data_b"
    first.mkdir()
    pets = _image_folder(second / "pets", {"cats": 10, "dogs": 10})
    monkeypatch.setenv("KDCORE_DATA_ROOT", f"{first}{os.pathsep}{second}")
    inside = load_config(DIGITS, ["dataset.name=imagefolder", f"dataset.root={pets}", "teacher.options={}",
                                  "dataset.student_fraction=1"])
    assert check_runnable(inside) == []  # in the second root: accepted
    (first / "escape").symlink_to("/usr/share")
    for root in ("/", "/usr/share", str(first / "escape")):
        code, err = _kdcore(capsys, "train", DIGITS, "--set", "dataset.name=imagefolder", "--set",
                            f"dataset.root={root}", db=db)
        assert code == 2 and "dataset.root:" in err and "is outside the data roots" in err, err
        assert str(first) in err and str(second) in err
    assert "/usr/share is outside" in err  # the link, resolved
    _nothing_stored(tmp_path)


def test_an_image_folder_outside_the_data_roots_is_refused_in_the_form():
    at = new_experiment_with(**{"f.dataset.name": "imagefolder", "ui.images_from": "folder", "f.dataset.root": "/"})
    assert "/ is outside the data roots" in errors(at), errors(at)
    assert not any("found" in s.value for s in at.success)  # "/" was never walked
    _refused_in_form(at)


# ---- f. archives too large once expanded --------------------------------------------------------------------
def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_a_zip_that_expands_hugely_is_refused_before_extracting(tmp_path, monkeypatch):
    bomb = _zip({"pets/cats/0.png": bytes(2**20)})  # 1 MB of zeros in about 1 KB
    assert len(bomb) < 5000
    monkeypatch.setenv("KDCORE_MAX_UNZIPPED_MB", "0.5")
    with pytest.raises(UploadError, match=r"bomb.zip expands to 1.0 MB, more than the limit of 0.5 MB"):
        extract_zip(bomb, "bomb.zip", tmp_path / "uploads")
    assert not (tmp_path / "uploads").exists()


def test_a_zip_of_too_many_files_is_refused_before_extracting(tmp_path, monkeypatch):
    many = _zip({f"pets/cats/{i}.png": b"x" for i in range(30)})
    monkeypatch.setenv("KDCORE_MAX_ZIP_FILES", "20")
    with pytest.raises(UploadError, match=r"many.zip holds 30 files, more than the limit of 20"):
        extract_zip(many, "many.zip", tmp_path / "uploads")
    assert not (tmp_path / "uploads").exists()


def test_a_zip_bomb_uploaded_in_the_form_is_refused(monkeypatch):
    monkeypatch.setenv("KDCORE_MAX_UNZIPPED_MB", "0.5")
    at = new_experiment_with(**{"f.dataset.name": "imagefolder", "ui.images_from": "zip"})
    at.file_uploader(key="ui.zip").upload("bomb.zip", _zip({"pets/cats/0.png": bytes(2**20)}),
                                          "application/zip").run()
    no_exceptions(at)
    assert "expands to 1.0 MB" in errors(at) and "nothing was extracted" in errors(at), errors(at)
    _refused_in_form(at)
    assert not (Store().artefact_root / "uploads").exists()


# ---- g. one class, or a class a split would lack --------------------------------------------------------------
@pytest.mark.parametrize("counts, test_counts, message", [
    ({"cats": 10}, None, "holds one class ('cats')"),
    ({"cats": 10, "dogs": 10, "birds": 2}, None, "class 'birds' (2 images) would have no images in the test split"),
    ({"cats": 10, "dogs": 10}, {"cats": 3}, "class 'dogs' has no images under"),
])
def test_a_dataset_with_one_class_or_a_class_missing_from_a_split_is_refused(tmp_path, capsys, db, monkeypatch,
                                                                            counts, test_counts, message):
    monkeypatch.setenv("KDCORE_DATA_ROOT", str(tmp_path / "data"))
    root = tmp_path / "data" / "pets"
    if test_counts is None:
        _image_folder(root, counts)
    else:
        _image_folder(root / "train", counts)
        _image_folder(root / "test", test_counts)
    code, err = _kdcore(capsys, "train", DIGITS, "--set", "dataset.name=imagefolder", "--set",
                        f"dataset.root={root}", "--set", "teacher.options={}", "--set", "dataset.student_fraction=1", db=db)
    assert code == 2 and "dataset.root:" in err and message in err, err
    _nothing_stored(tmp_path)


def test_a_class_too_small_for_the_validation_split_is_named():
    from types import SimpleNamespace

    from kdcore.checks import _split_problems

    scan = SimpleNamespace(root=Path("/data/pets"), class_names=["cats", "dogs"], train_targets=[0] * 40 + [1] * 4,
                           test_targets=None)
    cfg = SimpleNamespace(val_fraction=0.1, student_fraction=1.0)
    (key, message), = _split_problems(scan, cfg)
    assert key == "dataset.val_fraction" and "class 'dogs' (4 images) would have no images in the validation" in message


# ---- h. the sweep form keeps every value when one is wrong ---------------------------------------------------------
def test_a_typo_in_t_values_keeps_the_alpha_values_and_the_group():
    at = new_experiment_with(**{"ui.sweep": True})
    at.text_input(key="ui.sweep_alpha").set_value("0.3")
    at.text_input(key="ui.sweep_group").set_value("grid")
    at.text_input(key="ui.sweep_t").set_value("2, hot").run()
    no_exceptions(at)
    assert "T values: 'hot' is not a number" in errors(at)
    assert at.text_input(key="ui.sweep_alpha").value == "0.3"  # still there, still what was typed
    assert at.text_input(key="ui.sweep_group").value == "grid"
    assert at.button(key="ui.launch").disabled
    at.text_input(key="ui.sweep_t").set_value("2, 4").run()
    no_exceptions(at)
    assert not errors(at) and at.text_input(key="ui.sweep_alpha").value == "0.3"
    assert at.button(key="ui.launch").label == "Queue 2 runs" and not at.button(key="ui.launch").disabled
    assert Store().count_runs() == 0


def test_a_model_that_cannot_be_built_is_said_in_words_not_as_a_python_error():
    from kdcore.models import build_problem, create_model

    with pytest.raises(TypeError) as unknown:
        create_model("resnet18", num_classes=10, in_channels=1, image_size=28, width=96)
    assert build_problem("resnet18", unknown.value) == "resnet18 takes no option 'width': remove it from the options"
    missing = TypeError("Net.__init__() missing 1 required positional argument: 'depth'")
    assert build_problem("mine", missing) == "mine needs the option(s) 'depth'"
    assert "__init__" not in build_problem("mine", missing) and "keyword" not in build_problem("resnet18", unknown.value)
