"""Heatmap Hierarchizer: order the expert heatmaps by how trustworthy their prototype is.

In a shared embedding space (projections phi_v of prototypes, phi_l of text features):
    s_pos[i] = || phi_v(p_i) - phi_l(L) ||_2          close to the expression = reliable
    s_neg[i] = || phi_v(p_i) - phi_l(L_anti) ||_2     far from the anti-expression = reliable
    R_pos = rank of s_pos ascending, R_neg = rank of s_neg descending (0 = most reliable)
    order = argsort(R_pos + R_neg)
so that heatmap channel k always means "the k-th most reliable expert", whatever the group.
Ties in R_pos + R_neg are broken by s_pos - s_neg, then by position in the group (stable sort),
so the order is deterministic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def ranks(values: Tensor, descending: bool = False) -> Tensor:
    """0-based rank of each entry along the last dim (stable: equal values keep their order)."""
    order = torch.argsort(values, dim=-1, descending=descending, stable=True)
    out = torch.empty_like(order)
    out.scatter_(-1, order, torch.arange(values.shape[-1], device=values.device).expand_as(order))
    return out


def expert_order(s_pos: Tensor, s_neg: Tensor, valid: Tensor | None = None) -> Tensor:
    """Indices of the experts, most reliable first: ... x N -> ... x N (invalid ones last)."""
    total = (ranks(s_pos) + ranks(s_neg, descending=True)).to(s_pos.dtype)
    # secondary key, scaled below one rank step so it only breaks ties
    tie = (s_pos - s_neg).detach()
    spread = tie.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12)
    key = total + 0.25 * tie / spread
    if valid is not None:
        key = key.masked_fill(~valid, float("inf"))
    return torch.argsort(key, dim=-1, stable=True)


class HeatmapHierarchizer(nn.Module):
    """Projects prototypes and text into the shared space and ranks the experts."""

    def __init__(self, vision_dim: int, text_dim: int, embed_dim: int, normalize: bool) -> None:
        super().__init__()
        self.phi_v = nn.Linear(vision_dim, embed_dim)
        self.phi_l = nn.Linear(text_dim, embed_dim)
        self.normalize = normalize

    def embed_text(self, sentence: Tensor) -> Tensor:
        e = self.phi_l(sentence)
        return F.normalize(e, dim=-1) if self.normalize else e

    def embed_prototypes(self, prototypes: Tensor) -> Tensor:
        e = self.phi_v(prototypes)
        return F.normalize(e, dim=-1) if self.normalize else e

    def scores(self, prototypes: Tensor, sentence: Tensor, anti: Tensor) -> tuple[Tensor, Tensor]:
        """(s_pos, s_neg): prototypes ... x N x C_v; sentence/anti ... x C_l -> ... x N each."""
        p = self.embed_prototypes(prototypes)
        s_pos = torch.linalg.vector_norm(p - self.embed_text(sentence).unsqueeze(-2), dim=-1)
        s_neg = torch.linalg.vector_norm(p - self.embed_text(anti).unsqueeze(-2), dim=-1)
        return s_pos, s_neg
