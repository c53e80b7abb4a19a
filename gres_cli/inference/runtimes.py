"""Where a model's arrays live, for the engine (gres_cli.inference.engine): the loader that
decodes images ahead of the model, the device, the precision, and the way results come back
to the host as numpy.

Two runtimes, one interface (`make_runtime` picks by the model's `runtime` attribute):
  torch  torch tensors, a DataLoader (worker processes, pinned memory on CUDA), devices and
         autocast: `gres_cli.inference.torch_runtime.TorchRuntime`, imported only for it;
  numpy  numpy arrays on the CPU and a thread pool decoding ahead of the model (the ONNX
         runtime): `NumpyRuntime` below. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from grd_tools.errors import GRDError
from grd_tools.imageio import open_image, open_image_reduced
from gres_cli.errors import GresError

#: (prepared pixels or None, original (width, height), error or "", photo or None)
Decoded = tuple[Any, tuple[int, int], str, Any]


def decode(path: Path, size: int, prepare: Callable, keep_photo: bool) -> Decoded:
    """One image for the model: its prepared input (`prepare` is the model's own: a resize for
    GRSer, the checkpoint's image processor for a backend), its original size, and its error
    instead when it cannot be read (an image's error, never the run's)."""
    try:
        if keep_photo:
            img = open_image(path)
            original = img.size
        else:  # only the model input is needed: decode JPEGs at a reduced scale
            img, original = open_image_reduced(path, size)
        pixels = prepare(img)
    except GRDError as e:
        return None, (0, 0), str(e), None
    except Exception as e:  # any decoder failure is this image's error, never the run's
        return None, (0, 0), f"{path}: {e}", None
    return pixels, original, "", img if keep_photo else None


def make_runtime(kind: str, device: str, precision: str) -> Any:
    """The runtime of a model whose `runtime` attribute is `kind` ("torch" or "numpy")."""
    if precision not in ("fp32", "bf16", "fp16"):
        raise GresError(f"--precision {precision!r}: expected fp32, bf16 or fp16")
    if kind == "numpy":
        return NumpyRuntime(device, precision)
    from gres_cli.inference.torch_runtime import TorchRuntime

    return TorchRuntime(device, precision)


class NumpyRuntime:
    """numpy arrays on the CPU; images decoded ahead of the model by a thread pool (Pillow's
    decoders release the GIL), at most one batch ahead, so memory stays bounded."""

    device = "cpu"

    def __init__(self, device: str, precision: str) -> None:
        if device not in ("auto", "cpu"):
            raise GresError(f"--device {device}: the ONNX runtime runs on the CPU (auto or cpu)")
        if precision != "fp32":
            raise GresError(f"--precision {precision}: the ONNX runtime runs fp32")

    def guard(self, run: Callable) -> Callable:
        return run

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def batches(
        self,
        paths: list[Path],
        size: int,
        prepare: Callable,
        batch_size: int,
        workers: int,
        keep_photo: bool,
    ) -> Iterator[tuple[list[int], np.ndarray, list, list[str], list]]:
        """(indices, stacked prepared pixels, sizes, errors, photos) per batch, in order; this
        batch and the next are decoded by `workers` threads (at least one) meanwhile."""
        pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="gres-decode")
        pending: deque[Future] = deque()
        submitted = 0
        try:
            for start in range(0, len(paths), batch_size):
                stop = min(start + batch_size, len(paths))
                while submitted < min(len(paths), stop + batch_size):
                    pending.append(pool.submit(decode, paths[submitted], size, prepare, keep_photo))
                    submitted += 1
                items = [pending.popleft().result() for _ in range(start, stop)]
                pixels, sizes, errors, photos = (list(x) for x in zip(*items, strict=True))
                yield list(range(start, stop)), self.stack(pixels), sizes, errors, photos
        finally:  # a run stopped early leaves no decoding behind
            pool.shutdown(wait=True, cancel_futures=True)

    def stack(self, prepared: list[np.ndarray | None]) -> np.ndarray:
        """One batch; unreadable images (None) get zeros, never seen by the model."""
        good = next((p for p in prepared if p is not None), None)
        if good is None:
            return np.zeros((len(prepared), 0), np.uint8)
        return np.stack([np.zeros_like(good) if p is None else p for p in prepared])

    def floats(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float32)

    def cut(
        self, prob: np.ndarray, threshold: float, saliency: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """A probability map -> (its bool mask, its grey levels x 255 when `saliency`)."""
        grey = np.round(prob * 255).astype(np.uint8) if saliency else None
        return prob > threshold, grey
