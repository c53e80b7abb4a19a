"""The one place images become model tensors and mask logits become maps at original size."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_to_pixels(image: Image.Image, size: int) -> Tensor:
    """One image -> 3 x size x size uint8 tensor: plain resize (as LAVT). Kept as bytes until
    `normalize`, so batches travel (and sit in caches) at a quarter of the float size."""
    img = image.convert("RGB").resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def normalize(pixels: Tensor) -> Tensor:
    """... x 3 x S x S uint8 -> float, ImageNet-normalised, on the pixels' device."""
    mean = torch.tensor(IMAGENET_MEAN, device=pixels.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=pixels.device).view(3, 1, 1)
    return (pixels.float() / 255.0 - mean) / std


def preprocess(images: list[Image.Image], size: int) -> Tensor:
    """N PIL images -> N x 3 x size x size, normalised."""
    return normalize(torch.stack([image_to_pixels(im, size) for im in images]))


def probability_to_original(mask_logit: Tensor, size: tuple[int, int]) -> Tensor:
    """h x w logits -> the probability map at (width, height): sigmoid, bilinear. One image at a
    time: a phone photo's map is 48 MB of floats, so a batch of them would not be bounded."""
    w, h = size
    prob = torch.sigmoid(mask_logit.float())[None, None]
    return F.interpolate(prob, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
