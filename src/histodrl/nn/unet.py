"""U-Net with a VGG-19(-BN) encoder for GLaS gland segmentation (METHOD.md (c) "Downstream models").

TernausNet-style (``ternaus/TernausNet`` UNet16, here for VGG-19): the skips are the end-of-block
maps conv1_2, conv2_2, conv3_4, conv4_4 and conv5_4 (just before each MaxPool), the decoder starts
from pool5, and each decoder block is a x2 bilinear upsample, a concatenation with the skip, and
two 3x3 conv-BN-ReLU layers. A final 1x1 conv gives the class logits at full resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from histodrl.nn.init import torchvision_init_
from histodrl.nn.vgg import TAP_NAMES, VGG, scaled_channels

DEFAULT_DECODER_WIDTHS: tuple[int, ...] = (256, 128, 64, 32, 16)

# Deepest skip first: the decoder walks back up the encoder.
_SKIPS: tuple[str, ...] = ("conv5_4", "conv4_4", "conv3_4", "conv2_2", "conv1_2")


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class DecoderBlock(nn.Module):
    """x2 bilinear upsample (align_corners=False), concatenate the skip, two 3x3 conv-BN-ReLU.

    Shape:
        - x: (N, C_in, H, W); skip: (N, C_skip, 2H, 2W).
        - Output: (N, out_channels, 2H, 2W).
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            *_conv_bn_relu(in_channels + skip_channels, out_channels),
            *_conv_bn_relu(out_channels, out_channels),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.convs(torch.cat([x, skip], dim=1))


class UNet(nn.Module):
    """U-Net on a :class:`~histodrl.nn.vgg.VGG` encoder: five decoder blocks and a 1x1 head.

    METHOD.md (c): skips at conv1_2, conv2_2, conv3_4, conv4_4, conv5_4 and the centre at pool5;
    decoder widths (256, 128, 64, 32, 16); then a 1x1 conv to ``out_channels`` (1 for a gland logit,
    2 for gland + DCAN-style contour). The decoder and head start from torchvision's VGG
    initialisation; load pre-trained weights into the encoder before (or after) building the U-Net.
    ``unet.encoder`` is the VGG itself, so encoder keys are ``encoder.features.N...``.

    Args:
        encoder: the VGG trunk (its modules are shared, not copied).
        out_channels: number of output logit maps.
        decoder_widths: output channels of the five decoder blocks, deepest first. ``None`` (the
            default) means (256, 128, 64, 32, 16) scaled by the encoder's width multiplier with
            ``max(1, round(c * width))``, so the decoder keeps the same proportion to the encoder
            (width 1 gives exactly the METHOD.md widths). An explicit tuple is used as given.
        generator: random source for the decoder's initial weights; ``None`` uses the global RNG.

    Shape:
        - Input: (N, 3, H, W) with H and W divisible by 32 (callers pad).
        - Output: (N, out_channels, H, W) logits.

    Raises:
        ValueError: for a bad ``out_channels`` / ``decoder_widths``, or in ``forward`` for an input
            size not divisible by 32.
    """

    def __init__(
        self,
        encoder: VGG,
        out_channels: int = 1,
        decoder_widths: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(encoder, VGG):
            raise ValueError(f"encoder={type(encoder).__name__}: expected a histodrl.nn.VGG")
        if isinstance(out_channels, bool) or not isinstance(out_channels, int) or out_channels < 1:
            raise ValueError(f"out_channels={out_channels!r}: expected a positive int")
        if decoder_widths is None:
            decoder_widths = tuple(
                scaled_channels(c, encoder.width) for c in DEFAULT_DECODER_WIDTHS
            )
        decoder_widths = tuple(decoder_widths)
        if len(decoder_widths) != len(_SKIPS) or any(
            isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in decoder_widths
        ):
            raise ValueError(f"decoder_widths={decoder_widths!r}: expected 5 positive ints")
        self.encoder = encoder
        self.decoder_widths = decoder_widths
        blocks = []
        channels = encoder.tap_channels("pool5")
        for skip, width in zip(_SKIPS, decoder_widths):
            blocks.append(DecoderBlock(channels, encoder.tap_channels(skip), width))
            channels = width
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(channels, out_channels, kernel_size=1)
        torchvision_init_(self.decoder, generator)
        torchvision_init_(self.head, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, out_channels, H, W); H and W must be divisible by 32."""
        height, width = x.shape[-2:]
        if height % 32 or width % 32:
            raise ValueError(
                f"input size {height}x{width}: expected height and width divisible by 32 "
                "(pad the image first)"
            )
        taps = self.encoder.forward_taps(x, TAP_NAMES)
        y = taps["pool5"]
        for skip, block in zip(_SKIPS, self.decoder):
            y = block(y, taps[skip])
        return self.head(y)
