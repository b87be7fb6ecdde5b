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

TorchScript (torch.jit.trace) is no longer offered: it is deprecated in torch 2.14, and .pt2 is
its successor.
"""
from __future__ import annotations

import copy
import itertools
import shutil
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
from kdcore.record.folder import WEIGHTS_SUFFIX

_SHAPE_KEYS = ("arch", "num_classes", "in_channels", "image_size")
FORMATS = ("onnx", "pt2", "weights")
SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2", "weights": WEIGHTS_SUFFIX}
TOLERANCE = 1e-3  # largest |logit difference| a float32 export may show on the check images
DEFAULT_CHECK_IMAGES = 512


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
    from kdcore.config import DatasetConfig
    from kdcore.data import load_dataset

    if not isinstance(dataset_config, DatasetConfig):
        dataset_config = DatasetConfig.model_validate(dataset_config)
    test = load_dataset(dataset_config).test
    return test.images(range(min(limit, len(test))))


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
