"""A numpy/Pillow twin of transformers' torchvision image processor as CLIPSeg's processor runs
it (transformers 5: `ViTImageProcessor`, the torchvision backend): resize to size x size,
bilinear with antialiasing on uint8, then rescale and normalise in float32. Equal to it bit for
bit (tests/test_onnx_clipseg.py; the export's self-check compares the two on images of odd
sizes), for the ONNX runtime, which imports neither torch nor transformers.

The resize is torch's own uint8 algorithm (aten's `_upsample_bilinear2d_aa` on uint8, ported
from Pillow-SIMD), redone here: per axis, Pillow's triangle filter widened by the scale when
shrinking, its weights in float64 normalised to sum 1, then rounded to integers with the
largest precision p < 23 that keeps them below 2^15; each output byte is
clamp((sum w_i x_i + 2^(p-1)) >> p, 0, 255). The width is resized first, then the height; an
axis already at its size is left alone. Pillow's own BILINEAR differs from it by one grey level
on up to a fifth of the pixels (22 bits of precision instead), hence the twin.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

#: the processor backends this twin reproduces (transformers' `image_processor.backend`)
BACKENDS = ("torchvision",)


@functools.lru_cache(maxsize=64)
def _taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(source indices, integer weights, precision p) of each output position: n_out x taps."""
    scale = size_in / size_out
    support = scale if scale >= 1.0 else 1.0  # the triangle's half-width, widened to shrink
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    width = math.ceil(support) * 2 + 1
    index = np.zeros((size_out, width), np.int64)
    weight = np.zeros((size_out, width), np.float64)
    for i in range(size_out):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xsize = min(int(center + support + 0.5), size_in) - xmin
        j = np.arange(xsize)
        x = np.abs((j + xmin - center + 0.5) * invscale)
        w = np.where(x < 1.0, 1.0 - x, 0.0)
        total = w.sum()
        weight[i, :xsize] = w / total if total != 0.0 else w
        index[i, :xsize] = xmin + j
    w_max = float(weight.max())
    precision = 0
    while precision < 22 and int(0.5 + w_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    integer = np.trunc(0.5 + weight * (1 << precision)).astype(np.int32)
    return index, integer, precision


def _resize_axis(pixels: np.ndarray, size: int, axis: int) -> np.ndarray:
    """`pixels` (uint8, H x W x C) resized along `axis` (0 height, 1 width) to `size`."""
    if pixels.shape[axis] == size:
        return pixels
    index, weight, precision = _taps(pixels.shape[axis], size)
    src = np.moveaxis(pixels, axis, 0).astype(np.int32)
    shape = (size,) + (1,) * (src.ndim - 1)
    # at most 255 * (2^22 + taps) + 2^21 < 2^31: int32 is exact
    acc = np.full((size, *src.shape[1:]), 1 << (precision - 1) if precision else 0, np.int32)
    for t in range(index.shape[1]):
        acc += weight[:, t].reshape(shape) * src[index[:, t]]
    out = np.clip(acc >> precision, 0, 255).astype(np.uint8)
    return np.moveaxis(out, 0, axis)


def resize_bilinear_antialiased(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """H x W x C uint8 -> height x width x C uint8, as torchvision's
    `resize(..., BILINEAR, antialias=True)` on a uint8 tensor."""
    return _resize_axis(_resize_axis(pixels, width, 1), height, 0)


@dataclass(frozen=True)
class ImageProcessorTwin:
    """One decoded image -> the processor's `pixel_values[0]` (3 x height x width float32).
    Picklable: it runs in the loader's threads."""

    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale_factor: float = 1 / 255
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True

    def __call__(self, image: Image.Image) -> np.ndarray:
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
        if self.do_resize:
            pixels = resize_bilinear_antialiased(pixels, self.height, self.width)
        out = np.ascontiguousarray(pixels.transpose(2, 0, 1)).astype(np.float32)
        if self.do_normalize:
            # the processor fuses rescale into normalise: (x - mean / r) / (std / r), float32
            scale = np.float32(1.0 / self.rescale_factor) if self.do_rescale else np.float32(1)
            mean = np.asarray(self.mean, np.float32) * scale
            std = np.asarray(self.std, np.float32) * scale
            return (out - mean[:, None, None]) / std[:, None, None]
        if self.do_rescale:
            return out * np.float32(self.rescale_factor)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": BACKENDS[0],
            "height": self.height,
            "width": self.width,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "rescale_factor": self.rescale_factor,
            "do_resize": self.do_resize,
            "do_rescale": self.do_rescale,
            "do_normalize": self.do_normalize,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageProcessorTwin:
        """From `to_dict`'s output (an export's config.json); ValueError when it is not one."""
        if not isinstance(data, dict) or data.get("backend") not in BACKENDS:
            raise ValueError(f"an image processor of backend {BACKENDS[0]!r} is expected")
        try:
            mean, std = tuple(map(float, data["image_mean"])), tuple(map(float, data["image_std"]))
            twin = cls(
                int(data["height"]), int(data["width"]), mean, std,  # type: ignore[arg-type]
                float(data["rescale_factor"]), bool(data["do_resize"]), bool(data["do_rescale"]),
                bool(data["do_normalize"]),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"image processor settings: {e}") from None
        if len(mean) != 3 or len(std) != 3 or twin.height < 1 or twin.width < 1:
            raise ValueError("image processor settings: 3 means, 3 stds and a positive size")
        return twin
