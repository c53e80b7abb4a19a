"""The group rule of the open-vocabulary backends (docs/backends.md, "The group rule";
formulas in `gres_cli.backends.openvocab`) in numpy, for the ONNX runtime, which never imports
torch; and what every backend adds to its results and records (`GroupRuleExtras`), shared by
the torch backends and the ONNX ones. Torch-free.

`group_prototype_array` and `group_distances_array` are `openvocab.group_prototype` and
`group_distances` in float32 numpy: the same experts in the same order (ties: earlier image
first), the same values but for float rounding (tests/test_onnx_clipseg.py);
`region_embedding_array` is `openvocab.region_embedding` for the SAM 3 export, whose graph
cannot hold that pooling (tests/test_onnx_sam3.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gres_cli.model.decision import presence

#: F.normalize's floor on a norm
_EPS = np.float32(1e-12)


@dataclass
class GroupPrototypeArray:
    """The experts' prototype P (D), the match radius rho, and whether the group term applies."""

    prototype: np.ndarray
    radius: np.float32
    active: bool


def _normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    norm = np.sqrt((x * x).sum(axis=axis, keepdims=True, dtype=np.float32))
    return x / np.maximum(norm, _EPS)


def _adaptive_average(size_in: int, size_out: int) -> np.ndarray:
    """The size_out x size_in matrix of torch's adaptive average pooling along one axis: output
    i averages inputs floor(i in / out) to ceil((i + 1) in / out) - 1."""
    pool = np.zeros((size_out, size_in), np.float32)
    for i in range(size_out):
        start, end = (i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)
        pool[i, start:end] = np.float32(1.0) / np.float32(end - start)
    return pool


def region_embedding_array(features: np.ndarray, mask_logits: np.ndarray) -> np.ndarray:
    """`openvocab.region_embedding(features, sigmoid(mask_logits))` in float32 numpy: e_n, the
    features (M x C x h' x w') pooled under the region (M x h x w, resized to h' x w' by
    adaptive average pooling), unit length; an empty region pools the whole image."""
    with np.errstate(over="ignore"):  # exp(-x) = inf for x << 0: the probability is 0
        region = np.float32(1.0) / (np.float32(1.0) + np.exp(-mask_logits.astype(np.float32)))
    rows = _adaptive_average(region.shape[1], features.shape[2])
    cols = _adaptive_average(region.shape[2], features.shape[3])
    weights = rows @ region @ cols.T  # M x h' x w'
    total = weights.reshape(len(weights), -1).sum(1)
    empty = total <= 1e-6
    weights[empty] = np.float32(1.0)
    total = weights.reshape(len(weights), -1).sum(1)
    pooled = np.einsum("mchw,mhw->mc", features.astype(np.float32), weights)
    return _normalize(pooled / total[:, None])


def expert_weights_array(experts: np.ndarray) -> np.ndarray:
    """w_k = max(a_k, 0), a_k the mean cosine of expert k with the others (K x D unit vectors);
    all ones when no expert agrees with any other."""
    k = experts.shape[0]
    cos = experts @ experts.T
    agreement = (cos.sum(1) - np.diagonal(cos)) / np.float32(k - 1)
    weights = np.maximum(agreement, np.float32(0))
    return weights if weights.sum() > 0 else np.ones_like(weights)


def expert_indices(scores: np.ndarray, k: int) -> list[int]:
    """The top-k images by score b (ties: earlier image first)."""
    return sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))[:k]


def group_prototype_array(
    scores: np.ndarray, embeddings: np.ndarray, k: int
) -> GroupPrototypeArray:
    """The group step over a job's N images (scores b: N, embeddings e: N x D unit vectors)."""
    experts = embeddings[expert_indices(scores, k)].astype(np.float32)
    if experts.shape[0] < 2:
        return GroupPrototypeArray(experts.mean(0), np.float32(0), active=False)
    w = expert_weights_array(experts)
    weighted = w[:, None] * experts
    prototype = _normalize(weighted.sum(0))
    leave_one_out = _normalize(weighted.sum(0) - weighted)
    gaps = np.sqrt(((experts - leave_one_out) ** 2).sum(-1))
    return GroupPrototypeArray(prototype, np.float32((w * gaps).sum() / w.sum()), active=True)


def group_distances_array(
    scores: np.ndarray,
    embeddings: np.ndarray,
    group: GroupPrototypeArray | None,
    weight: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(d_pos, d_neg) of M images: d_pos = (1 - b) + gamma ||e - P||, d_neg = b + gamma rho."""
    scores = scores.astype(np.float32)
    d_pos, d_neg = np.float32(1.0) - scores, scores.copy()
    if group is not None and group.active and weight:
        dist = np.sqrt(((embeddings.astype(np.float32) - group.prototype) ** 2).sum(-1))
        d_pos = d_pos + np.float32(weight) * dist
        d_neg = d_neg + np.float32(weight) * group.radius
    return d_pos, d_neg


def reweighted_score(
    d_pos: float, d_neg: float, alone: tuple[float, float], weight: float, new_weight: float
) -> float:
    """d_neg - d_pos had the group weight been `new_weight` instead of `weight` (the group
    term is linear in gamma): s(gamma') = s_alone + (gamma' / gamma) (s - s_alone). One forward
    pass serves every gamma of a calibration sweep."""
    alone_score = alone[1] - alone[0]
    return alone_score + (new_weight / weight) * ((d_neg - d_pos) - alone_score)


@dataclass
class NoExtraSettings:
    """The settings of a backend that takes none beyond experts, group weight and margin."""


class GroupRuleExtras:
    """What a backend with the group rule adds to each image's result and record: its own
    score b_n and its call without the group step (`SecondPass.extras` holds "backend_score",
    "alone_d_pos" and "alone_d_neg")."""

    def image_extras(self, values: dict[str, np.float32], margin: float) -> dict[str, Any]:
        """The backend's own score b_n, its call without the group step at the run's m
        (`backend_present`), and that call's distances (`alone`: a sweep over the group
        weight reweighs from them)."""
        alone = values["alone_d_pos"], values["alone_d_neg"]
        return {
            "backend_score": float(values["backend_score"]),
            "backend_present": bool(presence(*alone, margin)),
            "alone": (float(alone[0]), float(alone[1])),
        }

    def record_extras(self, extras: dict[str, Any]) -> dict[str, Any]:
        """What the group changed: the backend's own score and call, in every record."""
        return {
            "backend_score": round(extras["backend_score"], 6),
            "backend_present": extras["backend_present"],
        }
