"""Context Encoder: fill in the masked centre of an image from its context (Pathak et al., CVPR 2016).

Pathak, Krähenbühl, Donahue, Darrell and Efros, "Context encoders: feature learning by inpainting",
https://arxiv.org/abs/1604.07379, with the central-region mask:

- The centre square of half the side (R = S/2) is to be predicted. The input hides its inner part,
  R − 2·o wide with o = max(1, R/16) (the paper's 4 px of overlap at R = 64), by filling it with the
  ImageNet mean colour (0 after normalisation; the paper fills with the mean pixel).
- Encoder → channel-wise fully connected layer (section 3.1: each channel of pool5 is mixed across
  all its positions, so the decoder can reach the centre from any context) → decoder
  (:class:`~histodrl.pretext.decoders.UpsamplingDecoder`, four x2 blocks from S/32 to R) predicting
  the R×R centre in normalised pixel values.
- Reconstruction loss (eq. 1): masked L2 with the overlap band weighted 10 times the hole, as in the
  paper's code, as a weighted mean over pixels.
- Optional adversarial term (eq. 2, ``--inpainting-adversarial`` λ_adv, default 0 = off; the paper's
  joint loss uses 0.001): a convolutional discriminator on the R×R centre, real against predicted,
  trained in the same optimizer step (:func:`histodrl.pretext.prior.adversarial_losses`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from histodrl.data.augment import IMAGENET_MEAN
from histodrl.pretext.base import PretextModule
from histodrl.pretext.decoders import UpsamplingDecoder
from histodrl.pretext.prior import adversarial_losses

OVERLAP_WEIGHT = 10.0


def centre_region(side: int) -> tuple[slice, int]:
    """The predicted centre ``slice`` (R = side // 2 wide) of a side-``side`` image, and the overlap o.

    The hidden part is the centre shrunk by o on every side: ``R − 2·o`` wide.
    """
    r = side // 2
    start = (side - r) // 2
    return slice(start, start + r), max(1, r // 16)


def hide_centre(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] with the hidden centre filled with the ImageNet mean colour.

    Shape: (N, 3, S, S) -> (N, 3, S, S), a new tensor.
    """
    region, o = centre_region(x.shape[-1])
    inner = slice(region.start + o, region.stop - o)
    out = x.clone()
    mean = torch.as_tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype)
    out[:, :, inner, inner] = mean[:, None, None]
    return out


def overlap_weights(r: int, o: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Per-pixel loss weights of the R×R centre: 1 in the hole, ``OVERLAP_WEIGHT`` in the o-wide band.

    Shape: (R, R).
    """
    w = torch.full((r, r), OVERLAP_WEIGHT, device=device)
    w[o : r - o, o : r - o] = 1.0
    return w


class ChannelWiseFC(nn.Module):
    """Pathak's channel-wise fully connected layer: a dense layer over positions, per channel.

    ``y[n, c, q] = Σ_p W[c, q, p] · x[n, c, p] + b[c, q]`` over the h·w positions p, q. Initialised
    like ``nn.Linear`` (uniform in ±1/sqrt(h·w)).

    Shape: (N, C, h, w) -> (N, C, h, w).
    """

    def __init__(self, channels: int, h: int, w: int) -> None:
        super().__init__()
        hw = h * w
        bound = 1 / math.sqrt(hw)
        self.weight = nn.Parameter(torch.empty(channels, hw, hw).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(channels, hw).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = torch.einsum("cqp,ncp->ncq", self.weight, x.reshape(n, c, h * w)) + self.bias
        return y.reshape(n, c, h, w)


def patch_discriminator(width: Any) -> nn.Sequential:
    """Context Encoder's adversary on R×R patches: four 4×4 stride-2 convs with LeakyReLU, GAP,
    Linear → one logit. No BatchNorm (see :func:`~histodrl.pretext.prior.adversarial_losses`).
    Shape: (N, 3, R, R) -> (N, 1)."""
    layers: list[nn.Module] = []
    channels = 3
    for c in (64, 128, 256, 512):
        layers += [nn.Conv2d(channels, width(c), 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        channels = width(c)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 1))


class Inpainting(PretextModule):
    """Context Encoder (Pathak et al. 2016): inpaint the central region, L2 (+ optional adversarial)."""

    trained_tap = "pool5"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        side = self.crop // self.encoder.tap_stride(self.tap)
        channels = self.encoder.tap_channels(self.tap)
        self.channel_fc = ChannelWiseFC(channels, side, side)
        widths = [self.width(w) for w in (256, 128, 64, 32)]
        self.decoder = UpsamplingDecoder(channels, 3, widths)
        self.adversarial = self.options.inpainting_adversarial
        if self.adversarial < 0:
            raise ValueError(f"inpainting_adversarial={self.adversarial}: expected >= 0")
        self.discriminator = patch_discriminator(self.width) if self.adversarial > 0 else None

    def pretext_step(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        region, o = centre_region(x.shape[-1])
        r = region.stop - region.start
        features = self.encode(self.prepare(hide_centre(x)), [self.tap])[self.tap]
        pred = self.decoder(self.channel_fc(features), size=(r, r)).float()
        target = self.prepare(x)[:, :, region, region].float()
        weights = overlap_weights(r, o, device=x.device)
        reconstruction = ((pred - target).square().mean(1) * weights).sum((1, 2)).mean()
        reconstruction = reconstruction / weights.sum()
        logs: dict[str, torch.Tensor] = {"reconstruction": reconstruction}
        loss = reconstruction
        if self.discriminator is not None:
            gen, disc = adversarial_losses(self.discriminator, target, pred)
            loss = loss + self.adversarial * gen + disc
            logs.update(adversarial=gen, discriminator=disc)
        return loss, logs
