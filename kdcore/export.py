"""Exporting trained weights for use outside kdcore, each artefact checked against the PyTorch model.

Formats:
    onnx     ONNX through torch.onnx.export(dynamo=True), one self-contained file with a dynamic
             batch dimension; run with onnxruntime, no PyTorch needed.
    pt2      a torch.export program (torch.export.save); load with torch.export.load(path).module(),
             no kdcore needed.
    weights  the kdcore checkpoint itself, copied: {arch, num_classes, in_channels, image_size,
             options, state_dict}, read with torch.load(path, weights_only=True).

Every export is loaded back and run on real images; the largest |logit difference| from the
PyTorch model is returned, so a broken export is seen rather than shipped.

int8 (quantize_onnx, check_int8): the checked float32 ONNX is quantized statically by onnxruntime
(QDQ, per-channel int8 weights, uint8 activations whose ranges are calibrated on training images,
never test ones). A logit tolerance means nothing for int8, so its check is accuracy on the test
images against the float32 file, with the drop in points held to a bound.

TorchScript (torch.jit.trace) is no longer offered: it is deprecated in torch 2.14, and .pt2 is
its successor.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
import shutil
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from kdcore.engine.checkpoint import CheckpointError, read_checkpoint
from kdcore.models import create_model
from kdcore.record.folder import PARTIAL_SUFFIX, WEIGHTS_SUFFIX, RunFolder

_SHAPE_KEYS = ("arch", "num_classes", "in_channels", "image_size")
FORMATS = ("onnx", "pt2", "weights")
SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2", "weights": WEIGHTS_SUFFIX}
TOLERANCE = 1e-3  # largest |logit difference| a float32 export may show on the check images
DEFAULT_CHECK_IMAGES = 512
QUANTIZATIONS = ("int8",)
DEFAULT_CALIBRATION_IMAGES = 300  # a few hundred training images set the activation ranges; more change little
DEFAULT_MAX_DROP = 1.0  # test-accuracy points an int8 file may lose against the float32 model
CALIBRATION_SEED = 0  # the calibration images are a fixed random draw: the same file from the same weights


class ExportError(ValueError):
    """An export that cannot be made, with the reason in words."""


@dataclass(frozen=True)
class ExportResult:
    """One exported file and how well it reproduces the PyTorch model."""

    path: Path
    format: str  # one of FORMATS
    max_abs_diff: float  # largest |logit difference| from the PyTorch model over the check images
    images_checked: int
    seconds: float  # export plus check, wall clock
    warnings: list[str] = field(default_factory=list)  # raised during export, as "Category: message"

    def within(self, tolerance: float = TOLERANCE) -> bool:
        return self.max_abs_diff <= tolerance


# ---- loading ---------------------------------------------------------------------------------
def load_checkpoint_model(checkpoint_path: str | Path) -> nn.Module:
    """The model of a kdcore checkpoint, built from its recorded architecture, in eval mode on the CPU.

    Raises:
        CheckpointError: not a kdcore checkpoint (a bare state_dict does not say which architecture
            or input shape it is for), or weights that do not fit their own architecture.
    """
    payload = read_checkpoint(checkpoint_path)
    name = Path(checkpoint_path).name
    missing = [k for k in _SHAPE_KEYS if k not in payload]
    if missing:
        raise CheckpointError(
            f"{name} does not record its {', '.join(missing)}; only kdcore checkpoints can be exported")
    model = create_model(payload["arch"], num_classes=payload["num_classes"], in_channels=payload["in_channels"],
                         image_size=payload["image_size"], **payload.get("options", {}))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(
            f"{name} does not fit its own architecture {payload['arch']!r}: {str(err)[:300]}") from None
    return model.eval()


def check_images(dataset_config: Any, limit: int = DEFAULT_CHECK_IMAGES) -> torch.Tensor:
    """Up to `limit` normalized test images of a run's dataset, (N, C, H, W) float32 on the CPU.

    Args:
        dataset_config: a DatasetConfig, or its dict as stored with a run (run.config["dataset"]).
    """
    test = _load_dataset(dataset_config).test
    return test.images(range(min(limit, len(test))))


def _load_dataset(dataset_config: Any):
    from kdcore.config import DatasetConfig
    from kdcore.data import load_dataset

    if not isinstance(dataset_config, DatasetConfig):
        dataset_config = DatasetConfig.model_validate(dataset_config)
    return load_dataset(dataset_config)


# ---- export ----------------------------------------------------------------------------------
@contextmanager
def _recorded_warnings() -> Iterator[list[str]]:
    # Recorded, not silenced: an exporter's warning (a deprecation, a fallback op) is the user's to read.
    # catch_warnings is process-wide; a warning from another thread meanwhile would be recorded here too.
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield messages
        finally:
            for w in caught:
                text = f"{w.category.__name__}: {w.message}"
                if text not in messages:
                    messages.append(text)


def _example(images: torch.Tensor) -> torch.Tensor:
    # torch.export fixes a dimension of size 1 to 1 ("0/1 specialization"), so a single image would
    # make the batch static; two images keep it dynamic.
    return images[:2] if len(images) >= 2 else images[:1].expand(2, *images.shape[1:]).contiguous()


def _cpu_eval(model: nn.Module) -> nn.Module:
    """The model on the CPU in eval mode, as a copy when it is not so already: the caller's model stays as it was."""
    on_cpu = all(t.device.type == "cpu" for t in itertools.chain(model.parameters(), model.buffers()))
    return model.eval() if on_cpu and not model.training else copy.deepcopy(model).cpu().eval()


def _batch_dim() -> dict[int, Any]:
    return {0: torch.export.Dim("batch")}


def export_model(model: nn.Module, path: str | Path, format: str, images: torch.Tensor) -> ExportResult:
    """Exports `model` as ONNX or .pt2 to `path`, then loads the file back and checks it on `images`.

    Args:
        format: "onnx" or "pt2" ("weights" needs a checkpoint: use export_checkpoint).
        images: (N, C, H, W) float32 images, normalized as in training; the check runs on all of them.

    Returns:
        The file, the largest |logit difference| from `model`, and any warnings the exporter raised.
    """
    if format not in ("onnx", "pt2"):
        raise ExportError(f"export_model writes onnx or pt2, not {format!r}; weights come from export_checkpoint")
    if images.ndim != 4 or len(images) == 0:
        raise ExportError(f"check images must be a non-empty (N, C, H, W) tensor, got shape {tuple(images.shape)}")
    started = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = _cpu_eval(model)
    images = images.detach().cpu().float()
    example = _example(images)
    with _recorded_warnings() as messages:
        if format == "pt2":
            program = torch.export.export(model, (example,), dynamic_shapes=(_batch_dim(),))
            torch.export.save(program, path)
        else:
            # external_data=False: one file to download, not a .onnx plus a .onnx.data beside it
            torch.onnx.export(model, (example,), path, dynamo=True, dynamic_shapes=(_batch_dim(),),
                              input_names=["images"], output_names=["logits"], external_data=False,
                              verbose=False)
    diff = verify(path, format, model, images)
    return ExportResult(path, format, diff, len(images), round(time.perf_counter() - started, 3), messages)


def export_checkpoint(checkpoint_path: str | Path, path: str | Path, format: str,
                      images: torch.Tensor) -> ExportResult:
    """Exports a kdcore checkpoint's model as onnx, pt2 or weights, checked on `images`.

    Args:
        format: one of FORMATS.
        images: (N, C, H, W) normalized images, e.g. check_images(run.config["dataset"]).

    Raises:
        ExportError: an unknown format.
        CheckpointError: the file is not a usable kdcore checkpoint.
    """
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    model = load_checkpoint_model(checkpoint_path)
    if format != "weights":
        return export_model(model, path, format, images)
    started = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.resolve() != Path(checkpoint_path).resolve():
        shutil.copyfile(checkpoint_path, path)
    images = images.detach().cpu().float()
    diff = verify(path, "weights", model, images)
    return ExportResult(path, "weights", diff, len(images), round(time.perf_counter() - started, 3), [])


# ---- checking ---------------------------------------------------------------------------------
def run_exported(path: str | Path, format: str, images: torch.Tensor) -> torch.Tensor:
    """(N, num_classes) logits of an exported file on `images`, computed the way a user would load it."""
    images = images.detach().cpu().float()
    if format == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # share the CPU as PyTorch does
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return torch.from_numpy(session.run(None, {name: images.numpy()})[0])
    with torch.inference_mode():
        if format == "pt2":
            return torch.export.load(str(path)).module()(images)
        if format == "weights":
            return load_checkpoint_model(path)(images)
    raise ExportError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")


def verify(path: str | Path, format: str, model: nn.Module, images: torch.Tensor) -> float:
    """Largest |logit difference| between an exported file and `model` on `images` (inf on a shape mismatch or NaN)."""
    model = _cpu_eval(model)
    images = images.detach().cpu().float()
    with torch.inference_mode():
        expected = model(images)
    got = run_exported(path, format, images)
    if got.shape != expected.shape:
        return float("inf")
    diff = float((got.float() - expected).abs().max())
    return float("inf") if diff != diff else diff  # NaN would compare as within any tolerance's "not above"


# ---- int8 ---------------------------------------------------------------------------------------
class NoCalibrationData(ExportError):
    """Static quantization asked for with no training image to calibrate its activation ranges on."""


@dataclass(frozen=True)
class Int8Result:
    """An int8 ONNX file and how it compares with the float32 ONNX it was quantized from."""

    path: Path
    fp32_bytes: int
    int8_bytes: int
    fp32_accuracy: float  # on the test images, the float32 file run by onnxruntime
    int8_accuracy: float  # on the same images
    test_images: int
    calibration_images: int  # training images the activation ranges were set on
    max_drop: float  # the bound, in accuracy points
    latency: dict[str, dict[int, float]] = field(default_factory=dict)  # {"fp32"|"int8": {batch: median ms}}
    latency_device: str = ""
    latency_threads: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def drop_points(self) -> float:
        """Accuracy lost to int8, in points (negative when int8 scored higher)."""
        return 100 * (self.fp32_accuracy - self.int8_accuracy)

    def within(self) -> bool:
        return self.drop_points <= self.max_drop  # False for NaN

    def record(self, phase: str, forced: bool) -> dict:
        """What is kept beside the file (RunFolder.int8_record), for the report and the dashboard."""
        import onnxruntime

        lat = {f"{kind}_latency_ms_b{batch}": ms for kind, rows in self.latency.items() for batch, ms in rows.items()}
        return {"phase": phase, "format": "onnx", "quantization": "int8, static, QDQ",
                "onnxruntime": onnxruntime.__version__, "calibration_images": self.calibration_images,
                "calibration_split": "train", "test_images": self.test_images,
                "fp32_accuracy": self.fp32_accuracy, "int8_accuracy": self.int8_accuracy,
                "drop_points": self.drop_points, "max_drop": self.max_drop, "within_bound": self.within(),
                "forced": forced, "fp32_bytes": self.fp32_bytes, "int8_bytes": self.int8_bytes, **lat,
                "latency_backend": "onnxruntime", "latency_device": self.latency_device,
                "latency_threads": self.latency_threads, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                     time.gmtime())}


def int8_data(dataset_config: Any, calibration: int = DEFAULT_CALIBRATION_IMAGES) -> tuple[torch.Tensor, Any]:
    """The images an int8 export is calibrated on and the split it is checked on.

    Args:
        dataset_config: a DatasetConfig, or its dict as stored with a run.
        calibration: how many training images to calibrate on (fewer when the split has fewer).

    Returns:
        (calibration images (N, C, H, W), normalized, a fixed random draw from the training split; the test split).

    Raises:
        NoCalibrationData: `calibration` below 1, or a dataset whose training split has no images.
    """
    if calibration < 1:
        raise NoCalibrationData(
            f"no calibration data: {calibration} calibration images asked for; static int8 quantization sets its "
            f"activation ranges on training images (at least 1; {DEFAULT_CALIBRATION_IMAGES} by default)")
    data = _load_dataset(dataset_config)
    if len(data.train) == 0:
        raise NoCalibrationData(f"no calibration data: the {data.name} dataset's training split has no images, "
                                "and int8 is calibrated on training images only, never on test images")
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(CALIBRATION_SEED))
    return data.train.images(order[:calibration]), data.test


def quantize_onnx(fp32_path: str | Path, path: str | Path, calibration: torch.Tensor,
                  batch_size: int = 32) -> list[str]:
    """Writes the float32 ONNX file `fp32_path` as a statically quantized int8 file at `path`.

    QDQ format, int8 weights per output channel, uint8 activations whose ranges are the min and max seen on
    `calibration`. onnxruntime's quant_pre_process (shape inference, graph optimization) runs first; where it
    fails on a graph, the graph is quantized as exported and a warning says so.

    Args:
        calibration: (N, C, H, W) normalized training images, N >= 1.

    Returns:
        Warnings raised meanwhile, as "Category: message".

    Raises:
        NoCalibrationData: no calibration images.
    """
    if calibration.ndim != 4 or len(calibration) == 0:
        raise NoCalibrationData(f"no calibration data: int8 needs (N, C, H, W) training images with N >= 1, got "
                                f"shape {tuple(calibration.shape)}")
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    images = calibration.detach().cpu().float().numpy()

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{name: images[i:i + batch_size]} for i in range(0, len(images), batch_size)])

        def get_next(self):
            return next(self.feeds, None)

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, _recorded_warnings() as messages:
        source = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(fp32_path), str(source))
        except Exception as err:  # an optimizer's gap on one graph should not rule the export out
            messages.append(f"quant_pre_process failed ({type(err).__name__}: {str(err)[:200]}); the graph was "
                            "quantized as exported")
            source = Path(fp32_path)
        quantize_static(str(source), str(path), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return messages


def onnx_accuracy(path: str | Path, split: Any, batch_size: int = 256) -> float:
    """Top-1 accuracy of an ONNX file on every image of a split (a kdcore.data Split), in batches."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    right = 0
    for start in range(0, len(split), batch_size):
        idx = range(start, min(start + batch_size, len(split)))
        logits = session.run(None, {name: split.images(idx).numpy()})[0]  # (B, num_classes)
        right += int((torch.from_numpy(logits).argmax(1) == split.y[start:idx.stop]).sum())
    return right / len(split)


def check_int8(fp32_path: str | Path, int8_path: str | Path, test: Any, calibration_images: int,
               max_drop: float = DEFAULT_MAX_DROP) -> Int8Result:
    """Accuracy of the int8 file and of the float32 file it came from on every test image, and their sizes.

    Args:
        test: the run's test split (a kdcore.data Split).
        calibration_images: how many images the file was calibrated on, for the record.

    Raises:
        ExportError: a dataset with no test images, so nothing to check on.
    """
    if len(test) == 0:
        raise ExportError("the dataset has no test images: an int8 file is checked on them")
    return Int8Result(Path(int8_path), Path(fp32_path).stat().st_size, Path(int8_path).stat().st_size,
                      onnx_accuracy(fp32_path, test), onnx_accuracy(int8_path, test), len(test), calibration_images,
                      max_drop)


def with_latency(result: Int8Result, fp32_path: str | Path, input_shape: tuple[int, ...],
                 batch_sizes: tuple[int, ...] = (1, 64)) -> Int8Result:
    """`result` with both files timed by onnxruntime on this CPU (kdcore.latency.onnx_file_latency)."""
    from kdcore.latency import onnx_file_latency

    latency, device, threads = {}, "", 0
    for kind, path in (("fp32", fp32_path), ("int8", result.path)):
        rows = onnx_file_latency(path, input_shape, batch_sizes)
        latency[kind] = {row["batch"]: row["median_ms"] for row in rows}
        device, threads = rows[0]["device"], rows[0]["threads"]
    return dataclasses.replace(result, latency=latency, latency_device=device, latency_threads=threads)


def keep_int8(result: Int8Result, folder: RunFolder, phase: str, *, forced: bool) -> Path:
    """Moves the int8 file into the run's folder and writes its record beside it; returns the kept file.

    Each file is written whole under a temporary name, then renamed over any earlier one.
    """
    kept, record = folder.int8(phase), folder.int8_record(phase)
    partial = kept.with_name(kept.name + PARTIAL_SUFFIX)
    shutil.copyfile(result.path, partial)
    os.replace(partial, kept)
    partial = record.with_name(record.name + PARTIAL_SUFFIX)
    partial.write_text(json.dumps(result.record(phase, forced), indent=1))
    os.replace(partial, record)
    return kept


def read_int8_record(folder: RunFolder, phase: str = "student") -> dict | None:
    """The record of the phase's kept int8 file, or None when there is none (or it cannot be read)."""
    path = folder.int8_record(phase)
    if not path.is_file() or not folder.int8(phase).is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
