"""Small heads the pretext baselines put on the trunk; they are discarded after pretraining.

- :class:`UpsamplingDecoder`: x2 bilinear upsample + 3x3 conv-BN-ReLU blocks and a 1x1 output conv,
  the decoder of the reconstruction baselines (colorization, inpainting, VAE). No skips: what the
  decoder reconstructs must pass through the trunk's deepest map.
- :func:`pooled_classifier`: global average pool + a one-hidden-layer MLP, the classifier of the
  classification baselines (rotation, exemplar).

Both start from torchvision's VGG initialisation (:func:`histodrl.nn.init.torchvision_init_`), drawn
from the global RNG like the trunk.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from histodrl.nn.init import torchvision_init_


class UpsamplingDecoder(nn.Module):
    """``len(widths)`` blocks of (x2 bilinear upsample → 3x3 conv → BN → ReLU), then a 1x1 conv.

    Args:
        in_channels: channels of the input map.
        out_channels: channels of the output (logits or values; no activation).
        widths: output channels of the blocks, in order; each block doubles the spatial size.

    Shape:
        - Input: (N, in_channels, h, w).
        - Output: (N, out_channels, H, W) with ``(H, W) = size`` when given to ``forward``,
          else ``(h·2^k, w·2^k)`` with ``k = len(widths)``.

    Raises:
        ValueError: if a channel count is not a positive int or ``widths`` is empty.
    """

    def __init__(self, in_channels: int, out_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        widths = tuple(widths)
        sizes = (in_channels, out_channels, *widths)
        if not widths or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in sizes):
            raise ValueError(
                f"in_channels={in_channels!r}, out_channels={out_channels!r}, widths={widths!r}: "
                "expected positive ints and at least one block"
            )
        blocks = []
        channels = in_channels
        for width in widths:
            blocks.append(
                nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                    nn.Conv2d(channels, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                )
            )
            channels = width
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv2d(channels, out_channels, 1)
        torchvision_init_(self)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Decode ``x``; ``size`` resizes the last block's map first (crops not divisible by 32)."""
        y = self.blocks(x)
        if size is not None and tuple(y.shape[-2:]) != tuple(size):
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return self.out(y)


def pooled_classifier(in_channels: int, hidden: int, num_classes: int) -> nn.Sequential:
    """GAP → Linear(in_channels, hidden) → ReLU → Linear(hidden, num_classes).

    No BatchNorm, so that a batch of one image works.

    Shape:
        - Input: (N, in_channels, h, w).
        - Output: (N, num_classes) logits.
    """
    head = nn.Sequential(
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(in_channels, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, num_classes),
    )
    return torchvision_init_(head)  # type: ignore[return-value]
