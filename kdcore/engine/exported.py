"""A teacher from a file that carries its own graph: a torch.export program (.pt2) or an ONNX model.

Such a teacher has no kdcore architecture and is never trained: it serves logits, for the methods
that read nothing else. Its input shape and class count are checked against the dataset on one
zero batch before any work; a file that is no such model, or does not fit, is refused in one
sentence (CheckpointError, as a bad checkpoint is).
"""
from __future__ import annotations

import copy
import io
import json
import logging
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from torch import Tensor, nn

from kdcore.config import EXPORTED_SUFFIXES as SUFFIXES
from kdcore.engine.checkpoint import CheckpointError


class ExportedTeacher(nn.Module):
    """A frozen teacher read from a file: train() and eval() change nothing, as its graph was fixed when exported.

    Attributes:
        file_params: the parameter count the file holds (the program's parameters, the ONNX initializers).
        input_shape: the input's shape the file declares, batch first, with None for a dimension it leaves free.
    """

    file_params: int
    input_shape: tuple[Optional[int], ...]

    def train(self, mode: bool = True) -> "ExportedTeacher":
        self.training = mode  # not passed on: torch.export's modules refuse train() and eval()
        return self


class Pt2Teacher(ExportedTeacher):
    def __init__(self, program: nn.Module, file_params: int, input_shape: tuple[Optional[int], ...]):
        super().__init__()
        self.program = program.requires_grad_(False)
        self.file_params, self.input_shape = file_params, input_shape

    def forward(self, x: Tensor) -> Tensor:
        return self.program(x)


class OnnxTeacher(ExportedTeacher):
    """Runs an onnxruntime session; tensors cross to the host and back, which the teacher-logit cache pays once."""

    def __init__(self, session, file_params: int, input_shape: tuple[Optional[int], ...]):
        super().__init__()
        self._session, self._input = session, session.get_inputs()[0].name
        self.file_params, self.input_shape = file_params, input_shape

    def forward(self, x: Tensor) -> Tensor:
        out = self._session.run(None, {self._input: x.detach().float().contiguous().cpu().numpy()})[0]
        return torch.from_numpy(np.asarray(out)).to(x.device)

    def __deepcopy__(self, memo: dict) -> "OnnxTeacher":
        # an InferenceSession cannot be copied, and needs not be: it is read-only and run() is thread-safe
        twin = OnnxTeacher.__new__(OnnxTeacher)
        memo[id(self)] = twin
        for key, value in self.__dict__.items():
            twin.__dict__[key] = value if key == "_session" else copy.deepcopy(value, memo)
        return twin


# ---- reading ---------------------------------------------------------------------------------
@contextmanager
def _quiet_torch_export() -> Iterator[None]:
    # torch.export.load logs a whole traceback before it raises on a bad file; the refusal says it in one line
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _not_one(path: Path, what: str, hint: str) -> CheckpointError:
    return CheckpointError(f"{path.name} is not {what}: {hint}")


_TEXT_PARTS = {"archive_format", "archive_version", "version", "byteorder", "serialization_id"}


def _pickled_parts(archive: zipfile.ZipFile) -> list[str]:
    """The parts of a .pt2 that torch.export.load unpickles: all but its JSON, its few text files, its extra
    files (read as text) and the raw tensor payloads its weights and constants configs name."""
    raw = set()
    for name in archive.namelist():
        if name.endswith(("_weights_config.json", "_constants_config.json")):
            folder = name.rsplit("/", 1)[0]
            for entry in json.loads(archive.read(name)).get("config", {}).values():
                if not entry.get("use_pickle") and entry.get("path_name", "").startswith(("weight_", "tensor_")):
                    raw.add(f"{folder}/{entry['path_name']}")
    return [name for name in archive.namelist()
            if name not in raw and not name.endswith(("/", ".json")) and "/extra/" not in f"/{name}"
            and name.rsplit("/", 1)[-1] not in _TEXT_PARTS]


def _code_refused(path: Path) -> None:
    """Refuses a .pt2 with a pickled Python object besides tensors: torch.export.load falls back to
    torch.load(weights_only=False) for its sample inputs and pickled payloads, which could run code."""
    try:
        with zipfile.ZipFile(path) as archive:
            formats = [archive.read(n) for n in archive.namelist() if n.rsplit("/", 1)[-1] == "archive_format"]
            if b"pt2" not in [f.strip() for f in formats]:  # another zip: a torch.save checkpoint renamed
                raise KeyError("archive_format")
            for part in _pickled_parts(archive):
                try:
                    torch.load(io.BytesIO(archive.read(part)), map_location="cpu", weights_only=True)
                except Exception:  # noqa: BLE001  any object the safe unpickler refuses, or no pickle at all
                    raise CheckpointError(
                        f"{path.name} was refused: its part {part} holds a Python object besides tensors that could "
                        "run code when loaded; export the model again with torch.export.save") from None
    except (zipfile.BadZipFile, json.JSONDecodeError, KeyError, AttributeError):
        raise _not_one(path, "a torch.export program (.pt2), or it is damaged",
                       "choose the file torch.export.save (or kdcore export --format pt2) wrote") from None


def _read_pt2(path: Path, device: torch.device) -> Pt2Teacher:
    hint = "choose the file torch.export.save (or kdcore export --format pt2) wrote"
    if not zipfile.is_zipfile(path):  # a .pt2 is a zip archive; anything else would make torch log a traceback
        raise _not_one(path, "a torch.export program (.pt2)", hint)
    _code_refused(path)
    try:
        with _quiet_torch_export():
            program = torch.export.load(str(path))
        if device.type != "cpu":  # the pass also moves the device arguments written into the graph
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, device)
        module = program.module()
    except Exception:  # noqa: BLE001  torch raises anything from KeyError to its own asserts on a foreign archive
        raise _not_one(path, "a torch.export program (.pt2), or it is damaged", hint) from None
    users = [spec.arg.name for spec in program.graph_signature.input_specs if spec.kind.name == "USER_INPUT"]
    if len(users) != 1:
        raise CheckpointError(f"{path.name} takes {len(users)} inputs; a teacher takes one batch of images")
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == users[0])
    value = node.meta.get("val")
    shape = tuple(d if isinstance(d, int) else None for d in value.shape) if value is not None else ()
    params = sum(program.state_dict[name].numel() for name in program.graph_signature.parameters)
    return Pt2Teacher(module, params, shape)


def _onnx_session(path: Path, device: torch.device):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3  # errors only: a refusal is ours to word
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
    return ort.InferenceSession(str(path), options, providers=providers)


def _read_onnx(path: Path, device: torch.device) -> OnnxTeacher:
    import onnx

    hint = "choose the file torch.onnx.export (or kdcore export --format onnx) wrote"
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001  protobuf's errors name internals, not the file
        raise _not_one(path, "an ONNX model, or it is damaged", hint) from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        # besides an upload being one file, external data names paths of its own to read
        raise CheckpointError(f"{path.name} keeps its weights in separate files (ONNX external data); export it as "
                              "one file (torch.onnx.export with external_data=False)")
    try:
        session = _onnx_session(path, device)
    except Exception:  # noqa: BLE001  onnxruntime's errors name internals, not the file
        raise _not_one(path, "an ONNX model, or it is damaged", hint) from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise CheckpointError(f"{path.name} takes {len(inputs)} inputs; a teacher takes one batch of images")
    shape = tuple(d if isinstance(d, int) else None for d in inputs[0].shape)
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)
    params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer if t.data_type in floats)
    return OnnxTeacher(session, params, shape)


def read_exported(path: str | Path, device: torch.device = torch.device("cpu")) -> ExportedTeacher:
    """The file's model on `device`, frozen and in eval mode; CheckpointError in words when it is none.

    Args:
        device: where the teacher runs; on CUDA an ONNX model runs on onnxruntime's CUDA provider where it has one.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"exported teacher not found: {path}")
    if path.suffix.lower() not in SUFFIXES:
        raise CheckpointError(f"{path.name} is not a .pt2 or .onnx file; an exported teacher is one of those")
    model = _read_pt2(path, device) if path.suffix.lower() == ".pt2" else _read_onnx(path, device)
    return model.eval()


def _images(shape: tuple) -> str:
    return "×".join("?" if d is None else str(d) for d in shape)


def fit_problem(model: ExportedTeacher, name: str, *, num_classes: Optional[int], in_channels: int,
                image_size: int, dataset: str, device: torch.device = torch.device("cpu")) -> Optional[str]:
    """Why the teacher cannot serve this dataset, found on one zero batch of its shape; None when it fits."""
    wanted = (in_channels, image_size, image_size)
    batch, declared = model.input_shape[:1], model.input_shape[1:]
    if len(declared) != 3 or any(d is not None and d != w for d, w in zip(declared, wanted)):
        return (f"{name} takes inputs of shape {_images(declared) or 'unknown'}, but {dataset} has "
                f"{_images(wanted)} images")
    if batch and batch[0] is not None:  # the run evaluates batches of 256, and times batches of 1 and 64
        return (f"{name} was exported for batches of exactly {batch[0]} image(s); export it with a dynamic batch "
                "dimension (torch.export.Dim on dimension 0, as kdcore export does)")
    try:
        with torch.inference_mode():
            logits = model(torch.zeros(2, *wanted, device=device))
    except Exception as err:  # noqa: BLE001  whatever the graph raises on these images
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        return f"{name} cannot run on {dataset}'s {_images(wanted)} images: {first}"
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != 2:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        return f"{name} gives {got} for a batch of 2 images, not one row of class scores per image"
    if num_classes is not None and logits.shape[1] != num_classes:
        return f"{name} gives {logits.shape[1]} class scores, but {dataset} has {num_classes} classes"
    return None


def load_exported_teacher(path: str | Path, device: torch.device, *, num_classes: int, in_channels: int,
                          image_size: int, dataset: str) -> ExportedTeacher:
    """The file's teacher for a run, on `device`, once it fits the dataset; CheckpointError when it does not."""
    model = read_exported(path, device)
    problem = fit_problem(model, Path(path).name, num_classes=num_classes, in_channels=in_channels,
                          image_size=image_size, dataset=dataset, device=device)
    if problem:
        raise CheckpointError(problem)
    return model
