"""Exports of real trained weights (ONNX, .pt2, the checkpoint), each checked on real test images."""
import subprocess
import sys
import warnings
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from kdcore.config import RunConfig
from kdcore.engine.checkpoint import CheckpointError, save_checkpoint
from kdcore.export import (TOLERANCE, ExportError, check_images, export_checkpoint, export_model,
                           load_checkpoint_model, run_exported, verify)
from kdcore.store import Store

from tests.helpers import cli

ROOT = Path(__file__).resolve().parents[1]


def kdcore(*args, db, timeout=300):
    return subprocess.run([sys.executable, "-m", "kdcore", "--db", db, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real run on digits: a small_cnn teacher (a CNN) and an mlp student, one epoch each."""
    folder = tmp_path_factory.mktemp("export")
    db = f"sqlite:///{folder}/kd.db"
    result = kdcore("train", "examples/digits.yaml", "--set", "teacher.epochs=1", "--set", "train.epochs=1",
                    "--set", "baseline=false", db=db)
    assert result.returncode == 0, result.stderr
    store = Store(db)
    run = store.get_run(1)
    images = check_images(RunConfig.model_validate(run.config).dataset)
    return {"db": db, "dir": store.run_dir(1), "images": images, "folder": folder}


@pytest.mark.parametrize("phase", ["teacher", "student"])  # small_cnn (conv, BN) and mlp
@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_onnx_and_pt2_exports_reproduce_the_trained_model_on_test_images(trained, tmp_path, phase, fmt):
    images = trained["images"]
    result = export_checkpoint(trained["dir"] / f"{phase}.pt", tmp_path / f"m.{fmt}", fmt, images)
    assert result.path.is_file() and result.format == fmt
    assert result.images_checked == len(images) >= 300  # digits has 359 test images
    assert result.max_abs_diff < 1e-4 and result.within()
    assert result.seconds > 0 and isinstance(result.warnings, list)
    model = load_checkpoint_model(trained["dir"] / f"{phase}.pt")
    with torch.inference_mode():
        expected = model(images).argmax(1)
    assert torch.equal(run_exported(result.path, fmt, images).argmax(1), expected)


def test_weights_export_is_the_checkpoint_copied_and_checked(trained, tmp_path):
    result = export_checkpoint(trained["dir"] / "student.pt", tmp_path / "s.pt", "weights", trained["images"])
    assert result.path.read_bytes() == (trained["dir"] / "student.pt").read_bytes()
    assert result.max_abs_diff == 0.0 and result.images_checked == len(trained["images"])


def test_onnx_exported_from_one_image_runs_at_another_batch_size(trained, tmp_path):
    model = load_checkpoint_model(trained["dir"] / "teacher.pt")  # the zoo's small_cnn
    one = trained["images"][:1]
    result = export_model(model, tmp_path / "cnn.onnx", "onnx", one)
    assert result.images_checked == 1 and result.within()
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    seven = trained["images"][:7]
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: seven.numpy()})[0])
    with torch.inference_mode():
        assert (got - model(seven)).abs().max() < 1e-4
    pt2 = export_model(model, tmp_path / "cnn.pt2", "pt2", one)
    assert run_exported(pt2.path, "pt2", seven).shape == (7, 10)


def test_a_corrupted_onnx_file_fails_the_check(trained, tmp_path):
    model = load_checkpoint_model(trained["dir"] / "student.pt")
    result = export_model(model, tmp_path / "s.onnx", "onnx", trained["images"])
    assert result.within()
    graph = onnx.load(str(result.path))
    weights = max(graph.graph.initializer, key=lambda t: int(torch.tensor(t.dims).prod()))  # the largest matrix
    tampered = numpy_helper.to_array(weights).copy()
    tampered.flat[0] += 1.0  # one weight off by 1
    weights.CopyFrom(numpy_helper.from_array(tampered, weights.name))
    onnx.save(graph, str(result.path))
    assert verify(result.path, "onnx", model, trained["images"]) > TOLERANCE


class _Noisy(nn.Module):
    """A real model whose forward warns, as an exporter's fallback or a deprecated op would."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        warnings.warn("this layer is going away", FutureWarning)
        return self.fc(x.flatten(1))


def test_export_warnings_are_returned_not_hidden(trained, tmp_path):
    result = export_model(_Noisy(), tmp_path / "n.pt2", "pt2", trained["images"][:8])
    assert any("FutureWarning: this layer is going away" in w for w in result.warnings)


def test_a_bare_state_dict_and_an_unknown_format_are_refused(trained, tmp_path):
    torch.save(nn.Linear(64, 10).state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="only kdcore checkpoints"):
        export_checkpoint(tmp_path / "bare.pt", tmp_path / "x.onnx", "onnx", trained["images"])
    with pytest.raises(ExportError, match="onnx, pt2, weights"):
        export_checkpoint(trained["dir"] / "student.pt", tmp_path / "x.tflite", "tflite", trained["images"])


def test_cli_export_writes_checks_and_reports(trained, tmp_path):
    out = tmp_path / "student.onnx"
    result = kdcore("export", "1", "--format", "onnx", "-o", str(out), db=trained["db"])
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout and "onnx" in result.stdout and "359 test images" in result.stdout
    assert "max |logit difference|" in result.stdout
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.run(None, {"images": trained["images"][:3].numpy()})[0].shape == (3, 10)
    teacher = kdcore("export", "1", "--format", "pt2", "--phase", "teacher", "-o", str(tmp_path / "t.pt2"),
                     db=trained["db"])
    assert teacher.returncode == 0, teacher.stderr
    assert torch.export.load(str(tmp_path / "t.pt2")).module()(trained["images"][:2]).shape == (2, 10)


def test_cli_export_refuses_a_missing_phase_an_unknown_format_and_a_missing_run(trained, tmp_path, capsys):
    baseline = cli(capsys, "export", "1", "--format", "onnx", "--phase", "baseline", "-o", str(tmp_path / "b.onnx"),
                      db=trained["db"])  # this run trained no baseline
    assert baseline.returncode == 1 and "run 1 has no baseline weights" in baseline.stderr
    assert not (tmp_path / "b.onnx").exists()
    student = trained["dir"] / "student.pt"
    hidden = student.with_name("student.pt.away")
    student.rename(hidden)
    try:
        missing = cli(capsys, "export", "1", "--format", "onnx", "-o", str(tmp_path / "s.onnx"), db=trained["db"])
    finally:
        hidden.rename(student)
    assert missing.returncode == 1 and "run 1 has no student weights" in missing.stderr
    unknown = cli(capsys, "export", "1", "--format", "tflite", "-o", str(tmp_path / "s.tflite"), db=trained["db"])
    assert unknown.returncode == 2 and "unknown format 'tflite'" in unknown.stderr
    absent = cli(capsys, "export", "42", "--format", "onnx", "-o", str(tmp_path / "s.onnx"), db=trained["db"])
    assert absent.returncode == 1 and "no run with id 42" in absent.stderr


def test_cli_export_fails_above_the_tolerance_and_names_it(trained, tmp_path, capsys):
    # A checkpoint whose classifier outputs NaN: its export cannot match, and the command must say so
    model = load_checkpoint_model(trained["dir"] / "student.pt")
    saved = (trained["dir"] / "student.pt").read_bytes()
    try:
        with torch.no_grad():
            list(model.parameters())[-1].fill_(float("nan"))
        save_checkpoint(trained["dir"] / "student.pt", model, arch="mlp", num_classes=10, in_channels=1,
                        image_size=8, options={"hidden": [128, 64]})
        result = cli(capsys, "export", "1", "--format", "onnx", "-o", str(tmp_path / "s.onnx"), db=trained["db"])
    finally:
        (trained["dir"] / "student.pt").write_bytes(saved)
    assert result.returncode == 3 and f"tolerance {TOLERANCE:g}" in result.stderr
