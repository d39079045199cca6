"""The loss of ``histodrl segment``: binary cross-entropy over every channel, plus a soft Dice term.

Channel 0 of the target is "gland" (any instance label); with ``--contour`` channel 1 is the DCAN
contour. The loss is the mean BCE with logits over all channels and pixels, plus ``--dice-weight``
x the soft Dice loss of the gland channel (:func:`segmentation_loss`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss over a whole batch: ``1 - (2 sum p t + eps) / (sum p + sum t + eps)``.

    Milletari et al., "V-Net", 3DV 2016 (https://arxiv.org/abs/1606.04797), eq. 1, with ``p =
    sigmoid(logits)`` and the sums taken over every pixel of every image (a batch-level Dice, so
    an image without glands does not make the loss undefined). ``eps`` smooths it: an empty
    target and an empty prediction give 0.

    Shape:
        logits, target: (B, H, W) or any equal shapes. Output: scalar.
    """
    p = torch.sigmoid(logits.float())
    t = target.float()
    return 1 - (2 * (p * t).sum() + eps) / (p.sum() + t.sum() + eps)


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 0.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """BCE with logits averaged over all channels and pixels, plus ``dice_weight`` x soft Dice.

    The Dice term uses the gland channel (0) only: the thin contour band would make a Dice loss
    on it noisy.

    Args:
        logits: network output. Shape: (B, K, H, W).
        target: 0/1 targets. Shape: (B, K, H, W).
        dice_weight: weight of :func:`soft_dice_loss` (>= 0).

    Returns:
        ``(loss, logs)`` with logs ``bce`` (and ``dice`` when ``dice_weight > 0``).
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
    logs = {"bce": bce}
    loss = bce
    if dice_weight > 0:
        dice = soft_dice_loss(logits[:, 0], target[:, 0])
        logs["dice"] = dice
        loss = loss + dice_weight * dice
    return loss, logs
