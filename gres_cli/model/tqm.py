"""Triphasic Query Module (TQM): the target is queried by language AND by the other images.

For a group of N images with visual features V_n (C_v x H x W) and sentence feature L:
    L'       = w_l(L)                                  (C_l -> C_v, a 1x1 conv = a linear layer)
    M_l[n]   = cos(V_n(x), L')                          language heatmap, H x W
    p_n      = mean_{x in HW} M_l[n](x) * V_n(x)        prototype of image n (mask average pooling)
    M_v[n,i] = cos(V_n(x), p_i)                         visual heatmap of image n by expert i
Everything is batched over the group (no Python loop over n).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def cosine_map(features: Tensor, vectors: Tensor, eps: float = 1e-6) -> Tensor:
    """cos(V(x), v_k) at every position.

    features: ... x C x H x W; vectors: ... x K x C (same leading dims) -> ... x K x H x W.
    """
    f = F.normalize(features, dim=-3, eps=eps)
    v = F.normalize(vectors, dim=-1, eps=eps)
    return torch.einsum("...kc,...chw->...khw", v, f)


class TriphasicQueryModule(nn.Module):
    def __init__(self, text_dim: int, vision_dim: int) -> None:
        super().__init__()
        self.w_l = nn.Linear(text_dim, vision_dim)

    def language_heatmap(self, features: Tensor, sentence: Tensor) -> Tensor:
        """M_l = cos(V, w_l(L)): features ... x C_v x H x W, sentence ... x C_l -> ... x H x W."""
        return cosine_map(features, self.w_l(sentence).unsqueeze(-2)).squeeze(-3)

    @staticmethod
    def prototypes(features: Tensor, language_heatmap: Tensor) -> Tensor:
        """p = mean_HW(M_l * V): ... x C x H x W and ... x H x W -> ... x C."""
        return (features * language_heatmap.unsqueeze(-3)).mean(dim=(-2, -1))

    @staticmethod
    def visual_heatmaps(features: Tensor, experts: Tensor) -> Tensor:
        """M_v[n, i] = cos(V_n, p_i).

        features B x N x C x H x W, experts B x K x C -> B x N x K x H x W.
        """
        return cosine_map(features, experts.unsqueeze(1).expand(-1, features.shape[1], -1, -1))
