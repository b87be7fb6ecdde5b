"""Whole-batch augmentation on tensors, so it runs on the training device with no per-image Python."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from kdcore.config import AugmentConfig


def _rand(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """(n,) uniform draws on `device`.

    Drawn on the generator's device and moved after, so a CPU generator gives the same
    augmentation wherever the images are; a generator on the images' CUDA device makes the
    move a no-op, so a step copies nothing from the host. Without a generator, CUDA images
    use the device's global RNG for the same reason, and CPU images the CPU one as always.
    """
    if generator is not None:
        source = generator.device
    else:
        source = device if device.type == "cuda" else torch.device("cpu")
    return torch.rand(n, generator=generator, device=source).to(device)


def random_crop(x: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """Pads each image with zeros and crops it back at a random per-image offset.

    Args:
        x: (N, C, H, W) images.
        padding: pixels of zero padding on each side.
        generator: source of randomness.

    Returns:
        Images of the same shape, each shifted by up to `padding` pixels in each direction.
    """
    if padding <= 0 or x.shape[0] == 0:
        return x
    n, _, h, w = x.shape
    span = 2 * padding + 1
    oy = (_rand(n, generator, x.device) * span).long().clamp_(max=span - 1)
    ox = (_rand(n, generator, x.device) * span).long().clamp_(max=span - 1)
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = oy[:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = ox[:, None] + torch.arange(w, device=x.device)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # advanced indices around a slice put their dims first: (N, H, W, C)
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def random_flip(x: Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> Tensor:
    """Flips each image horizontally with probability p.

    Args:
        x: (N, C, H, W) images.
        generator: source of randomness.
        p: flip probability per image.

    Returns:
        Images of the same shape.
    """
    if x.shape[0] == 0:
        return x
    mask = _rand(x.shape[0], generator, x.device) < p
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def random_rotation(x: Tensor, degrees: float, generator: torch.Generator | None = None) -> Tensor:
    """Rotates each image by its own random angle in [-degrees, degrees], filling with zeros.

    Args:
        x: (N, C, H, W) images.
        degrees: maximum absolute angle.
        generator: source of randomness.

    Returns:
        Images of the same shape and dtype.
    """
    if degrees <= 0 or x.shape[0] == 0:
        return x
    n, _, h, w = x.shape
    angle = (_rand(n, generator, x.device) * 2 - 1) * math.radians(degrees)
    cos, sin = angle.cos(), angle.sin()
    zero = torch.zeros_like(angle)
    # affine_grid works in [-1, 1] coordinates; the H/W factors keep non-square images unsheared
    theta = torch.stack(
        [torch.stack([cos, -sin * (h / w), zero], 1), torch.stack([sin * (w / h), cos, zero], 1)], 1
    )
    xf = x.float()
    grid = F.affine_grid(theta, list(xf.shape), align_corners=False)
    out = F.grid_sample(xf, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.to(x.dtype)


def augment_batch(x: Tensor, cfg: "AugmentConfig", generator: torch.Generator | None = None) -> Tensor:
    """Applies the configured augmentations to a whole batch: crop, then flip, then rotation.

    Works on normalized images, so zero padding and zero fill stand for the dataset's mean colour.

    Args:
        x: (N, C, H, W) floating-point images on any device.
        cfg: which augmentations to apply (crop_padding, flip, rotation).
        generator: for repeatable augmentation, on the CPU or on the images' device (no host
            copies per step); None uses the global RNG of the images' device.

    Returns:
        Augmented images with the same shape, dtype and device as `x`.
    """
    if cfg is None or not cfg.enabled:
        return x
    if cfg.crop_padding > 0:
        x = random_crop(x, int(cfg.crop_padding), generator)
    if cfg.flip:
        x = random_flip(x, generator)
    if cfg.rotation > 0:
        x = random_rotation(x, float(cfg.rotation), generator)
    return x
