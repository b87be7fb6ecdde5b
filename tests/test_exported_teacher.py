"""A teacher from a file that carries its own graph (teacher.source exported): a run's own student, exported as
.pt2 and as ONNX by `kdcore export`, teaches the next run; a file that is none, does not fit the dataset, or a
method that reads features, is refused in one line with exit 2 and nothing stored.

One tiny digits run is trained and exported once for the whole module."""
import io
import pathlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from kdcore.cli import main
from kdcore.config import ConfigError
from kdcore.configure import build_config
from kdcore.store import Store
from tests.helpers import open_page

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "teacher.epochs=1", "--set", "teacher.options={width: 16}", "--set", "train.epochs=1",
        "--set", "baseline=false", "--set", "train.device=cpu"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(store URL, {format: the first run's student exported in it}, the first run)."""
    folder = tmp_path_factory.mktemp("exported")
    db = f"sqlite:///{folder}/kd.db"
    assert main(["--db", db, "train", "examples/digits.yaml", *TINY]) == 0
    files = {}
    for fmt in ("pt2", "onnx"):
        files[fmt] = folder / f"student.{fmt}"
        assert main(["--db", db, "export", "1", "--format", fmt, "-o", str(files[fmt])]) == 0
    return db, files, Store(db).get_run(1)


def _with_teacher(db: str, path: Path, *extra: str) -> int:
    return main(["--db", db, "train", "examples/digits.yaml", *TINY, "--set", "teacher.source=exported",
                 "--set", f"teacher.checkpoint={path}", *extra])


def _refused(capsys, db: str, path: Path, *extra: str) -> str:
    """The one line `kdcore train` refuses with, once it has exited 2 and stored no run."""
    before = len(Store(db).list_runs())
    capsys.readouterr()
    assert _with_teacher(db, path, *extra) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert len(Store(db).list_runs()) == before
    return lines[0]


@pytest.fixture(scope="module")
def taught(exported):
    """{format: the run taught by the first run's student exported in it}."""
    db, files, _ = exported
    runs = {}
    for fmt in ("pt2", "onnx"):
        assert _with_teacher(db, files[fmt]) == 0
        runs[fmt] = Store(db).list_runs()[0]
    return runs


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_a_runs_exported_student_teaches_the_next_run_with_its_own_test_accuracy(exported, taught, fmt):
    _, _, first = exported
    run = taught[fmt]
    s = run.summary
    assert run.status == "completed" and run.teacher_arch == f"exported:student.{fmt}"
    assert s["teacher_test_acc"] == pytest.approx(first.summary["student_test_acc"], abs=1e-6)
    assert s["teacher_params"] == first.summary["student_params"]  # the program's parameters, the ONNX initializers
    assert s["teachers"][0]["arch"] == f"exported:student.{fmt}" and s["teachers"][0]["source"] == "exported"
    assert "student_test_acc" in s and s["compression"] == pytest.approx(s["teacher_params"] / s["student_params"])
    assert ("teacher_flops" in s) == (fmt == "pt2")  # onnxruntime's work is not counted by PyTorch
    assert run.config["teacher"]["source"] == "exported" and run.config["teacher"]["options"] == {}


def test_a_run_with_an_onnx_teacher_shows_in_the_report_and_the_runs_page(exported, taught, tmp_path, monkeypatch):
    db, _, _ = exported
    run = taught["onnx"]  # no teacher FLOPs, no flops_ratio
    html = tmp_path / "report.html"
    assert main(["--db", db, "report", str(run.id), "-o", str(html)]) == 0
    assert "exported:student.onnx" in html.read_text()
    monkeypatch.setenv("KDCORE_DB_URL", db)
    monkeypatch.setenv("KDCORE_LOCAL_WORKERS", "0")
    at = open_page("pages/runs.py")  # fails on any exception shown
    assert any("exported:student.onnx" in frame.value.to_string() for frame in at.dataframe)


def test_a_feature_method_is_refused_with_an_exported_teacher(exported, capsys):
    db, files, _ = exported
    line = _refused(capsys, db, files["pt2"], "--set", "distill.method=fitnets")
    assert "distill.method: fitnets reads the teacher's features" in line and "gives only its logits" in line
    assert "soft" in line and "dkd" in line  # what to choose instead


def test_an_exported_teacher_is_never_fine_tuned(exported, capsys):
    db, files, _ = exported
    line = _refused(capsys, db, files["onnx"], "--set", "teacher.finetune_epochs=2")
    assert "an exported teacher is frozen: it is never fine-tuned" in line


def test_a_text_file_named_pt2_is_refused_in_one_line_without_torchs_traceback(exported, tmp_path):
    db, _, _ = exported
    fake = tmp_path / "teacher.pt2"
    fake.write_text("not a model at all")
    before = len(Store(db).list_runs())
    # a subprocess: torch.export.load logs a traceback of its own to the real stderr before it raises
    result = subprocess.run([sys.executable, "-m", "kdcore", "--db", db, "train", "examples/digits.yaml", *TINY,
                             "--set", "teacher.source=exported", "--set", f"teacher.checkpoint={fake}"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: invalid config: teacher.checkpoint: teacher.pt2 is not a torch.export program (.pt2): choose the "
        "file torch.export.save (or kdcore export --format pt2) wrote"]
    assert len(Store(db).list_runs()) == before


def test_a_pt2_that_would_unpickle_a_python_object_is_refused_before_torch_loads_it(exported, capsys, tmp_path):
    """torch.export.load falls back to torch.load(weights_only=False) for a program's sample inputs: a planted
    object there (here a harmless PosixPath; it could be one that runs code) must not be unpickled."""
    db, files, _ = exported
    planted = io.BytesIO()
    torch.save(((pathlib.PosixPath("/etc"),), {}), planted)
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(files["pt2"]) as source, zipfile.ZipFile(evil, "w") as out:
        for info in source.infolist():
            out.writestr(info, planted.getvalue() if "sample_inputs" in info.filename else source.read(info))
    line = _refused(capsys, db, evil)
    assert "teacher.checkpoint: evil.pt2 was refused: its part student/data/sample_inputs/model.pt holds a " \
           "Python object besides tensors that could run code when loaded" in line


def test_a_torch_checkpoint_renamed_pt2_is_refused_as_no_program(exported, capsys, tmp_path):
    db, _, _ = exported
    renamed = tmp_path / "weights.pt2"
    torch.save({"w": torch.zeros(2)}, renamed)
    line = _refused(capsys, db, renamed)
    assert "teacher.checkpoint: weights.pt2 is not a torch.export program (.pt2), or it is damaged" in line


def test_a_text_file_named_onnx_is_refused(exported, capsys, tmp_path):
    db, _, _ = exported
    fake = tmp_path / "teacher.onnx"
    fake.write_bytes(b"\x00\x01 not protobuf")
    line = _refused(capsys, db, fake)
    assert "teacher.checkpoint: teacher.onnx is not an ONNX model" in line


def test_an_onnx_teacher_with_its_weights_in_separate_files_is_refused(exported, capsys, tmp_path):
    import onnx

    db, files, _ = exported
    split = tmp_path / "split.onnx"
    onnx.save_model(onnx.load(str(files["onnx"])), str(split), save_as_external_data=True, size_threshold=0)
    line = _refused(capsys, db, split)
    assert "teacher.checkpoint: split.onnx keeps its weights in separate files (ONNX external data)" in line


def _planted(folder: Path, fmt: str, in_channels: int, classes: int, batch: int = 2) -> Path:
    """A tiny model of this input and class count, exported as a user would, beside kdcore; a dynamic batch
    dimension unless `batch` is 1 (torch.export then fixes it)."""
    model = nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, classes)).eval()
    example = (torch.zeros(batch, in_channels, 8, 8),)
    dynamic = ({0: torch.export.Dim("batch")},) if batch > 1 else None
    path = folder / f"c{in_channels}_k{classes}_b{batch}.{fmt}"
    if fmt == "pt2":
        torch.export.save(torch.export.export(model, example, dynamic_shapes=dynamic), path)
    else:
        torch.onnx.export(model, example, str(path), dynamo=True, dynamic_shapes=dynamic, external_data=False,
                          verbose=False)
    return path


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_an_exported_teacher_of_another_class_count_is_refused(exported, capsys, tmp_path, fmt):
    db, _, _ = exported
    line = _refused(capsys, db, _planted(tmp_path, fmt, 1, 3))
    assert f"teacher.checkpoint: c1_k3_b2.{fmt} gives 3 class scores, but digits has 10 classes" in line


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_an_exported_teacher_for_another_input_shape_is_refused(exported, capsys, tmp_path, fmt):
    db, _, _ = exported
    line = _refused(capsys, db, _planted(tmp_path, fmt, 3, 10))
    assert f"teacher.checkpoint: c3_k10_b2.{fmt} takes inputs of shape 3×8×8, but digits has 1×8×8 images" in line


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_an_exported_teacher_with_a_fixed_batch_size_is_refused(exported, capsys, tmp_path, fmt):
    db, _, _ = exported
    line = _refused(capsys, db, _planted(tmp_path, fmt, 1, 10, batch=1))
    assert f"teacher.checkpoint: c1_k10_b1.{fmt} was exported for batches of exactly 1 image(s)" in line


def test_an_exported_teacher_needs_a_pt2_or_onnx_path():
    with pytest.raises(ConfigError, match="teacher.checkpoint is required when teacher.source is 'exported'"):
        build_config({"teacher": {"source": "exported"}})
    with pytest.raises(ConfigError, match="'teacher.pt' is not a .pt2 or .onnx file"):
        build_config({"teacher": {"source": "exported", "checkpoint": "teacher.pt"}})
    with pytest.raises(ConfigError, match="set teacher.source to exported"):
        build_config({"teacher": {"arch": "exported:teacher.pt2"}})


def test_new_experiment_offers_an_exported_teacher_and_refuses_a_file_that_is_none(exported, tmp_path, monkeypatch):
    from tests.helpers import errors, new_experiment_with

    _, files, _ = exported
    monkeypatch.setenv("KDCORE_DB_URL", f"sqlite:///{tmp_path}/kd.db")
    monkeypatch.setenv("KDCORE_LOCAL_WORKERS", "0")
    digits = {"f.dataset.name": "digits", "f.teacher.source": "exported"}
    at = new_experiment_with(**digits)
    assert at.radio(key="f.teacher.source").value == "exported"  # offered as "An exported file"
    assert "upload the teacher's .pt2 or .onnx file" in errors(at)
    at = new_experiment_with(**digits, **{"ui.uploaded.ui.exported": str(files["onnx"])})  # kept from an upload
    assert not errors(at) and not at.button(key="ui.launch").disabled
    fake = tmp_path / "teacher.onnx"
    fake.write_text("not a model")
    at = new_experiment_with(**digits, **{"ui.uploaded.ui.exported": str(fake)})
    assert "teacher.onnx" in errors(at) and at.button(key="ui.launch").disabled
