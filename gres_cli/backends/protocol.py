"""The model protocol of the group-wise engine: what GRSer and every open-vocabulary backend
implement, so that the engine, the writers, resume and `gres eval` never depend on one model.

A job (one expression asked of one group of N images) runs in two passes:
  pass 1  `first_pass` over batches of images: a per-image `summary` (whatever the group step
          needs: scores, embeddings) and a per-image `item` that pass 2 may reuse;
  group   `choose_experts` over the whole group's summaries (O(N K)): the experts;
  pass 2  `second_pass` over batches again, from the cached items (or the pixels, for images
          past the engine's cache budget): the decision distances and the low-resolution mask.
The decision is the paper's, for every model: present iff d_pos + m < d_neg.

Arrays are the model's own: torch tensors for the torch models, numpy arrays for the ONNX
runtime (`runtime = "numpy"`), so this module imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from gres_cli.model.decision import presence

__all__ = [
    "Description",
    "FirstPass",
    "GroupModel",
    "SecondPass",
    "WithoutExtras",
    "cat_summaries",
    "nbytes",
    "presence",
]

#: a torch tensor (runtime "torch") or a numpy array (runtime "numpy")
Array = Any


@dataclass
class FirstPass:
    """Pass 1 over M images. `summary`: tensors whose first dimension is M (joined across
    batches with `cat_summaries`); `items`: M objects pass 2 can reuse (tensors inside)."""

    summary: dict[str, Array]
    items: list[Any]


@dataclass
class SecondPass:
    """Pass 2 over M images: the distances of the rule d_pos + m < d_neg, mask logits at the
    model's resolution, and the model's own extra values (M each, by name: an open-vocabulary
    backend's score and its distances without the group step), which its `image_extras` and
    `record_extras` turn into each image's result and record."""

    d_pos: Array  # M
    d_neg: Array  # M
    mask_logits: Array  # M x h x w
    extras: dict[str, Array] = field(default_factory=dict)


@dataclass
class Description:
    """What `gres model info` prints of a loaded model: a table titled `title: MODEL` with
    `rows`, or with --json `{"model": MODEL, **facts}`."""

    title: str  # "GRSer", "clipseg backend", ...
    rows: list[tuple[str, str]]
    facts: dict[str, Any]


@runtime_checkable
class GroupModel(Protocol):
    """What the engine and the CLI read of a model: every attribute is declared, none optional.
    Implemented by `gres_cli.backends.grser.GRSerAdapter`, the ONNX export's `GRSerOnnxModel`
    and one module per open-vocabulary backend (`clipseg.py`, ...), each registered under its
    `model_type` (`gres_cli.backends.registry`)."""

    kind: str  # "grser", "clipseg", ...: the `model_type` of its config
    # where its arrays live: "torch" (tensors, a DataLoader, devices) or "numpy" (numpy arrays,
    # a thread-pool loader, the CPU: the ONNX runtime)
    runtime: str
    input_size: int  # about how many pixels a side the model reads (JPEGs decode reduced)
    margin: float  # the default m
    experts: int  # the default K
    max_experts: int | None  # the largest K the model takes (None: any)
    # gamma, the weight of the group term when it is linear in it (open-vocabulary backends:
    # one pass then serves a sweep over gamma); None: the model has no such weight (GRSer)
    group_weight: float | None
    group: bool  # the group-wise step on; False: each image alone (--no-group), for comparison
    config: dict[str, Any]  # what produced it (for records, reports and run settings)

    def describe(self) -> Description:
        """What `gres model info` prints."""
        ...

    def to(self, device: Any) -> GroupModel: ...

    def preparer(self) -> Callable[[Image.Image], Array]:
        """A picklable function run in the loader's workers: one decoded image -> its tensor."""
        ...

    def model_input(self, prepared: Array) -> Array:
        """A batch of prepared tensors, on the device -> the model's input (e.g. normalised)."""
        ...

    def encode_text(self, expression: str) -> Any: ...

    def first_pass(self, pixels: Array, text: Any, alone: bool = False) -> FirstPass:
        """`alone`: no group step will read these images' summaries (the only image of the
        job, K < 2 or --no-group), so a model may leave out what only `choose_experts` and
        the group term read (CLIPSeg's ONNX export skips its region graph)."""
        ...

    def choose_experts(self, summary: dict[str, Array], k: int) -> Any: ...

    def second_pass(
        self, pixels: Array | None, text: Any, experts: Any, items: list[Any] | None
    ) -> SecondPass:
        """From `items` (cached by pass 1; `pixels` may then be None) or from `pixels`."""
        ...

    def probability_at(self, mask_logits: Array, size: tuple[int, int]) -> Array:
        """One image's h x w mask logits -> its probability map at (width, height)."""
        ...

    def image_extras(self, values: dict[str, np.float32], margin: float) -> dict[str, Any]:
        """One image's `SecondPass.extras` (float32 on the host), at the run's margin m -> the
        model's own values on its result (readable as `result.NAME`); {} for none."""
        ...

    def record_extras(self, extras: dict[str, Any]) -> dict[str, Any]:
        """An image's `image_extras` -> the fields they add to its record (after the core
        fields, in this order); {} for none."""
        ...


class WithoutExtras:
    """The extras of a model that has none (GRSer, its ONNX export)."""

    def image_extras(self, values: dict[str, np.float32], margin: float) -> dict[str, Any]:
        return {}

    def record_extras(self, extras: dict[str, Any]) -> dict[str, Any]:
        return {}


def cat_summaries(parts: list[dict[str, Array]]) -> dict[str, Array]:
    """Join the summaries of consecutive batches of one job (torch tensors or numpy arrays)."""
    first = parts[0]
    if all(isinstance(v, np.ndarray) for v in first.values()):
        return {k: np.concatenate([p[k] for p in parts]) for k in first}
    import torch  # a torch model's summaries: torch is loaded already

    return {k: torch.cat([p[k] for p in parts]) for k in first}


def nbytes(obj: Any) -> int:
    """Bytes held by the arrays in `obj` (a tensor or numpy array, a dataclass, or a
    list/tuple/dict of them)."""
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    torch = sys.modules.get("torch")  # a torch tensor exists only once torch is imported
    if torch is not None and isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if is_dataclass(obj):
        return sum(nbytes(getattr(obj, f.name)) for f in fields(obj))
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(x) for x in obj)
    if isinstance(obj, dict):
        return sum(nbytes(x) for x in obj.values())
    return 0
