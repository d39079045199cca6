"""Vectorised drawing helpers for synthetic H&E tissue (used by the GLaS and PCam generators).

Images are painted as two stain-concentration maps, hematoxylin (nuclei, blue-purple) and eosin
(cytoplasm and stroma, pink), and turned into RGB with the Beer-Lambert law, as a brightfield
microscope does: ``I = I0 * exp(-(h * OD_H + e * OD_E))``. Shapes (nuclei, glands) are star-shaped
ellipses, ``rho(p) < 1`` with ``rho`` the elliptic radius divided by a low-order Fourier
perturbation of the outline. Everything is numpy broadcasting over bounding boxes; there are no
per-pixel Python loops.
"""

from __future__ import annotations

import math

import numpy as np

# Reference stain optical densities (per unit concentration) for R, G, B, as used by Macenko et al.,
# "A method for normalizing histology slides for quantitative analysis", ISBI 2009 (the reference
# matrix of common implementations). Rows are unit vectors.
HEMATOXYLIN_OD = np.array([0.5626, 0.7201, 0.4062])
EOSIN_OD = np.array([0.2159, 0.8012, 0.5581])

# Up to this many coarse nodes along an axis, smooth_noise interpolates with a dense matrix
# product (BLAS); beyond it, with 4 gathers (O(n) instead of O(n * nodes)).
_DENSE_NODES = 128

# Ellipses are drawn in chunks of this many so that the (N, box, box) temporaries stay small.
_STAMP_CHUNK = 8192


def _cubic_bspline(t: np.ndarray) -> np.ndarray:
    """The cubic B-spline kernel (support [-2, 2], C2-smooth, a partition of unity)."""
    t = np.abs(t)
    return np.where(
        t < 1.0, 2.0 / 3.0 - t**2 + 0.5 * t**3, np.where(t < 2.0, (2.0 - t) ** 3 / 6.0, 0.0)
    )


def _upsampling_taps(n: int, cell: float) -> tuple[int, np.ndarray, np.ndarray]:
    """The 4 coarse nodes (spaced ``cell`` px) and weights that interpolate each of n pixels.

    Weights are divided by the root of their sum of squares, so that white unit-variance coarse
    noise becomes unit-variance smooth noise at every pixel.

    Returns:
        (number of coarse nodes, node index Shape: (n, 4), weight Shape: (n, 4)).
    """
    m = math.ceil(n / cell) + 4
    # Node j sits at pixel (j - 2) * cell, so pixel i lies between nodes floor(i/cell + 2) and +1.
    s = np.arange(n, dtype=np.float64) / cell + 2.0
    index = np.floor(s).astype(np.int64)[:, None] + np.arange(-1, 3)
    w = _cubic_bspline(s[:, None] - index)
    return m, index, (w / np.sqrt((w**2).sum(axis=1, keepdims=True))).astype(np.float32)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cell: float) -> np.ndarray:
    """Smooth Gaussian noise: white noise on a grid ``cell`` pixels apart, B-spline interpolated.

    Separable cubic B-spline interpolation (4 taps per axis), so the cost is O(H*W) for any cell.

    Args:
        rng: source of randomness.
        shape: ``(..., H, W)``; leading axes are independent fields (a batch).
        cell: feature size in pixels (> 0); larger is smoother.

    Returns:
        float32 array of ``shape`` with mean 0 and variance 1 at every pixel.
        Shape: (..., H, W).
    """
    if cell <= 0:
        raise ValueError(f"cell={cell}: expected a positive feature size in pixels")
    *batch, h, w = shape
    mh, index_y, weight_y = _upsampling_taps(h, cell)
    mw, index_x, weight_x = _upsampling_taps(w, cell)
    coarse = rng.standard_normal((*batch, mh, mw), dtype=np.float32)
    if mh <= _DENSE_NODES:
        rows = _dense(index_y, weight_y, mh) @ coarse
    else:
        rows = sum(coarse[..., index_y[:, t], :] * weight_y[:, t, None] for t in range(4))
    if mw <= _DENSE_NODES:
        return rows @ _dense(index_x, weight_x, mw).T
    return sum(rows[..., index_x[:, t]] * weight_x[:, t] for t in range(4))


def _dense(index: np.ndarray, weight: np.ndarray, m: int) -> np.ndarray:
    """The (n, m) interpolation matrix with the 4 taps of each row."""
    matrix = np.zeros((len(index), m), dtype=np.float32)
    np.put_along_axis(matrix, index, weight, axis=1)
    return matrix


def jittered_grid(
    rng: np.random.Generator, height: int, width: int, spacing: float, jitter: float = 0.4
) -> np.ndarray:
    """Points on a square grid ``spacing`` pixels apart, each moved by up to ``jitter*spacing``.

    Gives evenly spread, non-clumping positions (regular nuclei, goblet cells) cheaply.

    Returns:
        float64 (y, x) positions inside [0, height) x [0, width).
        Shape: (M, 2).
    """
    ys = np.arange(spacing / 2, height, spacing)
    xs = np.arange(spacing / 2, width, spacing)
    grid = np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2)
    grid = grid + rng.uniform(-jitter, jitter, grid.shape) * spacing
    inside = (grid[:, 0] >= 0) & (grid[:, 0] < height) & (grid[:, 1] >= 0) & (grid[:, 1] < width)
    return grid[inside]


def star_radius(
    dy: np.ndarray,
    dx: np.ndarray,
    semi_axes: tuple[np.ndarray, np.ndarray],
    angle: np.ndarray,
    amplitudes: np.ndarray | None = None,
    phases: np.ndarray | None = None,
) -> np.ndarray:
    """Normalised radius of points relative to star-shaped ellipses: inside where < 1.

    ``rho = sqrt((u/a)^2 + (v/b)^2) / (1 + sum_k A_k cos(k*phi + phase_k))`` with (u, v) the offset
    rotated into the ellipse frame, phi its polar angle there and k = 2, 3, ... (harmonic 1 would
    only shift the shape). All arguments broadcast against each other.

    Args:
        dy, dx: offsets from the shape's centre in pixels (rows down, columns right).
        semi_axes: (a, b), semi-axis along ``angle`` and across it, in pixels (> 0).
        angle: direction of the a axis, radians from the +x (column) axis towards +y (rows).
        amplitudes: outline perturbation A_k for k = 2..K+1 on a trailing axis; keep
            sum |A_k| < 1 so that the outline stays a closed star-shaped curve.
        phases: phase of each harmonic, same shape as ``amplitudes``.

    Returns:
        rho, broadcast shape of the inputs.
    """
    a, b = semi_axes
    cos, sin = np.cos(angle), np.sin(angle)
    # (u/a, v/b) with the per-shape factors folded first: when dy and dx are a column and a row
    # (a bounding box), only the two sums below run over every pixel.
    ua = dx * (cos / a) + dy * (sin / a)
    vb = dy * (cos / b) - dx * (sin / b)
    rho = np.sqrt(ua * ua + vb * vb)
    if amplitudes is None:
        return rho
    # sum_k A_k cos(k*phi + phase_k) = Re(sum_k c_k z^k) with c_k = A_k e^(i phase_k) and
    # z = e^(i phi) the unit direction in the ellipse frame: a Horner polynomial, no trigonometry
    # per pixel.
    z = (ua + 1j * vb) / np.where(rho > 0, rho, 1.0)
    coef = (amplitudes * np.exp(1j * phases)).astype(z.dtype)  # complex64 for float32 offsets
    poly = coef[..., -1]
    for k in range(amplitudes.shape[-1] - 2, -1, -1):
        poly = poly * z + coef[..., k]
    return rho / (1.0 + (poly * z * z).real)


def stamp_ellipses(
    canvas: np.ndarray,
    centers: np.ndarray,
    semi_axes: np.ndarray,
    angles: np.ndarray,
    values: np.ndarray,
    *,
    batch_index: np.ndarray | None = None,
    amplitudes: np.ndarray | None = None,
    phases: np.ndarray | None = None,
) -> None:
    """Paint soft-edged star-shaped ellipses into ``canvas`` in place, keeping the maximum.

    Each shape covers its pixels with ``coverage = clip(0.5 + (1 - rho) * b, 0, 1)`` (about one
    pixel of anti-aliasing at the outline; rho from :func:`star_radius`), and the canvas becomes
    ``max(canvas, value * coverage)``. Pixels outside the canvas are dropped, so shapes may be
    partly or wholly off the image.

    Args:
        canvas: C-contiguous float array. Shape: (H, W), or (B, H, W) with ``batch_index``.
        centers: (y, x) centres in pixels. Shape: (N, 2).
        semi_axes: (a, b) semi-axes in pixels, a along ``angles``. Shape: (N, 2).
        angles: direction of the a axis in radians. Shape: (N,).
        values: peak value of each shape. Shape: (N,).
        batch_index: which image of a (B, H, W) canvas each shape goes to. Shape: (N,).
        amplitudes, phases: outline perturbation, see :func:`star_radius`. Shape: (N, K).
    """
    if not canvas.flags.c_contiguous:
        raise ValueError(
            "canvas: expected a C-contiguous array (it is painted through a flat view)"
        )
    if (canvas.ndim == 3) != (batch_index is not None):
        raise ValueError(
            f"canvas.ndim={canvas.ndim}: a (B, H, W) canvas needs batch_index, an (H, W) one must not"
        )
    n = len(centers)
    if n == 0:
        return
    h, w = canvas.shape[-2:]
    flat = canvas.reshape(-1)
    # Coverage is > 0 for rho < 1 + 1/(2b), i.e. within reach * (1 + 1/(2b)) of the centre, and
    # every pixel that close is within ceil(that) of floor(centre) along each axis.
    reach = semi_axes.max(axis=1)
    if amplitudes is not None:
        reach = reach * (1.0 + np.abs(amplitudes).sum(axis=1))
    half = math.ceil(float((reach * (1.0 + 0.5 / semi_axes.min(axis=1))).max()))
    offsets = np.arange(-half, half + 1)
    for lo in range(0, n, _STAMP_CHUNK):
        sl = slice(lo, lo + _STAMP_CHUNK)
        cy = np.floor(centers[sl, 0]).astype(np.int64)
        cx = np.floor(centers[sl, 1]).astype(np.int64)
        py = cy[:, None, None] + offsets[None, :, None]
        px = cx[:, None, None] + offsets[None, None, :]
        # float32 offsets: the shapes are small, and this halves the cost of the hot loop.
        dy = (py - centers[sl, 0, None, None]).astype(np.float32)
        dx = (px - centers[sl, 1, None, None]).astype(np.float32)
        amp = None if amplitudes is None else amplitudes[sl, None, None, :]
        pha = None if phases is None else phases[sl, None, None, :]
        b = semi_axes[sl, 1, None, None].astype(np.float32)
        rho = star_radius(
            dy,
            dx,
            (semi_axes[sl, 0, None, None].astype(np.float32), b),
            angles[sl, None, None].astype(np.float32),
            amp,
            pha,
        )
        # 0.5 + (1 - rho) * b, with the per-shape part computed once per shape.
        coverage = (0.5 + b) - rho * b
        np.clip(coverage, 0.0, 1.0, out=coverage)
        keep = (coverage > 0) & ((py >= 0) & (py < h)) & ((px >= 0) & (px < w))
        offset = py * w
        if batch_index is not None:
            offset = offset + batch_index[sl, None, None].astype(np.int64) * (h * w)
        index = offset + px
        paint = coverage * values[sl, None, None].astype(np.float32)
        np.maximum.at(flat, index[keep], paint[keep].astype(canvas.dtype, copy=False))


def stain_to_rgb(
    hematoxylin: np.ndarray,
    eosin: np.ndarray,
    *,
    hematoxylin_od: np.ndarray = HEMATOXYLIN_OD,
    eosin_od: np.ndarray = EOSIN_OD,
    illumination: np.ndarray | float = 245.0,
) -> np.ndarray:
    """Beer-Lambert colour of a brightfield H&E image from its two stain concentration maps.

    ``rgb = round(illumination * exp(-(hematoxylin * hematoxylin_od + eosin * eosin_od)))``.

    Args:
        hematoxylin, eosin: concentrations; negative values count as 0. Shape: (..., H, W).
        hematoxylin_od, eosin_od: non-negative optical density per unit concentration for R, G,
            B. Shape: (3,), or (..., 3) broadcasting against the leading axes of the maps.
        illumination: light through an empty slide, per channel, clipped to 0..255.
            Shape: scalar, (3,) or (..., 3) like the stain vectors.

    Returns:
        uint8 RGB image. Shape: (..., H, W, 3).
    """
    h = np.maximum(np.asarray(hematoxylin, dtype=np.float32), 0.0)
    e = np.maximum(np.asarray(eosin, dtype=np.float32), 0.0)

    def channels_first(v: np.ndarray | float) -> np.ndarray:
        # (..., 3) -> (3, ..., 1, 1): the channel loop is outermost and numpy's inner loops run
        # along image rows instead of over 3 channels.
        v = np.asarray(v, dtype=np.float32)
        if v.ndim == 0:
            return v
        return np.moveaxis(v, -1, 0).reshape(v.shape[-1:] + v.shape[:-1] + (1, 1))

    light = np.clip(channels_first(illumination), 0.0, 255.0)
    rgb = h[None] * -channels_first(hematoxylin_od)
    rgb -= e[None] * channels_first(eosin_od)
    np.exp(rgb, out=rgb)
    rgb *= light
    # Values lie in [0, 255] (optical density >= 0), so adding 0.5 and truncating rounds.
    rgb += 0.5
    return np.ascontiguousarray(np.moveaxis(rgb.astype(np.uint8), 0, -1))


def jitter_stains(
    rng: np.random.Generator, n: int | None = None, spread: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Randomly perturbed unit stain vectors, mimicking slide-to-slide stain differences.

    Returns:
        (hematoxylin_od, eosin_od). Shape: (3,) each, or (n, 3) when ``n`` is given.
    """
    shape = (3,) if n is None else (n, 3)
    h = np.abs(HEMATOXYLIN_OD + rng.normal(0.0, spread, shape))
    e = np.abs(EOSIN_OD + rng.normal(0.0, spread, shape))
    return (
        h / np.linalg.norm(h, axis=-1, keepdims=True),
        e / np.linalg.norm(e, axis=-1, keepdims=True),
    )
