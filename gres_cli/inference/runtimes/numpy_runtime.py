"""The numpy runtime (the ONNX model's): numpy arrays on the CPU and a thread pool decoding
ahead of the model. Nothing here imports torch."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from gres_cli.errors import GresError
from gres_cli.inference.runtimes.base import Batch, decode


class NumpyRuntime:
    """numpy arrays on the CPU; images decoded ahead of the model by a thread pool (Pillow's
    decoders release the GIL), at most one batch ahead, so memory stays bounded."""

    device = "cpu"

    def __init__(self, device: str, precision: str) -> None:
        if device not in ("auto", "cpu"):
            raise GresError(f"--device {device}: the ONNX runtime runs on the CPU (auto or cpu)")
        if precision != "fp32":
            raise GresError(f"--precision {precision}: the ONNX runtime runs fp32")

    def without_gradients(self, run: Callable) -> Callable:
        return run  # numpy keeps no autograd state

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
    ) -> Iterator[Batch]:
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

    def to_host_floats(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float32)

    def mask_and_grey(
        self, prob: np.ndarray, threshold: float, saliency: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """A probability map -> (its bool mask, its grey levels x 255 when `saliency`)."""
        grey = np.round(prob * 255).astype(np.uint8) if saliency else None
        return prob > threshold, grey
