"""histodrl.downstream.segment_loss: BCE over every channel and the soft Dice of the gland channel."""

import numpy as np
import pytest
import torch

from histodrl.downstream.segment_loss import segmentation_loss, soft_dice_loss


def test_bce_term_matches_the_formula():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 5, 6)
    target = (torch.rand(2, 2, 5, 6) > 0.5).float()
    loss, logs = segmentation_loss(logits, target)
    p = 1 / (1 + np.exp(-logits.double().numpy()))
    t = target.double().numpy()
    expected = -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert set(logs) == {"bce"}


def test_dice_term_uses_the_gland_channel_over_the_whole_batch():
    torch.manual_seed(1)
    logits = torch.randn(3, 2, 4, 4)
    target = (torch.rand(3, 2, 4, 4) > 0.6).float()
    loss, logs = segmentation_loss(logits, target, dice_weight=0.5)
    p = 1 / (1 + np.exp(-logits[:, 0].double().numpy()))
    t = target[:, 0].double().numpy()
    dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    assert logs["dice"].item() == pytest.approx(dice, rel=1e-5)
    assert loss.item() == pytest.approx(logs["bce"].item() + 0.5 * dice, rel=1e-5)


def test_soft_dice_of_empty_prediction_and_target_is_zero():
    assert soft_dice_loss(torch.full((2, 8, 8), -40.0), torch.zeros(2, 8, 8)).item() < 1e-6


def test_logits_and_targets_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match="differ"):
        segmentation_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 4, 4))
