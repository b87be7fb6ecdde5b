"""Test images for display: normalized tensors back to pictures a person can see."""
from __future__ import annotations

import numpy as np
from PIL import Image
from torch import Tensor


def to_pil(image: Tensor, side: int) -> Image.Image:
    """A (C, H, W) image with values in [0, 1] as a PIL image about `side` pixels wide.

    Small images are enlarged with nearest-neighbour so 8x8 digits stay crisp.
    """
    array = (image.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    picture = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    if picture.width < side:
        scale = max(1, side // picture.width)
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    return picture
