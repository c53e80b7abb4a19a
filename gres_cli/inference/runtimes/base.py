"""What every runtime of the engine provides (`Runtime`), and the one image decode they share.

A runtime is where a model's arrays live: the loader that decodes images ahead of the model,
the device, the precision, and the way results come back to the host as numpy. Nothing here
imports torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from grd_tools.errors import GRDError
from grd_tools.imageio import open_image, open_image_reduced

#: (prepared pixels or None, original (width, height), error or "", photo or None)
Decoded = tuple[Any, tuple[int, int], str, Any]
#: (image indices, stacked prepared pixels on the device, original sizes, errors, photos)
Batch = tuple[list[int], Any, list, list[str], list]


def decode(path: Path, size: int, prepare: Callable, keep_photo: bool) -> Decoded:
    """One image for the model: its prepared input (`prepare` is the model's own: a resize for
    GRSer, the checkpoint's image processor for a backend), its original size, and its error
    instead when it cannot be read (an image's error, never the run's). The model's input is
    decoded the same way whatever the outputs (JPEGs at a reduced scale): with `keep_photo`
    the full-size photo for the overlay is a decode of its own, so an overlay never changes
    the model's answers."""
    try:
        img, original = open_image_reduced(path, size)
        pixels = prepare(img)
        photo = open_image(path) if keep_photo else None
    except GRDError as e:
        return None, (0, 0), str(e), None
    except Exception as e:  # any decoder failure is this image's error, never the run's
        return None, (0, 0), f"{path}: {e}", None
    return pixels, original, "", photo


class Runtime(Protocol):
    """The engine's view of where a model's arrays live."""

    device: Any  # "cpu" or a torch.device

    def without_gradients(self, run: Callable) -> Callable:
        """`run` (a generator function) with no autograd bookkeeping, between its yields too."""
        ...

    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision the model runs at, as a context."""
        ...

    def batches(
        self,
        paths: list[Path],
        size: int,
        prepare: Callable,
        batch_size: int,
        workers: int,
        keep_photo: bool,
    ) -> Iterator[Batch]:
        """Each batch of `paths` in order, decoded ahead of the model."""
        ...

    def stack(self, prepared: list[Any]) -> Any:
        """One batch of prepared images; unreadable ones (None) get zeros."""
        ...

    def to_host_floats(self, values: Any) -> np.ndarray:
        """The model's values as float32 numpy on the host."""
        ...

    def mask_and_grey(
        self, prob: Any, threshold: float, saliency: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """A probability map -> (its bool mask, its grey levels x 255 when `saliency`)."""
        ...
