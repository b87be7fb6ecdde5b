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


def gallery(images, indices, captions, key: str, per_page: int = 24, columns: int = 8, side: int = 56) -> None:
    """Thumbnails of test images in a grid, a page at a time.

    Args:
        images: a function from a (n,) index tensor to (n, C, H, W) images in [0, 1] (the dataset's test images,
            denormalized).
        indices: the test images to show, in order.
        captions: a function from an index to its caption.
        key: a unique prefix for this gallery's widgets.
    """
    import math

    import streamlit as st
    import torch

    indices = list(indices)
    if not indices:
        return
    pages = max(1, math.ceil(len(indices) / per_page))
    page = 1
    if pages > 1:
        page = int(st.number_input(f"Page (of {pages}, {len(indices)} images)", 1, pages, 1, key=f"{key}_page"))
    shown = indices[(page - 1) * per_page: page * per_page]
    thumbs = images(torch.tensor(shown, dtype=torch.long))
    for start in range(0, len(shown), columns):
        for col, i, thumb in zip(st.columns(columns), shown[start:start + columns], thumbs[start:start + columns]):
            col.image(to_pil(thumb, side), caption=captions(i), width=side)
