"""Exporting trained weights for use outside kdcore."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch

from kdcore.engine.checkpoint import CheckpointError, read_checkpoint
from kdcore.models import create_model

_SHAPE_KEYS = ("arch", "num_classes", "in_channels", "image_size")


def to_torchscript(checkpoint_path: str | Path) -> bytes:
    """Traces a kdcore checkpoint's model into a TorchScript file, returned as bytes.

    The trace runs on one zero image of the stored shape (1, C, H, W) in eval
    mode, so the file reproduces the model's inference. Load it with
    torch.jit.load, no kdcore needed.

    Raises:
        CheckpointError: the file is not a kdcore checkpoint (a bare state_dict
            does not say which architecture or input shape it is for).
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
    model.eval()
    dummy = torch.zeros(1, payload["in_channels"], payload["image_size"], payload["image_size"])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation notices are not the user's concern
        traced = torch.jit.trace(model, dummy)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    return buffer.getvalue()
