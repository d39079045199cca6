"""Variational autoencoder: reconstruct each image through a Gaussian latent (Kingma & Welling 2014).

Kingma and Welling, "Auto-encoding variational Bayes", ICLR 2014, https://arxiv.org/abs/1312.6114.

- Encoder: the trunk to pool5, then a 1×1 conv to the mean μ and log-variance log σ² of a diagonal
  Gaussian q(z|x). The latent is spatial, ``C_z`` channels (64 at width 1) at S/32 × S/32, i.e. a
  convolutional VAE: a flat vector would need a Linear layer whose size grows with the crop.
- Reparameterisation (section 2.4): ``z = μ + σ·ε`` with ε ~ N(0, I) from the step's generator.
- Decoder: :class:`~histodrl.pretext.decoders.UpsamplingDecoder`, five x2 blocks to S × S, giving
  Bernoulli logits for the pixel intensities in [0, 1] (the likelihood of the paper's
  experiments; with continuous intensities it is the usual binary cross-entropy).
- Loss: the negative ELBO (eq. 10), ``BCE(x̂, x) + KL(q(z|x) ‖ N(0, I))`` summed over pixels and
  latent units, averaged over the batch and divided by the number of pixel values 3·S² (so the
  loss is per input value; the division does not change the balance of the two terms).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from histodrl.pretext.base import PretextModule
from histodrl.pretext.decoders import UpsamplingDecoder

LOGVAR_RANGE = (-30.0, 20.0)  # keeps exp(log σ²) finite early in training


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) per element: ``−½ (1 + log σ² − μ² − σ²)`` (the paper's appendix B).

    Shape: any, the same for both -> the same.
    """
    return -0.5 * (1 + logvar - mu.square() - logvar.exp())


class VAE(PretextModule):
    """Variational autoencoder (Kingma & Welling 2014) with a spatial Gaussian latent."""

    trained_tap = "pool5"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.latent_channels = self.width(64)
        self.to_latent = nn.Conv2d(self.encoder.tap_channels(self.tap), 2 * self.latent_channels, 1)
        widths = [self.width(w) for w in (256, 128, 64, 32, 16)]
        self.decoder = UpsamplingDecoder(self.latent_channels, 3, widths)

    def pretext_step(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = self.encode(self.prepare(x), [self.tap])[self.tap]
        mu, logvar = self.to_latent(features).float().chunk(2, dim=1)
        logvar = logvar.clamp(*LOGVAR_RANGE)
        eps = torch.randn(mu.shape, generator=self.generator, device=mu.device)
        z = mu + (0.5 * logvar).exp() * eps
        logits = self.decoder(z, size=tuple(x.shape[-2:])).float()
        values = x[0].numel()
        reconstruction = F.binary_cross_entropy_with_logits(logits, x.float(), reduction="sum")
        reconstruction = reconstruction / (x.shape[0] * values)
        kl = gaussian_kl(mu, logvar).sum() / (x.shape[0] * values)
        loss = reconstruction + kl
        return loss, {"reconstruction": reconstruction, "kl": kl}
