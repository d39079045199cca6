"""RotNet: predict which of four rotations an image was given (Gidaris et al., ICLR 2018).

Gidaris, Singh and Komodakis, "Unsupervised representation learning by predicting image rotations",
https://arxiv.org/abs/1803.07728. As in the paper's best setting, every image of the batch is shown
in all four rotations (0°, 90°, 180°, 270°) in the same batch, so the trunk sees 4N images, and a
classifier on the trunk's pool5 predicts the rotation with cross-entropy.

The label is the rotation applied here, so the input has to keep the data's own orientation: unlike
the other methods this one augments with horizontal flips only (a flip does not change which way is
up; a vertical flip or a 90° turn would). Histopathology has no canonical "up", so what the task can
learn is limited to whatever orientation cues the acquisition leaves; the paper's Table I shows it as
the weakest baseline.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from histodrl.pretext.base import PretextModule
from histodrl.pretext.decoders import pooled_classifier


def rotations_of(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All four rotations of every image, and their labels.

    Rotation k turns the image by k·90° counter-clockwise (``torch.rot90(x, k, dims=(-2, -1))``).

    Args:
        x: square images. Shape: (N, C, S, S).

    Returns:
        ``(images, labels)``: images (4N, C, S, S), rotation k of image i at row ``k·N + i``, and
        labels (4N,) int64 holding k.

    Raises:
        ValueError: if the images are not square (a 90° turn would change their shape).
    """
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"x {tuple(x.shape)}: expected square images (N, C, S, S)")
    images = torch.cat([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)])
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return images, labels


class Rotation(PretextModule):
    """RotNet (Gidaris et al. 2018): classify the rotation (0/90/180/270°) of each image."""

    trained_tap = "pool5"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        channels = self.encoder.tap_channels(self.tap)
        self.classifier = pooled_classifier(channels, self.width(512), 4)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """A random horizontal flip per image (orientation-preserving, see the module docstring)."""
        flip = torch.rand(x.shape[0], generator=self.generator, device=x.device) < 0.5
        return torch.where(flip[:, None, None, None], x.flip(-1), x)

    def pretext_step(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, labels = rotations_of(x)
        logits = self.classifier(self.encode(self.prepare(images), [self.tap])[self.tap])
        loss = F.cross_entropy(logits.float(), labels)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return loss, {"accuracy": accuracy}
