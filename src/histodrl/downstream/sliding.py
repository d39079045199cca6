"""Whole-image inference with a fully convolutional model: overlapping tiles, smoothly blended.

A segmentation network trained on ``crop x crop`` crops is applied to an image of any size by
tiling it with ``crop x crop`` windows that overlap by a fraction ``overlap`` and averaging the
tiles' logits with a Gaussian weight that is largest at the tile centre (as nnU-Net does), so that
the tile borders, where the network sees the least context, count the least and no seam appears:

    logits(p) = sum_t w(p - o_t) f_t(p - o_t) / sum_t w(p - o_t)

over the tiles t that contain pixel p, with o_t the tile's top-left corner, f_t the network's
output on the tile and w(y, x) = g(y) g(x), g a Gaussian of standard deviation ``crop / 8`` centred
in the tile (its value at a tile edge is e^-8 of the centre's, never 0).

Windows start at 0, stride, 2 stride, ... with stride = round(crop (1 - overlap)), plus one window
flush with the bottom/right border (:func:`histodrl.data.crops.window_starts`), so every pixel is
covered. An image smaller than the crop is first reflect-padded at the bottom/right up to the crop
(the padding is cropped away again), so any size of image works; each tile is exactly
``crop x crop``, which the caller keeps divisible by 32 for the U-Net.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from histodrl.data.crops import window_starts

GAUSSIAN_SIGMA_FRACTION = 1 / 8
"""Standard deviation of the blending weight as a fraction of the tile side (nnU-Net's value)."""


def gaussian_tile_weight(
    crop: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The blending weight of one tile: a separable Gaussian, 1 at the centre, positive everywhere.

    Args:
        crop: tile side in pixels (>= 1).
        device, dtype: of the returned tensor.

    Returns:
        ``g(y) g(x)`` with ``g(i) = exp(-(i - (crop - 1) / 2)^2 / (2 sigma^2))`` and
        ``sigma = crop / 8``, normalised to a maximum of 1. Shape: (crop, crop).
    """
    if crop < 1:
        raise ValueError(f"crop={crop}: expected a positive tile side")
    sigma = crop * GAUSSIAN_SIGMA_FRACTION
    i = torch.arange(crop, device=device, dtype=torch.float64) - (crop - 1) / 2
    g = torch.exp(-(i**2) / (2 * sigma**2))
    w = torch.outer(g, g)
    return (w / w.max()).to(dtype)


def tile_stride(crop: int, overlap: float) -> int:
    """Step between tiles: ``max(1, round(crop * (1 - overlap)))``; ``overlap`` in [0, 1)."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap={overlap}: expected a fraction in [0, 1)")
    return max(1, round(crop * (1 - overlap)))


def reflect_pad_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Reflect-pad the last two dims of ``x`` at the bottom/right up to at least ``height x width``.

    Padding larger than the image is done in rounds (torch's reflect mode needs pad < size), so the
    pattern keeps mirroring back and forth like numpy's ``np.pad(mode="reflect")``. A side of one
    pixel is replicated (it has nothing to reflect).

    Shape:
        - x: (..., H, W)
        - output: (..., max(H, height), max(W, width)), with ``output[..., :H, :W] == x``.
    """
    lead = x.shape[:-2]
    while x.shape[-2] < height or x.shape[-1] < width:
        h, w = x.shape[-2:]
        need_h, need_w = max(0, height - h), max(0, width - w)
        pad_h, pad_w = min(need_h, h - 1), min(need_w, w - 1)
        flat = x.reshape(-1, 1, h, w)
        if pad_h == 0 and pad_w == 0:  # a one-pixel side has nothing to reflect
            flat = F.pad(flat, (0, need_w, 0, need_h), mode="replicate")
        else:
            flat = F.pad(flat, (0, pad_w, 0, pad_h), mode="reflect")
        x = flat.reshape(*lead, *flat.shape[-2:])
    return x


def tile_corners(height: int, width: int, crop: int, overlap: float) -> list[tuple[int, int]]:
    """Top-left corners of the tiles covering a ``height x width`` image (at least crop per side).

    Row-major order; see :func:`histodrl.data.crops.window_starts`.
    """
    stride = tile_stride(crop, overlap)
    return [
        (top, left)
        for top in window_starts(height, crop, stride)
        for left in window_starts(width, crop, stride)
    ]


@torch.no_grad()
def sliding_window_logits(
    model: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    *,
    crop: int,
    overlap: float = 0.5,
    tile_batch: int = 8,
) -> torch.Tensor:
    """Logits of ``model`` over a whole image of any size, from overlapping blended tiles.

    See the module docstring for the tiling and the blending formula. Tiles go through ``model`` in
    batches of ``tile_batch``; the sums are accumulated in float32 whatever the model's precision.

    Args:
        model: maps a batch of tiles (B, C, crop, crop) to logits (B, K, crop, crop), e.g. a
            :class:`histodrl.nn.UNet` in eval mode (put it there yourself; BatchNorm in training
            mode would use per-batch statistics).
        image: one image, already normalised the way the model expects, on the model's device.
        crop: tile side in pixels (the U-Net needs a multiple of 32).
        overlap: fraction of the tile side shared by neighbouring tiles, in [0, 1); 0.5 is the
            default.
        tile_batch: tiles per model call (>= 1).

    Shape:
        - image: (C, H, W), any H, W >= 1.
        - output: (K, H, W) float32.
    """
    if image.dim() != 3:
        raise ValueError(f"image: expected (C, H, W), got shape {tuple(image.shape)}")
    if tile_batch < 1:
        raise ValueError(f"tile_batch={tile_batch}: expected at least 1")
    height, width = image.shape[-2:]
    padded = reflect_pad_to(image, crop, crop)
    ph, pw = padded.shape[-2:]
    corners = tile_corners(ph, pw, crop, overlap)
    weight = gaussian_tile_weight(crop, device=image.device)
    total: torch.Tensor | None = None
    norm = torch.zeros(ph, pw, device=image.device, dtype=torch.float32)
    for start in range(0, len(corners), tile_batch):
        chunk = corners[start : start + tile_batch]
        tiles = torch.stack([padded[:, t : t + crop, s : s + crop] for t, s in chunk])
        logits = model(tiles).float()
        if logits.shape[0] != len(chunk) or logits.shape[-2:] != (crop, crop):
            raise ValueError(
                f"model output {tuple(logits.shape)}: expected ({len(chunk)}, K, {crop}, {crop})"
            )
        if total is None:
            total = torch.zeros(logits.shape[1], ph, pw, device=image.device, dtype=torch.float32)
        for (t, s), tile_logits in zip(chunk, logits):
            total[:, t : t + crop, s : s + crop] += tile_logits * weight
            norm[t : t + crop, s : s + crop] += weight
    assert total is not None  # at least one tile always exists
    return (total / norm)[:, :height, :width]
