"""GRSer's training losses (METHOD.md, "Training"), with the paper's symbols.

- Mask loss on every image: weighted binary cross-entropy (LAVT's class weights [0.9, 1.1]) plus
  optional Dice on positives; a negative image's target is the empty mask. With
  `dice_negatives`, the smoothed Dice covers negatives too, where it reads Σp / (Σp + 1): a
  per-pixel mean BCE barely notices a small false object on a negative image, this term does.
- Triplet loss on emb(z_n): positive image: max(0, ||e - L|| - ||e - L_anti|| + alpha);
  negative image: L and L_anti swapped. This is what makes d_pos + m < d_neg a decision.
- Prototype loss: the same triplet on the hierarchizer's s_pos/s_neg, so that prototypes of
  positive images sit near L (the ranking the hierarchizer relies on).
- Mirror loss: the embedding pooled over the BACKGROUND (outside the target) of a positive
  image is pulled toward L_anti: max(0, ||e_bg - L_anti|| - ||e_bg - L|| + alpha). This is our
  reading of "the anti-expression feature is tied to the image background".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from gres_cli.model.grser import GRSerOutput


@dataclass
class LossWeights:
    mask: float = 1.0
    dice: float = 1.0
    triplet: float = 1.0
    prototype: float = 0.5
    mirror: float = 0.5
    alpha: float = 0.3
    positive_class: float = 1.1
    negative_class: float = 0.9
    dice_negatives: bool = False


def _triplet(d_pos: Tensor, d_neg: Tensor, present: Tensor, alpha: float) -> Tensor:
    """max(0, d(a, right) - d(a, wrong) + alpha): right = L for positives, L_anti for negatives."""
    right = torch.where(present, d_pos, d_neg)
    wrong = torch.where(present, d_neg, d_pos)
    return F.relu(right - wrong + alpha)


def grser_losses(
    out: GRSerOutput, masks: Tensor, present: Tensor, valid: Tensor, w: LossWeights, normalize: bool
) -> dict[str, Tensor]:
    """All loss terms (scalars) for a batch; `total` is their weighted sum.

    masks: B x N x H x W {0,1}; present, valid: B x N bool.
    """
    v = valid.float()
    count = v.sum().clamp(min=1.0)
    weight = torch.where(masks > 0.5, w.positive_class, w.negative_class)
    bce = F.binary_cross_entropy_with_logits(
        out.mask_logits, masks, weight=weight, reduction="none"
    )
    mask_loss = (bce.mean(dim=(-2, -1)) * v).sum() / count

    prob = torch.sigmoid(out.mask_logits)
    inter = (prob * masks).sum(dim=(-2, -1))
    dice = 1 - (2 * inter + 1) / (prob.sum(dim=(-2, -1)) + masks.sum(dim=(-2, -1)) + 1)
    pos = (present & valid).float()
    dice_on = v if w.dice_negatives else pos
    dice_loss = (dice * dice_on).sum() / dice_on.sum().clamp(min=1.0)

    triplet = (_triplet(out.d_pos, out.d_neg, present, w.alpha) * v).sum() / count
    prototype = (_triplet(out.s_pos, out.s_neg, present, w.alpha) * v).sum() / count

    # mirror: pool the per-pixel embedding over the background of positive images
    bg = 1.0 - F.interpolate(masks.flatten(0, 1)[:, None], size=out.pixel_embedding.shape[-2:])
    bg = bg.view(*masks.shape[:2], 1, *out.pixel_embedding.shape[-2:])
    e_bg = (out.pixel_embedding * bg).sum(dim=(-2, -1)) / bg.sum(dim=(-2, -1)).clamp(min=1.0)
    if normalize:
        e_bg = F.normalize(e_bg, dim=-1)
    to_anti = torch.linalg.vector_norm(e_bg - out.text_neg[:, None], dim=-1)
    to_text = torch.linalg.vector_norm(e_bg - out.text_pos[:, None], dim=-1)
    mirror = (F.relu(to_anti - to_text + w.alpha) * pos).sum() / pos.sum().clamp(min=1.0)

    total = (
        w.mask * mask_loss
        + w.dice * dice_loss
        + w.triplet * triplet
        + w.prototype * prototype
        + w.mirror * mirror
    )
    return {
        "total": total,
        "mask": mask_loss,
        "dice": dice_loss,
        "triplet": triplet,
        "prototype": prototype,
        "mirror": mirror,
    }
