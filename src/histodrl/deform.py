"""Elastic deformation, the supervisory signal of DRL.

Reference:
    - Xu, Hou et al., "Data-Efficient Histopathology Image Analysis with Deformation Representation
      Learning", BIBM 2020, Sec. III-B and eq. 1.
    - Simard et al., "Best practices for convolutional neural networks applied to visual document
      analysis", ICDAR 2003 (the recipe the paper follows).

Recipe (``METHOD.md`` (d), E16): per image, a displacement field of U(-1, 1) noise for each axis is
smoothed by a normalised Gaussian with zero padding (truncated at ``int(4 sigma + 0.5)`` taps like
``scipy.ndimage.gaussian_filter(mode="constant", truncate=4)``), multiplied by ``alpha`` and used as
a backward warp, bilinear, with reflection at the borders. Everything is batched and runs on the
device of the images, without host synchronisation: sigma and alpha may be floats or tensors on the
device, the noise comes from a ``torch.Generator`` on that device, and no value is read back (the
approximate mode sizes its coarse grid from a host-side ``sigma_min``, see :func:`elastic_deform`).
The functions are traceable by ``torch.compile`` without graph breaks (with the global RNG; dynamo
cannot trace an explicit ``torch.Generator``, which costs a graph break but no synchronisation).

Precision: the field and the sampling always run in float32 (float64 for float64 inputs), with
autocast disabled inside, so that a call in a ``bf16-mixed`` training step gives the same field as
one outside it (in bf16 the banded-matrix smoothing would quantise the field to a few thousand
values, errors up to 0.2 px).

Conventions: ``displacement[:, 0]`` is the x (column) shift and ``displacement[:, 1]`` the y (row)
shift, in pixels; ``deformed[b, :, i, j] = images[b, :, i + dy, j + dx]``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "APPROXIMATE_COARSE_SIGMA",
    "TRUNCATE",
    "approximate_grid_shape",
    "elastic_deform",
    "fold_fraction",
    "gaussian_radius",
    "gaussian_smooth",
    "paper_sigma_alpha",
    "warp",
]

# scipy's default: the Gaussian is cut at int(TRUNCATE * sigma + 0.5) pixels from its centre.
TRUNCATE = 4.0

# In the approximate mode the noise is drawn on a grid so coarse that sigma spans this many coarse
# pixels. At 3 the expected RMS displacement and autocorrelation stay within 2 % of the exact
# field's (at 2 they are off by 4 %); tests/test_deform.py pins 5 %.
APPROXIMATE_COARSE_SIGMA = 3.0

FloatOrTensor = float | torch.Tensor


def gaussian_radius(sigma: float) -> int:
    """Radius in pixels of the truncated Gaussian kernel, scipy's rule ``int(4 sigma + 0.5)``.

    Args:
        sigma: standard deviation in pixels, > 0.

    Returns:
        The kernel has ``2 * radius + 1`` taps.
    """
    return int(TRUNCATE * float(sigma) + 0.5)


def gaussian_smooth(field: torch.Tensor, sigma: FloatOrTensor) -> torch.Tensor:
    """Smooth each channel with a normalised 2-D Gaussian (eq. 1) and zero padding.

    Equals ``scipy.ndimage.gaussian_filter(field[b, c], sigma[b], mode="constant", cval=0,
    truncate=4)`` for every image b and channel c. The kernel is the sampled Gaussian on
    ``[-r, r]``, ``r = int(4 sigma + 0.5)``, normalised to sum 1 *before* padding, so values near
    the border are pulled towards zero (the paper's zero padding).

    Why a matrix product: a Gaussian with zero padding along one axis of length n is an (n, n)
    banded matrix G, so the 2-D filter is ``G_rows @ f @ G_colsᵀ``. With batched matmul this is
    several times faster on a CPU than a 61-tap separable convolution, and it allows a different
    sigma per image without a Python loop.

    Args:
        field: the fields to smooth, any floating dtype; computed in float32 (float64 for a
            float64 field) with autocast disabled, returned in the field's dtype, on its device.
        sigma: standard deviation in pixels, a float or a (B,) tensor of per-image values, each in
            ``(0, max(H, W)]``. Values are checked when they are on the CPU; a tensor on an
            accelerator is not read back (that would synchronise with the host).

    Returns:
        The smoothed fields.

    Shape:
        - field: (B, C, H, W)
        - sigma: float or (B,)
        - output: (B, C, H, W)

    Raises:
        ValueError: if ``field`` is not a 4-D floating tensor, or ``sigma`` has the wrong shape or
            a value outside ``(0, max(H, W)]``.
    """
    _check_batch(field, "field")
    batch, _, height, width = field.shape
    bound = max(height, width)
    with _full_precision(field.device):
        work = field.to(_work_dtype(field.dtype))
        sigma_t = _per_image(sigma, batch, "sigma", work, upper=bound, positive=True)
        return _smooth(work, sigma_t, sigma_t, bound).to(field.dtype)


def warp(images: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """Backward-warp images by a displacement field: ``out[b, :, i, j] = images[b, :, i + dy, j + dx]``.

    Bilinear interpolation; a sample point outside the image is reflected about the centres of the
    border pixels (``grid_sample(align_corners=True, padding_mode="reflection")``, the same as
    ``scipy.ndimage.map_coordinates(order=1, mode="mirror")``). Reflection rather than zeros,
    because black borders would be a trivial cue telling a deformed image from its original
    (``METHOD.md`` E16).

    Args:
        images: floating images on any device.
        displacement: shifts in pixels; channel 0 is the x (column) shift, channel 1 the y (row)
            shift. Computation runs in float64 when either input is float64, else in float32,
            with autocast disabled (also inside a bf16 autocast region).

    Returns:
        The warped images, in the dtype of ``images``.

    Shape:
        - images: (B, C, H, W), with H, W >= 2
        - displacement: (B, 2, H, W)
        - output: (B, C, H, W)

    Raises:
        ValueError: on wrong shapes or dtypes.
    """
    _check_batch(images, "images")
    batch, _, height, width = images.shape
    if displacement.shape != (batch, 2, height, width):
        raise ValueError(
            f"displacement: expected shape {(batch, 2, height, width)}, got {tuple(displacement.shape)}"
        )
    work = _work_dtype(images.dtype, displacement.dtype)
    with _full_precision(images.device):
        out = _warp(images.to(work), displacement.to(work))
    return out.to(images.dtype)


def elastic_deform(
    images: torch.Tensor,
    sigma: FloatOrTensor,
    alpha: FloatOrTensor,
    *,
    generator: torch.Generator | None = None,
    approximate: bool = False,
    sigma_min: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Elastically deform each image with a fresh random displacement field (paper Sec. III-B).

    ``u ~ U(-1, 1)`` per pixel and axis, ``d = alpha * gaussian_smooth(u, sigma)``, and
    ``deformed = warp(images, d)``. For ``sigma`` and ``alpha`` in the paper's range use
    :func:`paper_sigma_alpha`. Interior statistics (``METHOD.md`` (d)): RMS displacement per axis
    ``≈ 0.163 alpha / sigma`` px; at S = 256, sigma = 0.04 S, alpha = 2 S about 9 % of the pixels
    fold (see :func:`fold_fraction`).

    Args:
        images: floating images on any device.
        sigma: smoothing in pixels, a float or a (B,) tensor of per-image values, each in
            ``(0, max(H, W)]`` (checked when on the CPU).
        alpha: scale of the displacement in pixels, a float or a (B,) tensor, >= 0.
        generator: a ``torch.Generator`` on ``images.device`` for the noise; None uses the global
            RNG. The same generator state gives the same output.
        approximate: draw the noise on a coarse grid (:func:`approximate_grid_shape`, spacing
            about ``min(sigma) / 3`` px), smooth it there with sigma in coarse pixels, rescale the
            amplitude by ``1 / sqrt(step_h * step_w)`` (white noise smoothed by a Gaussian of
            width s has a standard deviation proportional to 1 / s per axis) and upsample
            bilinearly (``align_corners=True``). Its expected RMS displacement and
            autocorrelation (lags up to 2 sigma) are within 2 % of the exact field's (tested);
            fold fractions are close but not pinned. It is the exact mode when sigma < 3 px.
        sigma_min: approximate mode only: a host-side lower bound on every sigma, in pixels,
            which sizes the coarse grid (a smaller bound only makes the grid finer and the
            approximation closer). None: ``min(sigma)``, read on the host, which needs sigma to
            be a float or a CPU tensor; a sigma tensor on an accelerator needs ``sigma_min``
            (e.g. ``sigma_range[0] * S`` of :func:`paper_sigma_alpha`), because reading it back
            would synchronise with the host.

    Precision: the noise, the field and the warp are computed in float32 (float64 for float64
    images) with autocast disabled inside, so the result is the same inside a ``bf16-mixed``
    autocast region as outside it. No value is read back to the host on any device.

    The noise is ``torch.empty(B, 2, h, w).uniform_(-1, 1, generator=generator)`` in the
    displacement dtype, with ``(h, w) = (H, W)`` in the exact mode, so a reference implementation
    can redraw it from the same seed.

    Returns:
        ``(deformed, displacement)``: the deformed images (dtype of ``images``) and the
        displacement in pixels (float64 if images are float64, else float32); channel 0 is the x
        (column) shift, channel 1 the y (row) shift.

    Shape:
        - images: (B, C, H, W), H, W >= 2 (H != W is fine)
        - sigma, alpha: float or (B,)
        - deformed: (B, C, H, W)
        - displacement: (B, 2, H, W)

    Raises:
        ValueError: on wrong shapes, dtypes, values, a generator on another device, or (in the
            approximate mode) a sigma tensor on an accelerator without ``sigma_min``.
    """
    _check_batch(images, "images")
    _check_generator(generator, images.device)
    batch, _, height, width = images.shape
    work = _work_dtype(images.dtype)
    bound = max(height, width)
    if approximate:
        sigma_min = _host_sigma_min(sigma, sigma_min, bound)
    with _full_precision(images.device):
        probe = images.new_empty(0, dtype=work)
        sigma_t = _per_image(sigma, batch, "sigma", probe, upper=bound, positive=True)
        alpha_t = _per_image(alpha, batch, "alpha", probe, upper=math.inf, positive=False)
        if approximate:
            assert sigma_min is not None
            displacement = _approximate_displacement(
                batch, height, width, sigma_min, sigma_t, alpha_t, generator, probe
            )
        else:
            noise = _uniform_noise(batch, height, width, generator, probe)
            displacement = _smooth(noise, sigma_t, sigma_t, bound, scale=alpha_t)
        deformed = _warp(images.to(work), displacement)
    return deformed.to(images.dtype), displacement


def paper_sigma_alpha(
    size: int,
    batch: int,
    generator: torch.Generator | None = None,
    sigma_range: tuple[float, float] = (0.03, 0.05),
    alpha_factor: float = 2.0,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw the paper's deformation strength per image: sigma ~ U[0.03 S, 0.05 S], alpha = 2 S.

    ``METHOD.md`` (d) and E16: S is the side of the image being deformed (``min(H, W)``), sigma is
    drawn uniformly per image from ``sigma_range`` times S (equal bounds give a fixed sigma),
    alpha is ``alpha_factor * S`` for every image.

    Args:
        size: S in pixels, >= 2.
        batch: number of images B, >= 1.
        generator: a ``torch.Generator`` on ``device`` (None: the global RNG).
        sigma_range: (low, high) fractions of S with ``0 < low <= high <= 1``.
        alpha_factor: alpha / S, >= 0.
        device: where the tensors live; None means the generator's device, or the CPU.

    Returns:
        ``(sigma, alpha)`` in pixels, float32.

    Shape:
        - sigma: (B,)
        - alpha: (B,)

    Raises:
        ValueError: on a value out of range or a generator on another device.
    """
    if size < 2:
        raise ValueError(f"size: expected >= 2, got {size}")
    if batch < 1:
        raise ValueError(f"batch: expected >= 1, got {batch}")
    low, high = sigma_range
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"sigma_range: expected 0 < low <= high <= 1, got {sigma_range}")
    if not (math.isfinite(alpha_factor) and alpha_factor >= 0.0):
        raise ValueError(f"alpha_factor: expected a finite value >= 0, got {alpha_factor}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    _check_generator(generator, device)
    u = torch.rand(batch, generator=generator, device=device, dtype=torch.float32)
    sigma = size * (low + (high - low) * u)
    alpha = torch.full((batch,), alpha_factor * size, device=device, dtype=torch.float32)
    return sigma, alpha


def approximate_grid_shape(height: int, width: int, sigma: float) -> tuple[int, int]:
    """Shape of the coarse noise grid of ``elastic_deform(..., approximate=True)``.

    The coarse grid spans the same extent as the image, its corner pixels on the image's corner
    pixels, with a spacing of about ``sigma / APPROXIMATE_COARSE_SIGMA`` pixels (never below 1):
    ``n_coarse = max(2, round((n - 1) / spacing) + 1)`` per axis. The exact spacing per axis is then
    ``(n - 1) / (n_coarse - 1)``. When the result is ``(height, width)`` the approximate mode is the
    exact one.

    Args:
        height, width: image size in pixels, >= 2.
        sigma: the smallest sigma of the batch in pixels, > 0.

    Returns:
        ``(coarse_height, coarse_width)``.
    """
    if min(height, width) < 2 or not sigma > 0:
        raise ValueError(
            f"expected height, width >= 2 and sigma > 0, got {height}, {width}, {sigma}"
        )
    spacing = max(1.0, sigma / APPROXIMATE_COARSE_SIGMA)
    coarse_h = min(height, max(2, round((height - 1) / spacing) + 1))
    coarse_w = min(width, max(2, round((width - 1) / spacing) + 1))
    return coarse_h, coarse_w


def fold_fraction(displacement: torch.Tensor) -> torch.Tensor:
    """Share of pixels where the warp folds: det J <= 0 for J = I + ∇d.

    The warp maps output pixel p to the sample point p + d(p); where the determinant of its
    Jacobian is <= 0 the mapping is locally not invertible (texture is scrambled or mirrored).
    Derivatives are finite differences as in ``numpy.gradient`` (``torch.gradient``, unit spacing):
    central differences in the interior, one-sided first-order differences on the border rows and
    columns.

    Args:
        displacement: shifts in pixels, channel 0 = x (column), channel 1 = y (row).

    Returns:
        Fraction of folded pixels per image, in [0, 1], in the dtype of ``displacement``.

    Shape:
        - displacement: (B, 2, H, W), H, W >= 2
        - output: (B,)

    Raises:
        ValueError: on a wrong shape.
    """
    if displacement.dim() != 4 or displacement.shape[1] != 2:
        raise ValueError(
            f"displacement: expected shape (B, 2, H, W), got {tuple(displacement.shape)}"
        )
    if min(displacement.shape[-2:]) < 2 or not displacement.is_floating_point():
        raise ValueError("displacement: expected a floating tensor with H, W >= 2")
    d_drow, d_dcol = torch.gradient(displacement, dim=(-2, -1))
    dx_dx, dx_dy = d_dcol[:, 0], d_drow[:, 0]
    dy_dx, dy_dy = d_dcol[:, 1], d_drow[:, 1]
    det = (1.0 + dx_dx) * (1.0 + dy_dy) - dx_dy * dy_dx
    return (det <= 0).to(displacement.dtype).mean(dim=(-2, -1))


# ---------------------------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------------------------


def _smooth(
    field: torch.Tensor,
    sigma_rows: torch.Tensor,
    sigma_cols: torch.Tensor,
    sigma_bound: float,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """``scale * G_rows @ field @ G_colsᵀ`` with per-image banded Gaussian matrices.

    ``sigma_bound`` is a host-side upper bound on every sigma, so the kernel normaliser can be
    sized without reading sigma back from the device. ``scale`` (B,) is folded into G_rows, which
    saves a pass over the field.
    """
    _, _, height, width = field.shape
    g_rows = _gaussian_matrices(height, sigma_rows.to(field.dtype), sigma_bound, scale)
    g_cols = _gaussian_matrices(width, sigma_cols.to(field.dtype), sigma_bound)
    return g_rows[:, None] @ field @ g_cols[:, None].transpose(-1, -2)


def _gaussian_matrices(
    n: int, sigma: torch.Tensor, sigma_bound: float, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, n, n) matrices G[b, i, j] = w_b(j - i): truncated normalised Gaussians, zero padding.

    The normaliser runs over the whole kernel [-r, r], including taps that fall outside the image
    (scipy does the same), so it needs taps up to the largest radius ``int(4 sigma_bound + 0.5)``.
    """
    sigma = sigma[:, None]
    radius = torch.floor(TRUNCATE * sigma + 0.5)
    max_radius = max(gaussian_radius(sigma_bound), n - 1)
    taps = torch.arange(-max_radius, max_radius + 1, device=sigma.device, dtype=sigma.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2) * (taps.abs() <= radius)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    if scale is not None:
        kernel = kernel * scale.to(kernel.dtype)[:, None]
    # Toeplitz by indexing the 1-D kernels: (B, n, n) exponentials would cost more than the matmul.
    index = torch.arange(n, device=sigma.device)
    offset = index[None, :] - index[:, None] + max_radius
    return kernel[:, offset]


def _approximate_displacement(
    batch: int,
    height: int,
    width: int,
    sigma_min: float,
    sigma_t: torch.Tensor,
    alpha_t: torch.Tensor,
    generator: torch.Generator | None,
    probe: torch.Tensor,
) -> torch.Tensor:
    """alpha * smoothed noise drawn on a coarse grid and upsampled bilinearly (see elastic_deform).

    The coarse grid's size must be a Python int, so it comes from the host-side ``sigma_min``.
    """
    coarse_h, coarse_w = approximate_grid_shape(height, width, sigma_min)
    if (coarse_h, coarse_w) == (height, width):
        noise = _uniform_noise(batch, height, width, generator, probe)
        return _smooth(noise, sigma_t, sigma_t, max(height, width), scale=alpha_t)
    # Coarse pixels sit exactly on fine pixels 0 and n-1 (align_corners=True), so the spacing per
    # axis is (n - 1) / (coarse_n - 1), not the nominal one.
    step_h = (height - 1) / (coarse_h - 1)
    step_w = (width - 1) / (coarse_w - 1)
    noise = _uniform_noise(batch, coarse_h, coarse_w, generator, probe)
    # Smoothed white noise has standard deviation ∝ 1 / (sigma_rows * sigma_cols)^½ in grid
    # units, so a field smoothed in coarse units is larger by (step_h * step_w)^½.
    bound = max(height, width) / min(step_h, step_w)
    amplitude = alpha_t / math.sqrt(step_h * step_w)
    coarse = _smooth(noise, sigma_t / step_h, sigma_t / step_w, bound, scale=amplitude)
    return F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=True)


def _uniform_noise(
    batch: int, height: int, width: int, generator: torch.Generator | None, probe: torch.Tensor
) -> torch.Tensor:
    noise = torch.empty((batch, 2, height, width), device=probe.device, dtype=probe.dtype)
    return noise.uniform_(-1.0, 1.0, generator=generator)


def _warp(images: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """warp() without checks: both inputs in the working dtype, autocast already off."""
    _, _, height, width = images.shape
    dtype, device = images.dtype, images.device
    # align_corners=True maps -1 and 1 to the centres of the first and last pixels, so the grid is
    # (pixel + shift) * 2 / (n - 1) - 1, computed in one pass with addcmul. The per-axis scale is
    # made on the device by fills (a host-to-device copy of a small tensor would synchronise).
    scale_x, scale_y = 2.0 / (width - 1), 2.0 / (height - 1)
    scale = torch.stack(
        (
            torch.full((), scale_x, device=device, dtype=dtype),
            torch.full((), scale_y, device=device, dtype=dtype),
        )
    )
    cols = torch.arange(width, device=device, dtype=dtype)
    rows = torch.arange(height, device=device, dtype=dtype)
    pixels = torch.stack(torch.meshgrid(cols, rows, indexing="xy"), dim=-1)
    grid = torch.addcmul(pixels * scale - 1.0, displacement.permute(0, 2, 3, 1), scale)
    return F.grid_sample(
        images, grid, mode="bilinear", padding_mode="reflection", align_corners=True
    )


def _full_precision(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Autocast off for ``device``: the deformation computes in the dtypes it chooses."""
    is_available = getattr(torch.amp, "is_autocast_available", None)
    if is_available is not None and not is_available(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)


def _compiling() -> bool:
    is_compiling = getattr(torch.compiler, "is_compiling", None)
    return bool(is_compiling()) if is_compiling is not None else False


def _host_sigma_min(sigma: FloatOrTensor, sigma_min: float | None, bound: float) -> float:
    """The approximate mode's host-side lower bound on sigma (see elastic_deform)."""
    if sigma_min is None:
        if not isinstance(sigma, torch.Tensor):
            return float(sigma)
        if sigma.device.type != "cpu":
            raise ValueError(
                f"sigma_min: the approximate mode needs a host-side lower bound on sigma when "
                f"sigma is a tensor on {sigma.device} (reading it back would synchronise)"
            )
        return float(sigma.detach().min())
    sigma_min = float(sigma_min)
    if not 0.0 < sigma_min <= bound:
        raise ValueError(f"sigma_min: expected 0 < sigma_min <= {bound}, got {sigma_min}")
    if not isinstance(sigma, torch.Tensor):
        smallest: float | None = float(sigma)
    elif sigma.device.type == "cpu" and not _compiling():
        smallest = float(sigma.detach().min())
    else:
        smallest = None
    if smallest is not None and sigma_min > smallest * (1.0 + 1e-6):
        raise ValueError(f"sigma_min: {sigma_min} is above the smallest sigma {smallest}")
    return sigma_min


def _work_dtype(*dtypes: torch.dtype) -> torch.dtype:
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _check_batch(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating tensor of shape (B, C, H, W)")
    if x.shape[-2] < 2 or x.shape[-1] < 2:
        raise ValueError(f"{name}: expected H, W >= 2, got {tuple(x.shape)}")


def _check_generator(generator: torch.Generator | None, device: torch.device) -> None:
    if generator is None:
        return
    gen_device = torch.device(generator.device)
    same_index = (
        gen_device.index is None or device.index is None or gen_device.index == device.index
    )
    if gen_device.type != device.type or not same_index:
        raise ValueError(
            f"generator: expected a torch.Generator on {device}, got one on {gen_device}"
        )


def _per_image(
    value: FloatOrTensor,
    batch: int,
    name: str,
    probe: torch.Tensor,
    *,
    upper: float,
    positive: bool,
) -> torch.Tensor:
    """A (B,) tensor on probe's device and dtype; values checked where that needs no host sync.

    Floats are checked in Python, CPU tensors by reading them (no device involved); tensors on an
    accelerator are not read, nor are CPU tensors while ``torch.compile`` traces (a read-back
    would be a graph break).
    """
    bound = "0 <" if positive else "0 <="

    def bad() -> ValueError:  # formatted only when raising: printing a tensor reads it back
        return ValueError(f"{name}: expected values with {bound} {name} <= {upper}, got {value}")

    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            value = value.expand(batch)
        if value.shape != (batch,):
            raise ValueError(
                f"{name}: expected a float or a tensor of shape ({batch},), got {tuple(value.shape)}"
            )
        if value.device.type == "cpu" and not _compiling():
            checked = value.detach().double()
            low_ok = (checked > 0) if positive else (checked >= 0)
            if not bool((low_ok & (checked <= upper)).all()):
                raise bad()
        return value.to(device=probe.device, dtype=probe.dtype)
    number = float(value)
    low_ok = number > 0 if positive else number >= 0
    if not (low_ok and number <= upper):
        raise bad()
    return torch.full((batch,), number, device=probe.device, dtype=probe.dtype)
