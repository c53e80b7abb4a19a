"""Each training loss term against a hand-worked value on a tiny batch (issue 19: only "the
loss goes down" was tested, which a wrong loss passes too).

One group of three 2 x 2 images: 0 holds the referent (top row), 1 does not, 2 is padding
(valid False, with values that would change every term if it were counted). The numbers are
chosen so that each term differs under the plausible mistakes: the triplet's roles not
swapped for a negative image, the class weights swapped, the mirror pulling the wrong way,
padding or negative images counted where they must not be."""

from __future__ import annotations

import math

import pytest
import torch

from gres_cli.model.grser import GRSerOutput
from gres_cli.training.losses import LossWeights, grser_losses

LN3 = math.log(3.0)
ALPHA = 0.3


def _batch() -> tuple[GRSerOutput, torch.Tensor, torch.Tensor, torch.Tensor]:
    logits = torch.tensor(
        [
            [[0.0, LN3], [-LN3, -LN3]],  # p = .5 .75 / .25 .25
            [[0.0, 0.0], [0.0, 0.0]],  # p = .5 everywhere
            [[-5.0, -5.0], [-5.0, -5.0]],  # padding
        ]
    )[None]
    masks = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [[1.0] * 2] * 2])[
        None
    ]
    present = torch.tensor([[True, False, True]])
    valid = torch.tensor([[True, True, False]])
    # per-pixel embeddings (D = 2): image 0's background (bottom row) averages to (.5, .5); its
    # foreground (5, 5) must not count
    pixel = torch.zeros(1, 3, 2, 2, 2)
    pixel[0, 0, :, 0, :] = 5.0
    pixel[0, 0, :, 1, 0] = torch.tensor([1.0, 0.0])
    pixel[0, 0, :, 1, 1] = torch.tensor([0.0, 1.0])
    pixel[0, 2] = 7.0
    out = GRSerOutput(
        mask_logits=logits,
        d_pos=torch.tensor([[0.6, 0.5, 9.0]]),
        d_neg=torch.tensor([[0.7, 0.6, 0.0]]),
        heatmaps=torch.zeros(1, 3, 1, 2, 2),
        language_heatmap=torch.zeros(1, 3, 2, 2),
        embedding=torch.zeros(1, 3, 2),
        pixel_embedding=pixel,
        text_pos=torch.tensor([[0.5, 1.2]]),  # L
        text_neg=torch.tensor([[0.5, 0.0]]),  # L_anti
        expert_order=torch.zeros(1, 1, dtype=torch.long),
        s_pos=torch.tensor([[1.0, 1.0, 9.0]]),
        s_neg=torch.tensor([[1.1, 1.2, 0.0]]),
    )
    return out, masks, present, valid


# ---- the hand-worked values -------------------------------------------------------------------
# weighted BCE, class weights 1.1 (target pixels) and 0.9 (others), mean per image, then over
# the two valid images:
#   image 0: 1.1 ln 2 + 1.1 ln 4/3 + 0.9 ln 4/3 + 0.9 ln 4/3, over 4 pixels
#   image 1: 0.9 ln 2 at each pixel
MASK = ((1.1 * math.log(2) + 2.9 * math.log(4 / 3)) / 4 + 0.9 * math.log(2)) / 2
# Dice 1 - (2 I + 1) / (sum p + sum m + 1): image 0 I = 1.25, sum p = 1.75, sum m = 2
DICE_0 = 1 - 3.5 / 4.75
# on the negative image 1 (dice_negatives): I = 0, sum p = 2, sum m = 0: 1 - 1/3
DICE_1 = 1 - 1 / 3
# triplet: image 0 (present) max(0, .6 - .7 + .3) = .2; image 1 (absent, roles swapped)
# max(0, .6 - .5 + .3) = .4
TRIPLET = (0.2 + 0.4) / 2
# prototype, the same on s: image 0 max(0, 1 - 1.1 + .3) = .2; image 1 max(0, 1.2 - 1 + .3) = .5
PROTOTYPE = (0.2 + 0.5) / 2
# mirror, positives only: e_bg = (.5, .5); ||e_bg - L_anti|| = .5, ||e_bg - L|| = .7:
# max(0, .5 - .7 + .3) = .1; normalised, e_bg = (1, 1) / sqrt 2
MIRROR = 0.1
_E = 2**-0.5
MIRROR_NORMALISED = max(
    0.0, math.dist((_E, _E), (0.5, 0.0)) - math.dist((_E, _E), (0.5, 1.2)) + 0.3
)


def test_each_loss_term_matches_its_hand_worked_value():
    out, masks, present, valid = _batch()
    terms = grser_losses(out, masks, present, valid, LossWeights(alpha=ALPHA), normalize=False)
    assert terms["mask"].item() == pytest.approx(MASK, rel=1e-6)
    assert terms["dice"].item() == pytest.approx(DICE_0, rel=1e-6)
    assert terms["triplet"].item() == pytest.approx(TRIPLET, rel=1e-6)
    assert terms["prototype"].item() == pytest.approx(PROTOTYPE, rel=1e-6)
    assert terms["mirror"].item() == pytest.approx(MIRROR, rel=1e-6)


def test_dice_on_negatives_and_the_normalised_mirror():
    out, masks, present, valid = _batch()
    w = LossWeights(alpha=ALPHA, dice_negatives=True)
    terms = grser_losses(out, masks, present, valid, w, normalize=True)
    assert terms["dice"].item() == pytest.approx((DICE_0 + DICE_1) / 2, rel=1e-6)
    assert terms["mirror"].item() == pytest.approx(MIRROR_NORMALISED, rel=1e-6)


def test_the_total_weighs_each_term_with_its_own_weight():
    out, masks, present, valid = _batch()
    w = LossWeights(mask=1.0, dice=2.0, triplet=3.0, prototype=5.0, mirror=7.0, alpha=ALPHA)
    terms = grser_losses(out, masks, present, valid, w, normalize=False)
    want = MASK + 2 * DICE_0 + 3 * TRIPLET + 5 * PROTOTYPE + 7 * MIRROR
    assert terms["total"].item() == pytest.approx(want, rel=1e-6)
