"""int8 students: `kdcore export ID --format onnx --quantize int8` on a real digits run, calibrated on training
images, checked on the test images against the float32 file, refused above --max-drop, shown in the report, on
the Downloads view and on the frontier."""
import sys
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the app's own packages (ui), as `streamlit run` would see them

import kdcore.export as export  # noqa: E402
from kdcore import charts  # noqa: E402
from kdcore.analysis import frontier_points  # noqa: E402
from kdcore.cli import build_parser, main  # noqa: E402
from kdcore.configure import build_config  # noqa: E402
from kdcore.data import load_dataset  # noqa: E402
from kdcore.jobs import run_here  # noqa: E402
from kdcore.record import RunFolder  # noqa: E402
from kdcore.report import build_report  # noqa: E402
from kdcore.store import Store  # noqa: E402
from tests.helpers import cli, no_exceptions, open_page, select_first_run  # noqa: E402

DIGITS = {"name": "int8 digits", "dataset": {"name": "digits", "val_fraction": 0.15},
          "teacher": {"arch": "tiny_cnn", "epochs": 2}, "student": {"arch": "mlp", "options": {"hidden": [64]}},
          "train": {"epochs": 15, "batch_size": 64, "optimizer": "adam", "lr": 0.003, "seed": 0, "device": "cpu"}}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """One real digits run (tiny_cnn teacher, mlp student and baseline), trained here in seconds."""
    url = f"sqlite:///{tmp_path_factory.mktemp('int8')}/kdcore.db"
    store = Store(url)
    config = build_config(DIGITS)
    run_id, status = run_here(store, config)
    assert status == "completed", store.get_run(run_id).error
    return {"db": url, "id": run_id, "folder": RunFolder(store.run_dir(run_id)), "data": load_dataset(config.dataset)}


@pytest.fixture(scope="module")
def exported(digits_run, tmp_path_factory):
    """The student exported as int8 once, with -o; the calibration images it was given, as quantize_onnx saw them."""
    seen, quantize = [], export.quantize_onnx
    out = tmp_path_factory.mktemp("int8_out") / "student-int8.onnx"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(export, "quantize_onnx", lambda fp32, path, calibration: seen.append(calibration) or
                   quantize(fp32, path, calibration))
        code = main(["--db", digits_run["db"], "export", str(digits_run["id"]), "--format", "onnx",
                     "--quantize", "int8", "-o", str(out)])
    assert code == 0
    return {"out": out, "calibration": seen[0], **digits_run}


def _rows(images: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in images.flatten(1)}


def test_an_int8_student_is_kept_smaller_and_within_the_drop_bound_on_the_test_images(exported):
    folder, test = exported["folder"], exported["data"].test
    kept, record = folder.int8("student"), export.read_int8_record(folder)
    assert kept.is_file() and exported["out"].read_bytes() == kept.read_bytes()
    assert record["int8_bytes"] == kept.stat().st_size < record["fp32_bytes"] / 2  # int8 weights: about a quarter
    assert record["test_images"] == len(test) == 359
    session = ort.InferenceSession(str(kept), providers=["CPUExecutionProvider"])
    logits = torch.from_numpy(session.run(None, {"images": test.images(range(len(test))).numpy()})[0])
    assert record["int8_accuracy"] == pytest.approx((logits.argmax(1) == test.y).float().mean().item())
    assert record["fp32_accuracy"] > 0.5  # a student that learned something: the drop means something
    assert record["drop_points"] <= record["max_drop"] == 1.0 and record["within_bound"] and not record["forced"]
    for kind in ("fp32", "int8"):
        assert record[f"{kind}_latency_ms_b1"] > 0 and record[f"{kind}_latency_ms_b64"] > 0
    graph_ops = {node.op_type for node in __import__("onnx").load(str(kept)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= graph_ops  # QDQ format


def test_int8_is_calibrated_on_training_images_never_test_ones(exported):
    calibration, data = exported["calibration"], exported["data"]
    assert len(calibration) == export.DEFAULT_CALIBRATION_IMAGES
    assert _rows(calibration) <= _rows(data.train.images(range(len(data.train))))
    assert not _rows(calibration) & (_rows(data.test.images(range(len(data.test)))) - _rows(data.train.x))


def test_the_report_shows_the_int8_row_next_to_teacher_baseline_and_student(exported):
    record = export.read_int8_record(exported["folder"])
    html = build_report(Store(exported["db"]), exported["id"], latency=False)
    assert "student, int8" in html and "mlp (int8 ONNX)" in html and "The student as int8" in html
    assert f"{record['drop_points']:.2f} pts" in html and f"{record['int8_bytes'] / 2**20:.3g}" in html
    assert f"{record['int8_latency_ms_b1']:.3g} ms (onnxruntime)" in html
    assert f"{record['int8_latency_ms_b64']:.3g} ms" in html
    assert "teacher" in html and "baseline" in html


def test_the_downloads_view_offers_the_int8_student_with_its_check(exported, monkeypatch):
    monkeypatch.setenv("KDCORE_DB_URL", exported["db"])
    monkeypatch.setenv("KDCORE_LOCAL_WORKERS", "0")
    at = select_first_run(open_page("pages/runs.py"))
    at.radio(key="runs_detail_view").set_value("Downloads").run()
    no_exceptions(at)
    assert "Student as int8 ONNX" in [b.label for b in at.get("download_button")]
    table = next(d.value for d in at.dataframe if "drop vs float32" in d.value.columns)
    record = export.read_int8_record(exported["folder"])
    assert list(table["file"]) == ["student, fp32 ONNX", "student, int8 ONNX"]
    assert table["drop vs float32"].iloc[1] == f"{record['drop_points']:.2f} pts"
    assert "latency, batch 1" in table.columns and "latency, batch 64" in table.columns
    assert any("calibrated on 300 training images" in c.value for c in at.caption)


def test_the_frontier_plots_the_int8_student_as_its_own_series(exported, monkeypatch):
    run = Store(exported["db"]).get_run(exported["id"])
    points = frontier_points([run], {run.id: export.read_int8_record(exported["folder"])})
    int8 = points[points["role"] == "int8 student"].iloc[0]
    student = points[points["role"] == "student"].iloc[0]
    assert int8["params"] == student["params"] and int8["size_mb"] < student["size_mb"]
    assert int8["latency_ms_b1"] != int8["latency_ms_b1"]  # onnxruntime's time is not put on PyTorch's axis
    fig = charts.pareto_frontier(points, "size_mb", "digits")
    series = {t.name: t for t in fig.data}
    assert list(series["int8 student (ONNX)"].x) == [int8["size_mb"]]
    assert series["int8 student (ONNX)"].marker.symbol == "circle-open"
    monkeypatch.setenv("KDCORE_DB_URL", exported["db"])
    at = open_page("pages/runs.py")
    at.session_state["runs_tab"] = "Frontier"  # only the open tab is built
    at.run()
    at.selectbox(key="runs_pareto_x").set_value("size_mb").run()
    no_exceptions(at)
    assert any("int8 student (ONNX)" in c.proto.spec for c in at.get("plotly_chart"))


def test_a_bad_calibration_is_refused_by_max_drop_and_kept_only_with_force(exported, monkeypatch, capsys, tmp_path):
    """Calibrated on images scaled by 1e-3, the activation ranges are a thousand times too narrow: int8 clips."""
    real = export.int8_data
    monkeypatch.setattr(export, "int8_data", lambda config, n: (lambda c, t: (c * 1e-3, t))(*real(config, n)))
    folder, db, run = exported["folder"], exported["db"], str(exported["id"])
    before = folder.int8("student").read_bytes(), folder.int8_record("student").read_text()
    refused = cli(capsys, "export", run, "--format", "onnx", "--quantize", "int8", "-o", str(tmp_path / "bad.onnx"),
                  db=db)
    assert refused.returncode == 2
    line = refused.stderr.strip()
    assert "\n" not in line and "int8 loses" in line and "accuracy points" in line and "--max-drop 1" in line
    assert not (tmp_path / "bad.onnx").exists()
    assert (folder.int8("student").read_bytes(), folder.int8_record("student").read_text()) == before
    # the baseline, so the student's good file stays for the other tests
    forced = cli(capsys, "export", run, "--format", "onnx", "--quantize", "int8", "--phase", "baseline", "--force",
                 db=db)
    assert forced.returncode == 0, forced.stderr
    record = export.read_int8_record(folder, "baseline")
    assert record["forced"] and not record["within_bound"] and record["drop_points"] > 1.0
    assert "ABOVE" in forced.stdout
    html = build_report(Store(db), exported["id"], latency=False)
    assert "The baseline as int8" in html and "kept only because --force was given" in html


def test_quantizing_with_no_calibration_data_is_one_clear_error(digits_run, monkeypatch, capsys, tmp_path):
    db, run = digits_run["db"], str(digits_run["id"])
    zero = cli(capsys, "export", run, "--format", "onnx", "--quantize", "int8", "--calibration-images", "0",
               "-o", str(tmp_path / "s.onnx"), db=db)
    assert zero.returncode == 2 and zero.stderr.count("\n") == 1
    assert zero.stderr.startswith("error: no calibration data: 0 calibration images")
    data = export._load_dataset(Store(db).get_run(digits_run["id"]).config["dataset"])
    data.train = data.train.subset([])  # a dataset whose training split holds no image
    monkeypatch.setattr(export, "_load_dataset", lambda config: data)
    empty = cli(capsys, "export", run, "--format", "onnx", "--quantize", "int8", db=db)
    assert empty.returncode == 2 and "training split has no images" in empty.stderr
    assert not (tmp_path / "s.onnx").exists()
    with pytest.raises(export.NoCalibrationData, match="no calibration data"):
        export.quantize_onnx(tmp_path / "any.onnx", tmp_path / "int8.onnx", torch.zeros(0, 1, 8, 8))


def test_int8_options_are_refused_before_any_work(digits_run, capsys):
    db, run = digits_run["db"], str(digits_run["id"])
    pt2 = cli(capsys, "export", run, "--format", "pt2", "--quantize", "int8", db=db)
    assert pt2.returncode == 2 and "use --format onnx" in pt2.stderr
    int4 = cli(capsys, "export", run, "--format", "onnx", "--quantize", "int4", db=db)
    assert int4.returncode == 2 and "unknown quantization 'int4'" in int4.stderr
    negative = cli(capsys, "export", run, "--format", "onnx", "--quantize", "int8", "--max-drop", "-1", db=db)
    assert negative.returncode == 2 and "--max-drop" in negative.stderr
    no_output = cli(capsys, "export", run, "--format", "onnx", db=db)
    assert no_output.returncode == 2 and "-o FILE is required" in no_output.stderr
    defaults = build_parser().parse_args(["export", "1", "--format", "onnx"])
    assert (defaults.calibration_images, defaults.max_drop) == (export.DEFAULT_CALIBRATION_IMAGES,
                                                                export.DEFAULT_MAX_DROP)


def test_an_output_that_cannot_be_written_is_one_line_and_the_int8_file_stays_kept(exported, capsys, tmp_path):
    (tmp_path / "a file").write_text("not a folder")
    out = tmp_path / "a file" / "student.onnx"
    result = cli(capsys, "export", str(exported["id"]), "--format", "onnx", "--quantize", "int8", "-o", str(out),
                 db=exported["db"])
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "cannot be copied to" in result.stderr and exported["folder"].int8("student").is_file()
