"""Colorful image colorization: predict the colour of a grey image as a distribution over ab bins.

Zhang, Isola and Efros, "Colorful image colorization", ECCV 2016, https://arxiv.org/abs/1603.08511.

- Input: the lightness L of CIE Lab (D65), shown to the trunk as a grey image ``L/100`` in all three
  channels (so the trunk keeps its three input channels and ImageNet normalisation).
- Output: at 1/4 of the input side (as in the paper), logits over Q quantised ab colours from an
  :class:`~histodrl.pretext.decoders.UpsamplingDecoder` on pool5.
- Colour bins: the cells of the paper's ab grid of side 10 that some sRGB colour falls in
  (:func:`ab_bins`): Q = 261. The paper's released set has 313; it cannot be recomputed from
  the paper's description and this one is derived from the sRGB gamut by the same grid. H&E images
  use a few dozen of them; class rebalancing (below) is what keeps the rare ones learnable.
- Targets (eq. 2 and section 2.1): soft encoding of each pixel's ab over its 5 nearest bins with a
  Gaussian of σ = 5.
- Loss (eqs. 2–4): multinomial cross-entropy weighted per pixel by the class-rebalancing weight of
  its nearest bin, ``w ∝ ((1 − λ)·p + λ/Q)^−1`` with λ = 0.5 and ``E_p[w] = 1``. The paper's ``p``
  is the empirical ab distribution of ImageNet smoothed by a Gaussian of σ = 5; here it is the
  distribution of the soft-encoded targets seen so far in this run (a buffer saved in checkpoints),
  whose soft encoding is the smoothing.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

from histodrl.pretext.base import PretextModule
from histodrl.pretext.decoders import UpsamplingDecoder

AB_GRID = 10.0
NEIGHBOURS = 5
SIGMA = 5.0
REBALANCE_LAMBDA = 0.5

# sRGB (D65) to XYZ and the D65 white point, as in scikit-image's rgb2lab.
_RGB_TO_XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_WHITE = (0.95047, 1.0, 1.08883)


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """CIE Lab (D65) of sRGB images, L in [0, 100]; the same formulas as ``skimage.color.rgb2lab``.

    Shape: (N, 3, H, W) in [0, 1] -> (N, 3, H, W) with channels (L, a, b).
    """
    x = x.float()
    linear = torch.where(x > 0.04045, ((x + 0.055) / 1.055) ** 2.4, x / 12.92)
    matrix = (
        torch.tensor(_RGB_TO_XYZ, device=x.device) / torch.tensor(_WHITE, device=x.device)[:, None]
    )
    # Elementwise rather than einsum: autocast would run a matmul in bf16.
    xyz = (matrix[None, :, :, None, None] * linear[:, None]).sum(2)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], 1)


@functools.cache
def ab_bins() -> torch.Tensor:
    """Centres of the ab grid cells (side 10) that some sRGB colour falls in, sorted by (a, b).

    Found from the Lab values of a 65³ grid of the sRGB cube (finer grids find no more cells).

    Shape: (Q, 2) float32 with Q = 261.
    """
    levels = torch.linspace(0, 1, 65)
    rgb = torch.cartesian_prod(levels, levels, levels).T.reshape(1, 3, -1, 1)
    ab = rgb_to_lab(rgb)[0, 1:, :, 0].T
    cells = torch.unique(torch.round(ab / AB_GRID).long(), dim=0)  # sorted lexicographically
    return cells.float() * AB_GRID


def soft_encode(ab: torch.Tensor, bins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-encode ab values over their ``NEIGHBOURS`` nearest bins with a Gaussian of σ = 5.

    Args:
        ab: colours. Shape: (P, 2).
        bins: bin centres. Shape: (Q, 2), Q ≥ 5.

    Returns:
        ``(targets, nearest)``: targets (P, Q), each row summing to 1 and non-zero on the 5
        nearest bins only; nearest (P,) int64, the index of the nearest bin.
    """
    dist2 = torch.cdist(ab.float(), bins.float()).square()
    near2, near = dist2.topk(NEIGHBOURS, dim=1, largest=False)
    weights = torch.softmax(-near2 / (2 * SIGMA**2), dim=1)  # normalised Gaussian weights
    targets = torch.zeros_like(dist2).scatter_(1, near, weights)
    return targets, near[:, 0]


def rebalancing_weights(counts: torch.Tensor, lam: float = REBALANCE_LAMBDA) -> torch.Tensor:
    """Class-rebalancing weights of eqs. 3–4: ``w ∝ ((1 − λ)·p + λ/Q)^−1`` with ``Σ_q p_q w_q = 1``.

    ``p = counts / Σ counts``. With λ = 1 every weight is 1.

    Shape: (Q,) -> (Q,).
    """
    p = counts / counts.sum().clamp_min(1e-12)
    w = 1.0 / ((1 - lam) * p + lam / counts.numel())
    return w / (p * w).sum()


class Colorization(PretextModule):
    """Colorization (Zhang et al. 2016): predict ab bins from L with class rebalancing."""

    trained_tap = "pool5"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        bins = ab_bins()
        self.register_buffer("bins", bins.clone(), persistent=False)
        self.register_buffer("bin_counts", torch.zeros(bins.shape[0], dtype=torch.float64))
        widths = [self.width(w) for w in (256, 128, 128)]
        self.decoder = UpsamplingDecoder(self.encoder.tap_channels(self.tap), len(bins), widths)

    def pretext_step(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        lab = rgb_to_lab(x)
        grey = (lab[:, :1] / 100).expand(-1, 3, -1, -1)
        out = (x.shape[-2] // 4, x.shape[-1] // 4)
        logits = self.decoder(self.encode(self.prepare(grey), [self.tap])[self.tap], size=out)
        ab = F.adaptive_avg_pool2d(lab[:, 1:], out).permute(0, 2, 3, 1).reshape(-1, 2)
        targets, nearest = soft_encode(ab, self.bins)
        with torch.no_grad():
            self.bin_counts += targets.sum(0).double()
            weights = rebalancing_weights(self.bin_counts).float()[nearest]
        log_probs = F.log_softmax(logits.float().permute(0, 2, 3, 1).reshape(-1, len(self.bins)), 1)
        per_pixel = -(targets * log_probs).sum(1)
        loss = (weights * per_pixel).mean()
        return loss, {"cross_entropy": per_pixel.detach().mean()}
