"""The torch runtime of the engine (see gres_cli.inference.runtimes): torch tensors, one
DataLoader decoding ahead of the model (worker processes, pinned memory on CUDA), the device
(auto: CUDA, else MPS, else CPU) and autocast."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from gres_cli.errors import GresError
from gres_cli.inference.runtimes.base import Batch, decode


class DecodedImages(Dataset):
    """Decodes image i: (i, the model's prepared tensor, original (width, height), error,
    photo or None), in the loader's workers, ahead of the model."""

    def __init__(
        self, paths: list[Path], size: int, prepare: Callable, keep_photo: bool = False
    ) -> None:
        self.paths, self.size, self.prepare, self.keep_photo = paths, size, prepare, keep_photo

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, tuple[int, int], str, Any]:
        return (i, *decode(self.paths[i], self.size, self.prepare, self.keep_photo))


def _stack(tensors: list[torch.Tensor | None]) -> torch.Tensor:
    """One batch; unreadable images (None) get zeros, never seen by the model."""
    good = next((t for t in tensors if t is not None), None)
    if good is None:
        return torch.zeros(len(tensors), 0, dtype=torch.uint8)
    return torch.stack([torch.zeros_like(good) if t is None else t for t in tensors])


def _collate(items: list) -> tuple[list[int], torch.Tensor, list, list[str], list]:
    idx, tensors, sizes, errors, photos = zip(*items, strict=True)
    return list(idx), _stack(list(tensors)), list(sizes), list(errors), list(photos)


def resolve_device(name: str) -> torch.device:
    """auto: CUDA, else MPS, else CPU. Under torchrun, `auto` and a bare `cuda` mean this
    process's own GPU, cuda:$LOCAL_RANK."""
    local = os.environ.get("LOCAL_RANK")
    if name in ("auto", "cuda") and local is not None and torch.cuda.is_available():
        return torch.device(f"cuda:{int(local) % torch.cuda.device_count()}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GresError(f"--device {name!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GresError(f"--device {name}: CUDA is not available on this machine")
    return device


class TorchRuntime:
    """torch tensors on `device`, decoded by a DataLoader; fp32, or bf16/fp16 autocast on CUDA."""

    def __init__(self, device: str, precision: str) -> None:
        self.device = resolve_device(device)
        if precision != "fp32" and self.device.type != "cuda":
            raise GresError(
                f"--precision {precision} needs a CUDA device (this run: {self.device})"
            )
        self.precision = precision

    def without_gradients(self, run: Callable) -> Callable:
        """`run` (a generator function) without autograd, between its yields too."""
        return torch.inference_mode()(run)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def batches(
        self,
        paths: list[Path],
        size: int,
        prepare: Callable,
        batch_size: int,
        workers: int,
        keep_photo: bool,
    ) -> Iterator[Batch]:
        loader = DataLoader(
            DecodedImages(paths, size, prepare, keep_photo),
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
        )
        for idx, pixels, sizes, errors, photos in loader:
            # bytes travel to the device; normalised there
            yield idx, pixels.to(self.device, non_blocking=True), sizes, errors, photos

    def stack(self, prepared: list[torch.Tensor | None]) -> torch.Tensor:
        return _stack(prepared)

    def to_host_floats(self, values: torch.Tensor) -> np.ndarray:
        return values.detach().float().cpu().numpy()

    def mask_and_grey(
        self, prob: torch.Tensor, threshold: float, saliency: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """A probability map -> (its bool mask, its grey levels x 255 when `saliency`), made on
        the device: only bytes travel to the host."""
        grey = (prob * 255).round().byte().cpu().numpy() if saliency else None
        return (prob > threshold).cpu().numpy(), grey
