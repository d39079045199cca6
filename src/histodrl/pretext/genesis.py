"""Models Genesis in 2-D: restore images from non-linear, shuffling and painting corruptions.

Zhou, Sodha, Rahman Siddiquee, Feng, Tajbakhsh, Gotway and Liang, "Models Genesis: generic
autodidactic models for 3D medical image analysis", MICCAI 2019, https://arxiv.org/abs/1908.06912, and
its code (``MrGiovanni/ModelsGenesis``, ``utils.py``: ``generate_pair`` and the transforms it calls),
made 2-D and batched. Each image, in [0, 1], is corrupted in this order, each step drawn per image
with the paper's rates, and a U-Net (:class:`histodrl.nn.UNet` on the trunk, sigmoid output)
restores the original under an L2 loss:

1. Local pixel shuffling (rate 0.5, :func:`local_pixel_shuffling`): pixels are permuted within
   small blocks, at most S/10 on a side. The paper draws 10,000 random windows one after another,
   each shuffled from the original and overwriting earlier ones; here there are four passes, each
   with its own random block size and grid offset per image, in which every block is shuffled with
   probability 1/2, later passes overwriting earlier ones. As in the paper, each pixel ends up with
   the value of an original pixel from its own last window, and some pixels keep their own.
2. Non-linear intensity transformation (rate 0.9, :func:`bezier_intensity`): a monotone cubic
   Bézier curve from (0, 0) to (1, 1) with two random control points, flipped (decreasing) for half
   of the images; the same curve maps all three channels.
3. Painting (rate 0.9): out-painting for 80 % of those images, in-painting for 20 %
   (:func:`painting_mask`). In-painting fills up to five boxes of side S/6 to S/3 with uniform
   noise; out-painting fills everything but up to five boxes of side S − (3S/7 to 4S/7) with
   uniform noise. After each box another one follows with probability 0.95, as in the paper's code.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from histodrl.errors import UserInputError
from histodrl.nn import UNet
from histodrl.pretext.base import PretextModule

LOCAL_RATE = 0.5
NONLINEAR_RATE = 0.9
PAINT_RATE = 0.9
INPAINT_SHARE = 0.2  # of the painted images; the rest are out-painted
SHUFFLE_PASSES = 4
BEZIER_STEPS = 1000
MAX_BOXES = 5
NEXT_BOX_RATE = 0.95


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None, device: Any):
    return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)


def _randint(n: int, lo: torch.Tensor | int, hi: torch.Tensor | int, generator, device):
    """Integers uniform in [lo, hi], both inclusive (Python's ``random.randint``), per element."""
    lo_t = torch.as_tensor(lo, device=device)
    hi_t = torch.as_tensor(hi, device=device)
    r = torch.rand(n, generator=generator, device=device)
    return lo_t + (r * (hi_t - lo_t + 1)).floor().long().clamp_max(hi_t - lo_t)


def bezier_intensity(
    x: torch.Tensor, control: torch.Tensor, flip: torch.Tensor, steps: int = BEZIER_STEPS
) -> torch.Tensor:
    """Map intensities through a cubic Bézier curve per image, as Models Genesis' code does.

    The curve is B(s) = (1−s)³·(0, 0) + 3s(1−s)²·P1 + 3s²(1−s)·P2 + s³·(1, 1), sampled at ``steps``
    values of s in [0, 1]; intensity ``X(s)`` maps to ``Y(s)``, or to ``Y(1 − s)`` where ``flip``
    (the code's unsorted y values), by linear interpolation (``np.interp``: values outside the
    curve's x range take the end values).

    Args:
        x: images. Shape: (N, C, H, W).
        control: P1 and P2 of each image, in [0, 1]². Shape: (N, 2, 2), ``control[n, k] = (x, y)``.
        flip: which images get the decreasing curve. Shape: (N,) bool.
        steps: number of points on the curve (≥ 2).

    Returns:
        The mapped images, float. Shape: (N, C, H, W).
    """
    n = x.shape[0]
    s = torch.linspace(0, 1, steps, device=x.device, dtype=torch.float64)
    basis = torch.stack([3 * s * (1 - s) ** 2, 3 * s**2 * (1 - s)])  # P0 = 0 adds nothing
    points = torch.einsum("nkd,ks->nds", control.to(torch.float64), basis) + s**3  # (N, 2, steps)
    xp = points[:, 0].contiguous()
    fp = torch.where(flip[:, None].to(x.device), points[:, 1].flip(-1), points[:, 1])
    v = x.reshape(n, -1).to(torch.float64).contiguous()
    hi = torch.searchsorted(xp, v).clamp(1, steps - 1)
    lo = hi - 1
    x0, x1 = xp.gather(1, lo), xp.gather(1, hi)
    y0, y1 = fp.gather(1, lo), fp.gather(1, hi)
    t = ((v - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0, 1)
    return (y0 + t * (y1 - y0)).reshape(x.shape).to(torch.float32)


def _block_ids(h: int, w: int, block: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """(N, H·W): the row-major index, in a grid of ``W + 1`` columns, of each pixel's block."""
    rows = (torch.arange(h, device=block.device)[None] + offset[:, :1]) // block[:, :1]
    cols = (torch.arange(w, device=block.device)[None] + offset[:, 1:]) // block[:, 1:]
    return (rows[:, :, None] * (w + 1) + cols[:, None, :]).reshape(block.shape[0], h * w)


def shuffle_blocks(
    x: torch.Tensor,
    block: torch.Tensor,
    offset: torch.Tensor,
    selected: torch.Tensor,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Permute pixels (all channels together) within the blocks of a grid, per image.

    Image n is cut into blocks of ``block[n] = (bh, bw)`` pixels, the grid shifted by
    ``offset[n] = (oh, ow)`` (block rows start at ``−oh + k·bh``), so blocks on the border are
    partial. Block (i, j) is entry ``i·(W + 1) + j`` of ``selected``; each selected block gets a
    uniformly random permutation of its pixels, the others stay as they are.

    Args:
        x: images. Shape: (N, C, H, W).
        block: block sides, ≥ 1. Shape: (N, 2) int.
        offset: grid offsets, ``0 ≤ offset < block``. Shape: (N, 2) int.
        selected: which blocks are shuffled. Shape: (N, B) bool, ``B ≥ (H + 1)·(W + 1)``.
        generator: source of the permutations.

    Returns:
        ``(shuffled, in_selected)``: the images (N, C, H, W) and which pixels lie in a selected
        block (N, 1, H, W) bool.
    """
    n, c, h, w = x.shape
    block_id = _block_ids(h, w, block, offset).double()
    chosen = selected.gather(1, block_id.long())
    # Sorted by block id, pixels in raster order (dest) and in random order (src) line up block by
    # block, so src[k] -> dest[k] permutes every block within itself. Unselected blocks use the
    # raster order for both: the identity.
    raster = torch.arange(h * w, device=x.device, dtype=torch.float64) / (h * w)
    noise = torch.rand(n, h * w, generator=generator, device=x.device, dtype=torch.float64)
    dest = torch.argsort(block_id + raster, dim=1)
    src = torch.argsort(block_id + torch.where(chosen, noise, raster), dim=1)
    flat = x.reshape(n, c, h * w)
    values = flat.gather(2, src[:, None].expand(n, c, h * w))
    out = torch.empty_like(flat).scatter_(2, dest[:, None].expand(n, c, h * w), values)
    return out.view_as(x), chosen.view(n, 1, h, w)


def local_pixel_shuffling(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Models Genesis' local pixel shuffling, batched (see the module docstring, step 1).

    Every output pixel is an input pixel of the same image less than ``max(1, S // 10)`` away on
    each axis (S = min(H, W)).

    Shape: (N, C, H, W) -> (N, C, H, W).
    """
    n, _, h, w = x.shape
    max_side = max(1, min(h, w) // 10)
    out = x
    for _ in range(SHUFFLE_PASSES):
        block = torch.stack([_randint(n, 1, max_side, generator, x.device) for _ in range(2)], 1)
        offset = (torch.rand(n, 2, generator=generator, device=x.device) * block).long()
        selected = torch.rand(n, (h + 1) * (w + 1), generator=generator, device=x.device) < 0.5
        shuffled, written = shuffle_blocks(x, block, offset, selected, generator)
        out = torch.where(written, shuffled, out)
    return out


def painting_mask(
    n: int, side: int, outpaint: torch.Tensor, generator: torch.Generator | None, device: Any
) -> torch.Tensor:
    """Where the painting step puts noise, per image (Models Genesis' in- and out-painting, 2-D).

    In-painting: the union of 1 to 5 boxes of side ``randint(S//6, S//3)`` (per axis) at offsets
    ``randint(3, S − side − 3)``; out-painting: everything but such a union of boxes of side
    ``S − randint(3S//7, 4S//7)``. Box k + 1 exists when box k does and a U(0, 1) draw is < 0.95
    (the code's first in-painting box is also drawn with that rate; its first out-painting box is
    always there, which the union with the other boxes keeps).

    Args:
        n: number of images.
        side: S, the image side.
        outpaint: which images are out-painted. Shape: (N,) bool.
        generator, device: source and place of the draws.

    Returns:
        True where noise goes. Shape: (N, 1, S, S) bool.
    """
    coords = torch.arange(side, device=device)
    inside = torch.zeros(n, side, side, dtype=torch.bool, device=device)
    present = torch.ones(n, dtype=torch.bool, device=device)
    for k in range(MAX_BOXES):
        draw = torch.rand(n, generator=generator, device=device) < NEXT_BOX_RATE
        present = present & (draw | (outpaint & (k == 0)))
        box = []
        for _ in range(2):
            small = _randint(n, side // 6, side // 3, generator, device)
            large = side - _randint(n, 3 * side // 7, 4 * side // 7, generator, device)
            size = torch.where(outpaint, large, small)
            start = _randint(n, 3, (side - size - 3).clamp_min(3), generator, device)
            box.append((coords[None] >= start[:, None]) & (coords[None] < (start + size)[:, None]))
        inside |= present[:, None, None] & box[0][:, :, None] & box[1][:, None, :]
    return torch.where(outpaint[:, None, None], ~inside, inside)[:, None]


def genesis_corrupt(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """The full Models Genesis corruption of a batch in [0, 1] (module docstring, steps 1–3).

    Shape: (N, C, S, S) -> (N, C, S, S) in [0, 1].
    """
    n, device = x.shape[0], x.device

    def coin(rate: float) -> torch.Tensor:
        return torch.rand(n, generator=generator, device=device) < rate

    def per_image(mask: torch.Tensor) -> torch.Tensor:
        return mask[:, None, None, None]

    x = x.float()
    x = torch.where(per_image(coin(LOCAL_RATE)), local_pixel_shuffling(x, generator), x)
    control = torch.rand(n, 2, 2, generator=generator, device=device)
    curved = bezier_intensity(x, control, coin(0.5))
    x = torch.where(per_image(coin(NONLINEAR_RATE)), curved, x)
    paint = coin(PAINT_RATE)
    noise_at = painting_mask(n, x.shape[-1], ~coin(INPAINT_SHARE), generator, device)
    noise = torch.rand(x.shape, generator=generator, device=device)
    return torch.where(per_image(paint) & noise_at, noise, x)


class Genesis(PretextModule):
    """Models Genesis (Zhou et al. 2019), 2-D: restore images from their corruptions with a U-Net."""

    trained_tap = "pool5"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        if self.crop % 32:
            raise UserInputError(f"--crop {self.crop}: genesis needs a multiple of 32 (its U-Net)")
        # The U-Net shares the trunk's modules; only the trunk is exported.
        self.unet = UNet(self.encoder, out_channels=3)

    def pretext_step(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        corrupted = genesis_corrupt(x, self.generator)
        restored = torch.sigmoid(self.unet(self.prepare(corrupted)).float())
        loss = F.mse_loss(restored, x.float())
        with torch.no_grad():
            unchanged = F.mse_loss(corrupted, x.float())  # the loss of restoring nothing
        return loss, {"corrupted_mse": unchanged}
