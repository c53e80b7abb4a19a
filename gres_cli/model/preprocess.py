"""The one place images become model tensors and mask logits become masks at original size."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_to_tensor(image: Image.Image, size: int) -> Tensor:
    """One image -> 3 x size x size float tensor: plain resize (as LAVT), ImageNet-normalised."""
    img = image.convert("RGB").resize((size, size), Image.BILINEAR)
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (arr - mean) / std


def preprocess(images: list[Image.Image], size: int) -> Tensor:
    """N PIL images -> N x 3 x size x size."""
    return torch.stack([image_to_tensor(im, size) for im in images])


def probabilities_to_original(mask_logits: Tensor, sizes: list[tuple[int, int]]) -> list[Tensor]:
    """N x h x w logits -> N probability maps at their (width, height): sigmoid, bilinear."""
    return [
        F.interpolate(
            torch.sigmoid(logit.float())[None, None],
            size=(h, w),
            mode="bilinear",
            align_corners=False,
        )[0, 0]
        for logit, (w, h) in zip(mask_logits, sizes, strict=True)
    ]


def masks_to_original(
    mask_logits: Tensor, sizes: list[tuple[int, int]], threshold: float = 0.5
) -> list[np.ndarray]:
    """N x h x w logits -> N bool masks at their (width, height): sigmoid, bilinear, > t."""
    return [(p > threshold).cpu().numpy() for p in probabilities_to_original(mask_logits, sizes)]
