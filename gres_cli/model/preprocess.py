"""The one place images become model tensors and mask logits become maps at original size.

Each step has its torch form (tensors, for the torch models) and its numpy form (arrays, for the
ONNX runtime, which never imports torch); both compute the same thing in float32: a plain
bilinear resize of the photo, ImageNet normalisation, and sigmoid + bilinear upsampling of the
mask logits with align_corners=False (tested equal)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
UPSAMPLE_ROWS = 64  # output rows per band of `probability_to_original_array`


def image_to_array(image: Image.Image, size: int) -> np.ndarray:
    """One image -> 3 x size x size uint8 array: plain resize (as LAVT). Kept as bytes until
    normalised, so batches travel (and sit in caches) at a quarter of the float size."""
    img = image.convert("RGB").resize((size, size), Image.BILINEAR)
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def image_to_pixels(image: Image.Image, size: int) -> Tensor:
    """`image_to_array` as a torch tensor."""
    import torch

    return torch.from_numpy(image_to_array(image, size))


def normalize(pixels: Tensor) -> Tensor:
    """... x 3 x S x S uint8 -> float, ImageNet-normalised, on the pixels' device."""
    import torch

    mean = torch.tensor(IMAGENET_MEAN, device=pixels.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=pixels.device).view(3, 1, 1)
    return (pixels.float() / 255.0 - mean) / std


def normalize_array(pixels: np.ndarray) -> np.ndarray:
    """`normalize` in numpy: ... x 3 x S x S uint8 -> float32, ImageNet-normalised."""
    mean = np.asarray(IMAGENET_MEAN, np.float32).reshape(3, 1, 1)
    std = np.asarray(IMAGENET_STD, np.float32).reshape(3, 1, 1)
    return (pixels.astype(np.float32) / np.float32(255.0) - mean) / std


def preprocess(images: list[Image.Image], size: int) -> Tensor:
    """N PIL images -> N x 3 x size x size, normalised."""
    import torch

    return normalize(torch.stack([image_to_pixels(im, size) for im in images]))


def probability_to_original(mask_logit: Tensor, size: tuple[int, int]) -> Tensor:
    """h x w logits -> the probability map at (width, height): sigmoid, bilinear. One image at a
    time: a phone photo's map is 48 MB of floats, so a batch of them would not be bounded."""
    import torch
    import torch.nn.functional as F

    w, h = size
    prob = torch.sigmoid(mask_logit.float())[None, None]
    return F.interpolate(prob, size=(h, w), mode="bilinear", align_corners=False)[0, 0]


def probability_to_original_array(mask_logit: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`probability_to_original` in numpy (float32): sigmoid, then bilinear with
    align_corners=False as torch computes it (along the width, then the height)."""
    w, h = size
    with np.errstate(over="ignore"):  # exp(-x) = inf for x << 0: the probability is 0
        prob = np.float32(1.0) / (np.float32(1.0) + np.exp(-mask_logit.astype(np.float32)))
    x0, x1, wx0, wx1 = _linear_taps(prob.shape[1], w)
    rows = prob[:, x0] * wx0 + prob[:, x1] * wx1  # h_in x w
    y0, y1, wy0, wy1 = _linear_taps(prob.shape[0], h)
    # a band of output rows at a time: a phone photo's map is 48 MB, and whole-map temporaries
    # (four of them) cost more in fresh pages than in arithmetic: the first 4032 x 3024 map of
    # a process took 0.55 s so, 0.08 to 0.14 s in bands (the same sums, in the same order)
    out = np.empty((h, w), np.float32)
    for band in range(0, h, UPSAMPLE_ROWS):
        rows_out = slice(band, band + UPSAMPLE_ROWS)
        np.multiply(rows[y0[rows_out]], wy0[rows_out, None], out=out[rows_out])
        out[rows_out] += rows[y1[rows_out]] * wy1[rows_out, None]
    return out


def _linear_taps(size_in: int, size_out: int) -> tuple[np.ndarray, ...]:
    """Source indices i0, i1 and weights (1 - lambda, lambda) of each output position, as torch's
    upsample_bilinear2d: x = max(scale (i + 0.5) - 0.5, 0), scale = in / out, in float32."""
    scale = np.float32(size_in) / np.float32(size_out)
    x = scale * (np.arange(size_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    x = np.maximum(x, np.float32(0.0))
    i0 = np.floor(x).astype(np.int64)
    lam = np.clip(x - i0.astype(np.float32), np.float32(0.0), np.float32(1.0))
    i1 = np.where(i0 < size_in - 1, i0 + 1, i0)
    return i0, i1, np.float32(1.0) - lam, lam
