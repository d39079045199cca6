"""Batched augmentation on the training device: flips and quarter turns, random resized crops,
colour jitter, ImageNet normalisation.

Every random transform comes in three parts, so that one draw can be applied to several tensors
(an image batch and its label batch, or an image and its deformed copy, ``METHOD.md`` (d) step 6):

- ``draw_*(batch, ..., generator=, device=)`` draws the per-image parameters as a small tensor;
- the deterministic transform applies them (``flip_rot90``, ``resized_crop``, ``adjust_colors``);
- ``random_*`` / ``color_jitter`` do both in one call.

Images are (B, C, H, W) floats in [0, 1] after :func:`to_float`; label maps are (B, H, W) or
(B, 1, H, W) of any dtype. Nothing loops over images, and nothing reads values back to the host,
so the functions run on a GPU without synchronising. Randomness comes only from the ``generator``
argument (a ``torch.Generator`` on the tensors' device; None uses the global RNG).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "adjust_colors",
    "color_jitter",
    "draw_color_jitter",
    "draw_crop_boxes",
    "draw_flip_rot90",
    "flip_rot90",
    "normalize",
    "random_flip_rot90",
    "random_resized_crop",
    "resized_crop",
    "to_float",
]

# ImageNet channel statistics (torchvision's), because users may start from ImageNet weights.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# ITU-R 601 luma, the weights torchvision's rgb_to_grayscale uses.
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)

# torchvision's RandomResizedCrop tries this many boxes before falling back to a centre crop.
_CROP_ATTEMPTS = 10


def to_float(x: torch.Tensor) -> torch.Tensor:
    """Convert uint8 images (0..255) to float32 in [0, 1].

    Args:
        x: uint8 tensor of any shape, e.g. (B, C, H, W).

    Returns:
        ``x / 255`` as float32, same shape and device.

    Raises:
        ValueError: if ``x`` is not uint8.
    """
    if x.dtype != torch.uint8:
        raise ValueError(f"x: expected a uint8 tensor, got {x.dtype}")
    return x.to(torch.float32).div_(255.0)


def normalize(
    x: torch.Tensor,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> torch.Tensor:
    """Subtract the per-channel mean and divide by the per-channel std.

    Args:
        x: floating images in [0, 1].
        mean, std: one value per channel (default: ImageNet statistics).

    Returns:
        ``(x - mean) / std``, same dtype and device.

    Shape:
        - x: (B, C, H, W) with C == len(mean) == len(std)
        - output: (B, C, H, W)

    Raises:
        ValueError: on a non-floating tensor, a wrong shape or a zero std.
    """
    _check_images(x, "x")
    if not (len(mean) == len(std) == x.shape[1]):
        raise ValueError(
            f"mean/std: expected {x.shape[1]} values each, got {len(mean)} and {len(std)}"
        )
    if any(s == 0 for s in std):
        raise ValueError(f"std: expected non-zero values, got {std}")
    mean_t = _constant(tuple(mean), x.device, x.dtype)[:, None, None]
    std_t = _constant(tuple(std), x.device, x.dtype)[:, None, None]
    return (x - mean_t) / std_t


# ---------------------------------------------------------------------------------------------
# Flips and quarter turns
# ---------------------------------------------------------------------------------------------


def draw_flip_rot90(
    batch: int,
    *,
    square: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw independent per-image flips and quarter turns.

    Columns: ``hflip`` (0/1, p = 1/2), ``vflip`` (0/1, p = 1/2) and ``k`` (number of 90° turns,
    uniform in {0, 1, 2, 3}). For non-square images (``square=False``) a quarter turn would change
    the shape, so ``k`` is drawn from {0, 2}; since a half turn is both flips, the result is then
    uniform over {identity, h-flip, v-flip, half turn}.

    Args:
        batch: number of images B.
        square: whether the images have H == W.
        generator: a ``torch.Generator`` on ``device``.
        device: where the parameters live (default: the generator's device, or the CPU).

    Returns:
        int64 parameters for :func:`flip_rot90`.

    Shape:
        - output: (B, 3)
    """
    device = _resolve_device(generator, device)
    flips = torch.randint(0, 2, (batch, 2), generator=generator, device=device)
    turns = torch.randint(0, 4, (batch, 1), generator=generator, device=device)
    if not square:
        turns = turns - turns % 2
    return torch.cat((flips, turns), dim=1)


def _dihedral_table() -> torch.Tensor:
    """(16, 2, 2) source-coordinate matrices for index ``8 hflip + 4 vflip + k``.

    In centred coordinates (row u, column v), output pixel p reads input pixel M p. With
    ``A(z)[p] = z[M_A p]``, the composition ``rot90^k(vflip^b(hflip^a(x)))`` reads
    ``x[M_h^a M_v^b M_r^k p]``.
    """
    hflip = torch.tensor([[1, 0], [0, -1]])
    vflip = torch.tensor([[-1, 0], [0, 1]])
    # torch.rot90(x, 1, dims=(-2, -1)) reads x[j, W - 1 - i] at (i, j), i.e. (u, v) <- (v, -u).
    rot = torch.tensor([[0, 1], [-1, 0]])
    eye = torch.eye(2, dtype=torch.int64)
    table = []
    for a in range(2):
        for b in range(2):
            for k in range(4):
                m = (
                    (hflip if a else eye)
                    @ (vflip if b else eye)
                    @ torch.linalg.matrix_power(rot, k)
                )
                table.append(m)
    return torch.stack(table)


_DIHEDRAL = _dihedral_table()


def flip_rot90(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Apply per-image flips and quarter turns: ``rot90(vflip(hflip(x)), k)``.

    The h-flip reverses columns, the v-flip rows, and the turn is ``torch.rot90(·, k,
    dims=(-2, -1))``, in that order. Pixels are moved, never interpolated, so label maps of any
    dtype stay exact.

    Args:
        x: images (B, C, H, W) or label maps (B, H, W), any dtype.
        params: from :func:`draw_flip_rot90`, on the device of ``x``.

    Returns:
        The transformed batch, same shape, dtype and device.

    Shape:
        - x: (B, C, H, W) or (B, H, W)
        - params: (B, 3) int64: hflip, vflip, k
        - output: same as x

    Raises:
        ValueError: on a wrong shape, or an odd k for non-square images (checked when the
            parameters are on the CPU; on an accelerator odd k are mapped to k - 1 instead of
            reading them back).
    """
    squeeze = x.dim() == 3
    images = x.unsqueeze(1) if squeeze else x
    if images.dim() != 4:
        raise ValueError(f"x: expected (B, C, H, W) or (B, H, W), got {tuple(x.shape)}")
    batch, channels, height, width = images.shape
    if params.shape != (batch, 3):
        raise ValueError(f"params: expected shape ({batch}, 3), got {tuple(params.shape)}")
    turns = params[:, 2] % 4
    if height != width:
        if params.device.type == "cpu" and bool((turns % 2 == 1).any()):
            raise ValueError("params: a quarter turn (odd k) needs square images")
        turns = turns - turns % 2
    index = params[:, 0] * 8 + params[:, 1] * 4 + turns
    matrices = _on_device("dihedral", images.device)[index]  # (B, 2, 2)
    # Doubled centred coordinates keep everything in integers: u2 = 2 i - (H - 1).
    u2 = (2 * torch.arange(height, device=images.device) - (height - 1))[None, :, None]
    v2 = (2 * torch.arange(width, device=images.device) - (width - 1))[None, None, :]
    m = matrices[:, :, :, None, None]
    src_u2 = m[:, 0, 0] * u2 + m[:, 0, 1] * v2
    src_v2 = m[:, 1, 0] * u2 + m[:, 1, 1] * v2
    src_rows = (src_u2 + height - 1) // 2
    src_cols = (src_v2 + width - 1) // 2
    flat = (src_rows * width + src_cols).reshape(batch, 1, height * width)
    out = images.reshape(batch, channels, height * width).gather(
        2, flat.expand(batch, channels, height * width)
    )
    out = out.reshape(batch, channels, height, width)
    return out.squeeze(1) if squeeze else out


def random_flip_rot90(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Independent random h-flip, v-flip and k·90° turn per image (see :func:`draw_flip_rot90`).

    Square images keep H, W; non-square images get only flips and half turns, so they keep their
    shape too. To apply the same draw to labels, use :func:`draw_flip_rot90` and
    :func:`flip_rot90`.

    Args:
        x: images (B, C, H, W) or label maps (B, H, W), any dtype.
        generator: a ``torch.Generator`` on ``x.device``.

    Returns:
        The transformed batch, same shape, dtype and device.
    """
    square = x.shape[-1] == x.shape[-2]
    params = draw_flip_rot90(x.shape[0], square=square, generator=generator, device=x.device)
    return flip_rot90(x, params)


# ---------------------------------------------------------------------------------------------
# Random resized crop
# ---------------------------------------------------------------------------------------------


def draw_crop_boxes(
    batch: int,
    height: int,
    width: int,
    *,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw one crop box per image, as torchvision's ``RandomResizedCrop.get_params`` does.

    For each image, up to 10 candidates: area ``~ U(scale) * H * W``, aspect ratio w / h
    log-uniform in ``ratio``, ``w = round(sqrt(area * aspect))``, ``h = round(sqrt(area /
    aspect))``; the first candidate that fits is placed uniformly at random. If none fits, the
    box is the centre crop with the aspect ratio clamped to ``ratio`` (torchvision's fallback).
    All candidates are drawn for every image (a fixed amount of randomness per call).

    Args:
        batch: number of images B.
        height, width: image size H, W.
        scale: (low, high) fraction of the image area, ``0 < low <= high <= 1``.
        ratio: (low, high) aspect ratio w / h, ``0 < low <= high``.
        generator: a ``torch.Generator`` on ``device``.
        device: where the boxes live (default: the generator's device, or the CPU).

    Returns:
        int64 boxes ``(top, left, box_height, box_width)`` inside the image.

    Shape:
        - output: (B, 4)

    Raises:
        ValueError: on a value out of range.
    """
    if height < 1 or width < 1:
        raise ValueError(f"height, width: expected >= 1, got {height}, {width}")
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale: expected 0 < low <= high <= 1, got {scale}")
    if not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"ratio: expected 0 < low <= high, got {ratio}")
    device = _resolve_device(generator, device)
    u = torch.rand((batch, _CROP_ATTEMPTS, 2), generator=generator, device=device)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_low + (log_high - log_low) * u[..., 1])
    box_w = torch.round(torch.sqrt(area * aspect)).long()
    box_h = torch.round(torch.sqrt(area / aspect)).long()
    fits = (box_w >= 1) & (box_w <= width) & (box_h >= 1) & (box_h <= height)
    first = fits.long().argmax(dim=1, keepdim=True)  # argmax returns the first maximum
    any_fit = fits.any(dim=1)
    fallback_h, fallback_w = _centre_box(height, width, ratio)
    box_h = torch.where(any_fit, box_h.gather(1, first)[:, 0], fallback_h)
    box_w = torch.where(any_fit, box_w.gather(1, first)[:, 0], fallback_w)
    place = torch.rand((batch, 2), generator=generator, device=device)
    top = torch.floor(place[:, 0] * (height - box_h + 1)).long().clamp(max=height - box_h)
    left = torch.floor(place[:, 1] * (width - box_w + 1)).long().clamp(max=width - box_w)
    top = torch.where(any_fit, top, (height - box_h) // 2)
    left = torch.where(any_fit, left, (width - box_w) // 2)
    return torch.stack((top, left, box_h, box_w), dim=1)


def _centre_box(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    in_ratio = width / height
    if in_ratio < ratio[0]:
        return int(round(width / ratio[0])), width
    if in_ratio > ratio[1]:
        return height, int(round(height * ratio[1]))
    return height, width


def resized_crop(
    x: torch.Tensor,
    boxes: torch.Tensor,
    size: int | tuple[int, int],
    mode: str = "bilinear",
) -> torch.Tensor:
    """Crop one box per image and resize it to ``size``.

    ``mode="bilinear"`` equals cropping ``x[b, :, top:top+h, left:left+w]`` and calling
    ``F.interpolate(size, mode="bilinear", align_corners=False)`` (half-pixel centres, no
    antialiasing, so shrinking a box by more than 2x aliases); it is done for the whole batch
    with one ``grid_sample``. ``mode="nearest"`` picks input pixel
    ``top + floor((p + 0.5) * h / out_h)`` (``interpolate``'s "nearest-exact", in exact integer
    arithmetic) and gathers it, so label maps of any dtype keep their values. Use the same boxes
    for an image batch (bilinear) and its label batch (nearest).

    Args:
        x: images (B, C, H, W), floating for bilinear; or label maps (B, H, W) / (B, C, H, W) of
            any dtype for nearest.
        boxes: from :func:`draw_crop_boxes`: ``(top, left, box_height, box_width)`` per image,
            inside the image, on the device of ``x``.
        size: output side, or (out_height, out_width).
        mode: "bilinear" or "nearest".

    Returns:
        The resized crops, dtype of ``x``.

    Shape:
        - x: (B, C, H, W) or (B, H, W)
        - boxes: (B, 4) int64
        - output: (B, C, out_height, out_width) or (B, out_height, out_width)

    Raises:
        ValueError: on a wrong shape, mode, size, or a non-floating tensor with bilinear.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else tuple(size)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"size: expected positive sides, got {size}")
    squeeze = x.dim() == 3
    images = x.unsqueeze(1) if squeeze else x
    if images.dim() != 4:
        raise ValueError(f"x: expected (B, C, H, W) or (B, H, W), got {tuple(x.shape)}")
    batch, channels, height, width = images.shape
    if boxes.shape != (batch, 4):
        raise ValueError(f"boxes: expected shape ({batch}, 4), got {tuple(boxes.shape)}")
    top, left, box_h, box_w = boxes.long().unbind(1)
    if mode == "nearest":
        rows = _nearest_index(top, box_h, out_h, images.device)  # (B, out_h)
        cols = _nearest_index(left, box_w, out_w, images.device)  # (B, out_w)
        out = images.gather(2, rows[:, None, :, None].expand(batch, channels, out_h, width))
        out = out.gather(3, cols[:, None, None, :].expand(batch, channels, out_h, out_w))
    elif mode == "bilinear":
        if not images.is_floating_point():
            raise ValueError(f"x: bilinear needs a floating tensor, got {images.dtype}")
        work = images.dtype if images.dtype == torch.float64 else torch.float32
        rows = _bilinear_coordinate(top, box_h, out_h, height, work)  # (B, out_h)
        cols = _bilinear_coordinate(left, box_w, out_w, width, work)  # (B, out_w)
        grid = torch.stack(
            (
                cols[:, None, :].expand(batch, out_h, out_w),
                rows[:, :, None].expand(batch, out_h, out_w),
            ),
            dim=-1,
        )
        out = F.grid_sample(
            images.to(work), grid, mode="bilinear", padding_mode="border", align_corners=False
        ).to(images.dtype)
    else:
        raise ValueError(f"mode: expected 'bilinear' or 'nearest', got {mode!r}")
    return out.squeeze(1) if squeeze else out


def _nearest_index(start: torch.Tensor, length: torch.Tensor, out: int, device) -> torch.Tensor:
    """Input index ``start + floor((p + 0.5) * length / out)``, in integers: (2p + 1) L // 2 out."""
    p = torch.arange(out, device=device)
    offset = ((2 * p[None, :] + 1) * length[:, None]) // (2 * out)
    return start[:, None] + torch.minimum(offset, length[:, None] - 1)


def _bilinear_coordinate(
    start: torch.Tensor, length: torch.Tensor, out: int, size: int, dtype: torch.dtype
) -> torch.Tensor:
    """grid_sample coordinates (align_corners=False) of ``interpolate``'s half-pixel sampling.

    Output pixel p samples the crop at ``(p + 0.5) * length / out - 0.5``, clamped to the crop's
    first and last pixel centres (``interpolate`` clamps, it never reads outside the crop).
    """
    p = torch.arange(out, device=start.device, dtype=dtype)
    start = start.to(dtype)[:, None]
    length = length.to(dtype)[:, None]
    centre = (p[None, :] + 0.5) * length / out - 0.5
    centre = torch.minimum(centre.clamp(min=0.0), length - 1.0) + start
    return (2.0 * centre + 1.0) / size - 1.0


def random_resized_crop(
    x: torch.Tensor,
    size: int | tuple[int, int],
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Random resized crop per image (torchvision's box sampling, see :func:`draw_crop_boxes`).

    For an image batch and its labels, draw the boxes once with :func:`draw_crop_boxes` and call
    :func:`resized_crop` twice (bilinear for images, nearest for labels).

    Args:
        x: images (B, C, H, W) (or label maps with ``mode="nearest"``).
        size: output side, or (out_height, out_width).
        scale: (low, high) fraction of the image area.
        ratio: (low, high) aspect ratio w / h.
        generator: a ``torch.Generator`` on ``x.device``.
        mode: "bilinear" or "nearest".

    Returns:
        The crops, resized.

    Shape:
        - x: (B, C, H, W) or (B, H, W)
        - output: (B, C, out_height, out_width) or (B, out_height, out_width)
    """
    height, width = x.shape[-2:]
    boxes = draw_crop_boxes(
        x.shape[0], height, width, scale=scale, ratio=ratio, generator=generator, device=x.device
    )
    return resized_crop(x, boxes, size, mode)


# ---------------------------------------------------------------------------------------------
# Colour jitter
# ---------------------------------------------------------------------------------------------


def draw_color_jitter(
    batch: int,
    *,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.05,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw per-image colour jitter factors with torchvision's ``ColorJitter`` ranges.

    Brightness, contrast and saturation factors are uniform in ``[max(0, 1 - v), 1 + v]``; the
    hue shift is uniform in ``[-hue, hue]`` (fraction of the hue circle).

    Args:
        batch: number of images B.
        brightness, contrast, saturation: jitter strengths, >= 0 (0 means off).
        hue: hue jitter, in [0, 0.5].
        generator: a ``torch.Generator`` on ``device``.
        device: where the factors live (default: the generator's device, or the CPU).

    Returns:
        float32 factors for :func:`adjust_colors`, columns (brightness, contrast, saturation,
        hue shift).

    Shape:
        - output: (B, 4)

    Raises:
        ValueError: on a value out of range.
    """
    strengths = {"brightness": brightness, "contrast": contrast, "saturation": saturation}
    for name, value in strengths.items():
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name}: expected a finite value >= 0, got {value}")
    if not 0 <= hue <= 0.5:
        raise ValueError(f"hue: expected a value in [0, 0.5], got {hue}")
    device = _resolve_device(generator, device)
    u = torch.rand((batch, 4), generator=generator, device=device, dtype=torch.float32)
    low = _constant((*(max(0.0, 1.0 - v) for v in strengths.values()), -hue), device)
    high = _constant((*(1.0 + v for v in strengths.values()), hue), device)
    return low + (high - low) * u


def adjust_colors(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Apply brightness, contrast, saturation and hue changes per image, in that fixed order.

    Each step matches torchvision's functional op on one image, clamping to [0, 1] after each:

    - brightness: ``x * b``;
    - contrast: blend with the image's mean grey level, ``c x + (1 - c) mean(gray)``;
    - saturation: blend with the per-pixel grey image, ``s x + (1 - s) gray``;
    - hue: rotate the hue in HSV space by the shift (``colorsys`` conventions).

    Grey is ``0.2989 R + 0.587 G + 0.114 B``. torchvision's ``ColorJitter`` draws a random order
    of the four steps per call; the order here is fixed so the whole batch is one pass per step.
    A factor of 1 (a hue shift of 0) makes that step the identity, up to rounding.

    Args:
        x: RGB images in [0, 1], floating.
        factors: from :func:`draw_color_jitter`, on the device of ``x``.

    Returns:
        The jittered images in [0, 1], same dtype.

    Shape:
        - x: (B, 3, H, W)
        - factors: (B, 4)
        - output: (B, 3, H, W)

    Raises:
        ValueError: on a wrong shape or dtype.
    """
    _check_images(x, "x")
    if x.shape[1] != 3:
        raise ValueError(f"x: expected 3 (RGB) channels, got {x.shape[1]}")
    if factors.shape != (x.shape[0], 4):
        raise ValueError(f"factors: expected shape ({x.shape[0]}, 4), got {tuple(factors.shape)}")
    f = factors.to(x.dtype)[:, :, None, None, None]  # (B, 4, 1, 1, 1)
    out = (x * f[:, 0]).clamp_(0.0, 1.0)
    mean = _gray(out).mean(dim=(-2, -1), keepdim=True)
    out = torch.lerp(mean, out, f[:, 1]).clamp_(0.0, 1.0)
    out = torch.lerp(_gray(out), out, f[:, 2]).clamp_(0.0, 1.0)
    hsv = _rgb_to_hsv(out)
    hue = torch.remainder(hsv[:, :1] + f[:, 3], 1.0)
    return _hsv_to_rgb(torch.cat((hue, hsv[:, 1:]), dim=1))


def color_jitter(
    x: torch.Tensor,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.05,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random per-image colour jitter (:func:`draw_color_jitter` then :func:`adjust_colors`).

    Args:
        x: RGB images in [0, 1], floating.
        brightness, contrast, saturation: jitter strengths, >= 0.
        hue: hue jitter in [0, 0.5].
        generator: a ``torch.Generator`` on ``x.device``.

    Returns:
        The jittered images.

    Shape:
        - x: (B, 3, H, W)
        - output: (B, 3, H, W)
    """
    factors = draw_color_jitter(
        x.shape[0],
        brightness=brightness,
        contrast=contrast,
        saturation=saturation,
        hue=hue,
        generator=generator,
        device=x.device,
    )
    return adjust_colors(x, factors)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b)[:, None]


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """Batched ``colorsys.rgb_to_hsv``: (B, 3, H, W) RGB in [0, 1] -> H, S, V in [0, 1]."""
    r, g, b = x.unbind(1)
    maxc = x.amax(dim=1)
    minc = x.amin(dim=1)
    delta = maxc - minc
    grey = delta == 0
    sat = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    safe = torch.where(grey, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(grey, torch.zeros_like(hue), torch.remainder(hue / 6.0, 1.0))
    return torch.stack((hue, sat, maxc), dim=1)


# colorsys.hsv_to_rgb: sector i of the hue circle picks (R, G, B) from (v, p, q, t).
_SECTOR_PICKS = torch.tensor(
    [
        [0, 2, 1, 1, 3, 0],  # R: v q p p t v
        [3, 0, 0, 2, 1, 1],  # G: t v v q p p
        [1, 1, 3, 0, 0, 2],  # B: p p t v v q
    ]
)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Batched ``colorsys.hsv_to_rgb``: (B, 3, H, W) H, S, V in [0, 1] -> RGB."""
    hue, sat, val = x.unbind(1)
    sector = torch.floor(hue * 6.0)
    frac = hue * 6.0 - sector
    p = val * (1.0 - sat)
    q = val * (1.0 - sat * frac)
    t = val * (1.0 - sat * (1.0 - frac))
    candidates = torch.stack((val, p, q, t), dim=1)  # (B, 4, H, W)
    sector = sector.long() % 6
    picks = _on_device("sector_picks", x.device)[:, sector].permute(1, 0, 2, 3)  # (B, 3, H, W)
    return candidates.gather(1, picks)


@functools.lru_cache(maxsize=64)
def _constant(
    values: tuple, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """A small constant tensor, made once per device: a fresh host-to-GPU copy would synchronise.

    Callers must not modify it in place. Made outside inference mode, so that a first call under
    ``torch.inference_mode`` (e.g. Lightning's validation) does not cache an inference tensor.
    """
    with torch.inference_mode(False):
        return torch.tensor(values, device=device, dtype=dtype)


@functools.lru_cache(maxsize=16)
def _on_device(name: str, device: torch.device) -> torch.Tensor:
    """The module-level lookup table ``name`` on ``device``, copied there once (see _constant)."""
    with torch.inference_mode(False):
        return {"dihedral": _DIHEDRAL, "sector_picks": _SECTOR_PICKS}[name].to(device)


def _check_images(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating tensor of shape (B, C, H, W)")


def _resolve_device(
    generator: torch.Generator | None, device: torch.device | str | None
) -> torch.device:
    """The device to draw on; a generator on another device is a ValueError."""
    if device is None:
        return torch.device(generator.device) if generator is not None else torch.device("cpu")
    device = torch.device(device)
    if generator is not None:
        gen_device = torch.device(generator.device)
        same_index = (
            gen_device.index is None or device.index is None or gen_device.index == device.index
        )
        if gen_device.type != device.type or not same_index:
            raise ValueError(
                f"generator: expected a torch.Generator on {device}, got one on {gen_device}"
            )
    return device
