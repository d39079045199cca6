"""Synthetic GLaS: H&E-like colon tissue with glands, written in the Warwick-QU on-disk format.

The folder looks like the real dataset (``DATASETS_AND_METRICS.md`` §3): ``train_{1..n}.bmp``,
``testA_{1..n}.bmp``, ``testB_{1..n}.bmp`` (not zero-padded; 24-bit RGB BMP), each with
``<name>_anno.bmp`` (8-bit single-channel BMP, 0 = stroma, 1..K = one gland each, consecutive), and
``Grade.csv`` with the real file's quirks (CR-only line endings and no final line ending, leading
spaces in three column names and in the values, rows in string order, the misspelt grade
``moderately-to-poorly differentated``).

Images: pink stroma with fibres, loose areas and scattered fibroblast and lymphocyte nuclei;
glands with a pale lumen ringed by epithelium. Benign glands are round, regular and well
separated, with one row of basal, elongated nuclei under pale goblet cells. Malignant glands are
larger, elongated and irregular, crowded, touching and partly merged (still one label each),
with stratified, enlarged, hyperchromatic nuclei, bridges across the lumen and necrotic debris
in it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from histodrl.data.tissue import (
    jitter_stains,
    jittered_grid,
    smooth_noise,
    stain_to_rgb,
    stamp_ellipses,
    star_radius,
)
from histodrl.errors import UserInputError
from histodrl.io import atomic_path, atomic_write

GLAS_SIZE = (775, 522)
"""(width, height) of most real GLaS images."""

SMALL_GLAS_SIZES = ((589, 453), (581, 442), (567, 430))
"""(width, height) of the few smaller real images (testA_2, testA_3, and the quoted minimum)."""

MIN_SIZE = 64
"""Smallest width or height the generator accepts (a gland needs room)."""

MAX_GLANDS = 255
"""Annotations are 8-bit, so at most 255 glands per image."""

GRADE_HEADER = "name,patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)"

# Fine grades and their counts in the real Grade.csv (used as sampling weights).
BENIGN_GRADES = {"healthy": 42, "adenomatous": 32}
MALIGNANT_GRADES = {
    "moderately differentiated": 47,
    "moderately-to-poorly differentated": 20,  # sic: the real file's spelling
    "poorly differentiated": 24,
}

# (name prefix, benign fraction in the real data: train 37/85, testA 33/60, testB 4/20).
GLAS_PARTS = (("train", 37 / 85), ("testA", 33 / 60), ("testB", 4 / 20))

_GLAS_FILE = re.compile(r"^(train|testA|testB)_\d+(_anno)?\.bmp$")


@dataclass(frozen=True)
class GlasLayers:
    """One rendered image with the masks it was painted from.

    Attributes:
        rgb: the image, uint8. Shape: (H, W, 3).
        labels: gland instances, int32, 0 = not a gland, 1..K consecutive. Shape: (H, W).
        nuclei: pixels inside a nucleus (any cell type). Shape: (H, W), bool.
        lumen: gland pixels that are lumen rather than epithelium. Shape: (H, W), bool.
    """

    rgb: np.ndarray
    labels: np.ndarray
    nuclei: np.ndarray
    lumen: np.ndarray


@dataclass(frozen=True)
class GlasItem:
    """What one image of a synthetic GLaS folder will be (decided before any drawing)."""

    name: str
    part: int
    index: int
    size: tuple[int, int]
    malignant: bool
    patient: int
    grade: str


# ---------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Glands:
    centers: np.ndarray  # (K, 2) y, x
    semi_axes: np.ndarray  # (K, 2)
    angles: np.ndarray  # (K,)
    amplitudes: np.ndarray  # (K, 4) outline harmonics 2..5
    phases: np.ndarray  # (K, 4)
    thickness: np.ndarray  # (K,) epithelium thickness in pixels


def _gland_scale(height: int, width: int) -> float:
    """Size factor of glands: 1 on real-sized images, down to 0.5 on small ones.

    Small test images then still hold several glands; nuclei keep their real size (~0.62 um/px).
    """
    return float(np.clip(min(height, width) / GLAS_SIZE[1], 0.5, 1.0))


def _sample_glands(rng: np.random.Generator, height: int, width: int, malignant: bool) -> _Glands:
    """Gland outlines: benign round and apart, malignant irregular and allowed to overlap."""
    scale = _gland_scale(height, width)
    n = 400
    if malignant:
        radius = rng.uniform(30.0, 95.0, n) * scale
        aspect = rng.uniform(1.0, 2.6, n)
        amplitudes = rng.normal(0.0, 1.0, (n, 4)) * np.array([0.14, 0.10, 0.07, 0.05])
        amplitudes *= rng.uniform(0.6, 1.4, (n, 1))
        thickness = rng.uniform(11.0, 20.0, n) * max(scale, 0.6)
        target_cover = rng.uniform(0.5, 0.7)
    else:
        radius = rng.uniform(38.0, 68.0, n) * scale
        aspect = rng.uniform(1.0, 1.45, n)
        amplitudes = rng.normal(0.0, 1.0, (n, 4)) * np.array([0.035, 0.02, 0.012, 0.008])
        thickness = radius * rng.uniform(0.5, 0.65, n)
        target_cover = rng.uniform(0.3, 0.45)
    # Keep every outline a closed star-shaped curve.
    amplitudes *= np.minimum(1.0, 0.6 / np.abs(amplitudes).sum(axis=1, keepdims=True))
    semi_axes = np.stack([radius * np.sqrt(aspect), radius / np.sqrt(aspect)], axis=1)
    reach = semi_axes[:, 0] * (1.0 + np.abs(amplitudes).sum(axis=1))
    gap = rng.uniform(6.0, 30.0, n) * scale
    centers = rng.uniform(0.0, 1.0, (n, 2)) * np.array([height, width])

    accepted: list[int] = []
    cover = 0.0
    for i in range(n):
        if accepted:
            d = np.hypot(*(centers[accepted] - centers[i]).T)
            if malignant:
                # Centres may come as close as 0.72 of the summed radii: glands touch and
                # partly merge, and the pixel split between them decides their labels.
                fits = np.all(d >= 0.72 * (radius[accepted] + radius[i]))
            else:
                fits = np.all(d >= reach[accepted] + reach[i] + gap[i])
            if not fits:
                continue
        accepted.append(i)
        cover += math.pi * semi_axes[i, 0] * semi_axes[i, 1]
        if cover >= target_cover * height * width or len(accepted) == MAX_GLANDS:
            break
    k = np.array(accepted, dtype=np.int64)
    return _Glands(
        centers=centers[k],
        semi_axes=semi_axes[k],
        angles=rng.uniform(0.0, math.pi, n)[k],
        amplitudes=amplitudes[k],
        phases=rng.uniform(0.0, 2 * math.pi, (n, 4))[k],
        thickness=thickness[k],
    )


def _rasterise_glands(glands: _Glands, height: int, width: int) -> np.ndarray:
    """Label map where each pixel goes to the gland in whose outline it lies deepest.

    Where outlines overlap, the pixel goes to the smallest normalised radius, so overlapping glands
    become touching instances with a shared border. Returns int32 labels 1..K by gland index.
    """
    best = np.full((height, width), np.inf, dtype=np.float32)
    owner = np.zeros((height, width), dtype=np.int32)
    reach = glands.semi_axes[:, 0] * (1.0 + np.abs(glands.amplitudes).sum(axis=1))
    for i in range(len(glands.centers)):
        cy, cx = glands.centers[i]
        y0, y1 = max(0, int(cy - reach[i]) - 1), min(height, int(cy + reach[i]) + 2)
        x0, x1 = max(0, int(cx - reach[i]) - 1), min(width, int(cx + reach[i]) + 2)
        if y0 >= y1 or x0 >= x1:
            continue
        rho = star_radius(
            np.arange(y0, y1, dtype=np.float32)[:, None] - cy,
            np.arange(x0, x1, dtype=np.float32)[None, :] - cx,
            (glands.semi_axes[i, 0], glands.semi_axes[i, 1]),
            glands.angles[i],
            glands.amplitudes[i],
            glands.phases[i],
        )
        sub_best = best[y0:y1, x0:x1]
        closer = rho < sub_best
        sub_best[closer] = rho[closer]
        owner[y0:y1, x0:x1][closer] = i + 1
    return np.where(best < 1.0, owner, 0).astype(np.int32)


def _clean_instances(raw: np.ndarray, min_area: float) -> tuple[np.ndarray, np.ndarray]:
    """One connected piece per gland, no slivers, labels 1..K consecutive in raster order.

    Keeps each raw label's largest 4-connected piece if it has at least ``min_area`` pixels; other
    pieces become stroma. Returns (labels int32, raw label of each new label, index 0 unused).
    """
    from skimage.measure import label as connected_pieces

    # Same-value connectivity: touching glands with different labels stay apart.
    pieces = connected_pieces(raw, background=0, connectivity=1)
    n = int(pieces.max())
    sizes = np.bincount(pieces.ravel(), minlength=n + 1)
    raw_of = np.zeros(n + 1, dtype=np.int64)
    raw_of[pieces.ravel()] = raw.ravel()
    ids = np.arange(1, n + 1)
    order = np.lexsort((-sizes[1:], raw_of[1:]))  # by raw label, largest piece first
    _, first = np.unique(raw_of[1:][order], return_index=True)
    keep = np.sort(ids[order][first])
    keep = keep[sizes[keep] >= min_area]
    new_id = np.zeros(n + 1, dtype=np.int32)
    new_id[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
    return new_id[pieces], np.concatenate([[0], raw_of[keep]])


def _boundary_distance(labels: np.ndarray) -> np.ndarray:
    """Distance (px) from each pixel to the nearest gland pixel that borders another label.

    The image border is not a gland border: a gland cut by the frame continues outside it.
    """
    padded = np.pad(labels, 1, mode="edge")
    boundary = (labels > 0) & (
        (padded[:-2, 1:-1] != labels)
        | (padded[2:, 1:-1] != labels)
        | (padded[1:-1, :-2] != labels)
        | (padded[1:-1, 2:] != labels)
    )
    if not boundary.any():
        return np.full(labels.shape, np.inf, dtype=np.float32)
    return ndimage.distance_transform_edt(~boundary).astype(np.float32)


def _pick(points: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Values of ``field`` at float (y, x) points (nearest pixel below)."""
    return field[points[:, 0].astype(np.int64), points[:, 1].astype(np.int64)]


def render_glas_layers(
    rng: np.random.Generator, size: tuple[int, int], malignant: bool
) -> GlasLayers:
    """Paint one GLaS-like H&E image and its gland instance labels.

    Args:
        rng: source of randomness; the same generator state gives the same image.
        size: (width, height) in pixels, each >= ``MIN_SIZE``.
        malignant: adenocarcinoma-like glands (irregular, crowded, touching) instead of benign
            ones (round, regular, well separated).

    Returns:
        the image, its labels and the nucleus and lumen masks. See :class:`GlasLayers`.
    """
    width, height = _check_size(size)
    shape = (height, width)
    scale = _gland_scale(height, width)

    glands = _sample_glands(rng, height, width, malignant)
    labels, raw_of = _clean_instances(
        _rasterise_glands(glands, height, width), min_area=150.0 * scale**2
    )
    gland = labels > 0
    dist = _boundary_distance(labels)

    # Epithelium is the band within the gland's thickness of its border; the rest is lumen.
    # Noise makes malignant lumens ragged, and malignant bridges cross the lumen (cribriform).
    thickness = np.concatenate([[0.0], glands.thickness[raw_of[1:] - 1]]).astype(np.float32)
    ragged = 0.35 if malignant else 0.08
    local_thickness = thickness[labels] * (1.0 + ragged * smooth_noise(rng, shape, 18.0))
    lumen = gland & (dist >= local_thickness)
    if malignant:
        lumen &= smooth_noise(rng, shape, 9.0) < 1.1
    epithelium = gland & ~lumen

    # Direction into the gland, perpendicular to its border: columnar nuclei point along it.
    grad_y, grad_x = np.gradient(np.where(np.isfinite(dist), dist, 0.0))
    inward = np.arctan2(grad_y, grad_x)

    nuclei = np.zeros(shape, dtype=np.float32)
    mucin = np.zeros(shape, dtype=np.float32)

    # Epithelial nuclei.
    if malignant:
        pts = jittered_grid(rng, height, width, 4.6, 0.45)
        d = _pick(pts, dist)
        keep = (
            _pick(pts, epithelium)
            & (d >= 3.0)
            & (d < 0.95 * _pick(pts, local_thickness))
            & (rng.random(len(pts)) < 0.85)
        )
        pts = pts[keep]
        a = rng.uniform(4.0, 7.5, len(pts))
        axes = np.stack([a, a * rng.uniform(0.55, 0.9, len(pts))], axis=1)
        angles = _pick(pts, inward) + rng.normal(0.0, 0.5, len(pts))
        strength = rng.uniform(1.4, 2.1, len(pts))
        amps = rng.normal(0.0, 0.08, (len(pts), 2))
    else:
        pts = jittered_grid(rng, height, width, 5.5, 0.35)
        d = _pick(pts, dist)
        keep = _pick(pts, epithelium) & (d >= 3.5) & (d < 8.5)
        pts = pts[keep]
        axes = np.stack([rng.uniform(4.2, 5.6, len(pts)), rng.uniform(2.0, 2.6, len(pts))], axis=1)
        angles = _pick(pts, inward) + rng.normal(0.0, 0.15, len(pts))
        strength = rng.uniform(1.3, 1.7, len(pts))
        amps = None
    phases = None if amps is None else rng.uniform(0.0, 2 * math.pi, amps.shape)
    stamp_ellipses(nuclei, pts, axes, angles, strength, amplitudes=amps, phases=phases)

    # Goblet cells: pale mucin vacuoles on the lumen side of benign epithelium.
    if not malignant:
        pts = jittered_grid(rng, height, width, 8.0, 0.3)
        d = _pick(pts, dist)
        pts = pts[_pick(pts, epithelium) & (d >= 9.0) & (d < _pick(pts, local_thickness) - 2.0)]
        r = rng.uniform(3.0, 4.6, len(pts))
        stamp_ellipses(
            mucin,
            pts,
            np.stack([r, r * rng.uniform(0.8, 1.0, len(pts))], axis=1),
            rng.uniform(0.0, math.pi, len(pts)),
            np.ones(len(pts)),
        )

    # Stroma: fibres along one direction, loose (torn, pale) patches, scattered cells.
    fibre_angle = rng.uniform(0.0, math.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    along = xx * math.cos(fibre_angle) + yy * math.sin(fibre_angle)
    # Wavy streaks (a warped sine), visible in some places and not in others.
    fibres = (
        0.5
        + 0.5
        * np.sin(
            2 * math.pi * along / rng.uniform(7.0, 12.0) + 5.0 * smooth_noise(rng, shape, 30.0)
        )
    ) ** 4 * np.clip(0.5 + 0.6 * smooth_noise(rng, shape, 50.0), 0.0, 1.0)
    loose = np.clip((smooth_noise(rng, shape, 30.0) - 1.8) * 2.0, 0.0, 1.0)

    n_cells = rng.poisson(height * width / 110.0)
    pts = rng.uniform(0.0, 1.0, (n_cells, 2)) * np.array([height, width])
    density = np.clip(0.55 + 0.35 * smooth_noise(rng, shape, 40.0), 0.1, 1.0)
    keep = (
        ~_pick(pts, gland)
        & (_pick(pts, loose) < 0.3)
        & (rng.random(len(pts)) < _pick(pts, density))
    )
    pts = pts[keep]
    round_cell = rng.random(len(pts)) < 0.6
    r = rng.uniform(2.2, 3.2, len(pts))
    axes = np.where(
        round_cell[:, None],
        np.stack([r, r * rng.uniform(0.85, 1.0, len(pts))], axis=1),
        np.stack([rng.uniform(4.0, 6.5, len(pts)), rng.uniform(1.2, 1.8, len(pts))], axis=1),
    )
    angles = np.where(
        round_cell,
        rng.uniform(0.0, math.pi, len(pts)),
        fibre_angle + math.pi / 2 + rng.normal(0.0, 0.3, len(pts)),
    )
    strength = np.where(
        round_cell, rng.uniform(1.5, 2.0, len(pts)), rng.uniform(1.1, 1.5, len(pts))
    )
    stamp_ellipses(nuclei, pts, axes, angles, strength)

    # Necrotic debris in malignant lumens: small dark nuclear fragments.
    if malignant:
        n_debris = rng.poisson(lumen.sum() / 400.0)
        pts = rng.uniform(0.0, 1.0, (n_debris, 2)) * np.array([height, width])
        pts = pts[_pick(pts, lumen)]
        r = rng.uniform(1.0, 2.2, len(pts))
        stamp_ellipses(
            nuclei,
            pts,
            np.stack([r, r], axis=1),
            np.zeros(len(pts)),
            rng.uniform(1.2, 1.8, len(pts)),
        )

    nucleus_mask = nuclei >= 0.6

    # Stain concentrations.
    stroma_e = (
        0.62
        + 0.10 * smooth_noise(rng, shape, 24.0)
        + 0.06 * smooth_noise(rng, shape, 5.0)
        + 0.14 * fibres
        - 0.04
    ) * (1.0 - 0.6 * loose)
    stroma_h = 0.05 + 0.02 * smooth_noise(rng, shape, 8.0)
    if malignant:
        epi_e, epi_h = 0.55, 0.28
        lumen_e = 0.12 + 0.25 * np.clip(smooth_noise(rng, shape, 8.0), 0.0, None)
        lumen_h = 0.05
    else:
        epi_e, epi_h = 0.42, 0.16
        lumen_e = 0.04 + 0.05 * np.clip(smooth_noise(rng, shape, 12.0), 0.0, None)
        lumen_h = 0.03
    cyto = 1.0 + 0.12 * smooth_noise(rng, shape, 4.0)
    eosin = np.where(epithelium, epi_e * cyto, np.where(lumen, lumen_e, stroma_e))
    hematoxylin = np.where(epithelium, epi_h * cyto, np.where(lumen, lumen_h, stroma_h))
    # Mucin is nearly unstained (faintly blue-grey) and pushes the cytoplasm aside.
    eosin = eosin * (1.0 - 0.75 * mucin)
    hematoxylin = hematoxylin * (1.0 - 0.5 * mucin) + 0.12 * mucin
    # Nuclei: hematoxylin with coarse chromatin texture, over a little eosin.
    chromatin = 0.8 + 0.2 * smooth_noise(rng, shape, 1.5)
    hematoxylin = hematoxylin + nuclei * chromatin
    eosin = eosin * (1.0 - 0.4 * np.clip(nuclei, 0.0, 1.0))

    # Optics: a slight blur, slide-to-slide stain variation, grain.
    hematoxylin = ndimage.gaussian_filter(hematoxylin.astype(np.float32), 0.7)
    eosin = ndimage.gaussian_filter(eosin.astype(np.float32), 0.7)
    h_od, e_od = jitter_stains(rng, spread=0.04)
    hematoxylin = hematoxylin * rng.uniform(0.85, 1.15)
    eosin = eosin * rng.uniform(0.8, 1.2) + rng.normal(0.0, 0.012, shape).astype(np.float32)
    illumination = rng.uniform(236.0, 250.0) + rng.uniform(-3.0, 3.0, 3)
    rgb = stain_to_rgb(
        np.clip(hematoxylin, 0.0, None),
        np.clip(eosin, 0.0, None),
        hematoxylin_od=h_od,
        eosin_od=e_od,
        illumination=illumination,
    )
    return GlasLayers(rgb=rgb, labels=labels, nuclei=nucleus_mask, lumen=lumen)


def render_glas_image(
    rng: np.random.Generator, size: tuple[int, int], malignant: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one GLaS-like H&E image and its gland instance labels.

    Args:
        rng: source of randomness; the same generator state gives the same image.
        size: (width, height) in pixels, each >= ``MIN_SIZE``.
        malignant: adenocarcinoma-like glands instead of benign ones.

    Returns:
        (rgb, labels): uint8 image, Shape: (H, W, 3); int32 labels 0..K, consecutive, one gland
        per label, K <= 255, Shape: (H, W).
    """
    layers = render_glas_layers(rng, size, malignant)
    return layers.rgb, layers.labels


# ---------------------------------------------------------------------------------------------
# The folder
# ---------------------------------------------------------------------------------------------


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size={size!r}: expected (width, height)") from None
    if (width, height) != tuple(size) or min(width, height) < MIN_SIZE:
        raise ValueError(f"size={size!r}: expected integer (width, height), each >= {MIN_SIZE}")
    return width, height


def parse_size(text: str) -> tuple[int, int]:
    """Parse a ``WIDTHxHEIGHT`` option value such as ``775x522``.

    Raises:
        UserInputError: naming the value, when it is not two integers >= ``MIN_SIZE``.
    """
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if match is None:
        raise UserInputError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 775x522")
    width, height = int(match.group(1)), int(match.group(2))
    if min(width, height) < MIN_SIZE:
        raise UserInputError(f"--size {text!r}: width and height must each be >= {MIN_SIZE}")
    return width, height


def plan_glas(
    n_train: int = 85,
    n_test_a: int = 60,
    n_test_b: int = 20,
    size: tuple[int, int] = GLAS_SIZE,
    seed: int = 0,
) -> list[GlasItem]:
    """Decide every image's name, size, class, patient and grade, like the real dataset.

    Each part has its real benign fraction (train 37/85, testA 33/60, testB 4/20, rounded). One
    image in 20 (so none when a part has fewer than 20) gets one of the real smaller sizes
    (589x453, 581x442, 567x430), scaled by ``size / (775, 522)``. Fine grades are drawn with
    the real file's frequencies; patient IDs are 1..16.

    Args:
        n_train, n_test_a, n_test_b: number of images per part (>= 0, not all 0).
        size: (width, height) of most images, each >= ``MIN_SIZE``.
        seed: the same seed gives the same plan.

    Returns:
        one item per image, parts in the order train, testA, testB.
    """
    width, height = _check_size(size)
    counts = (n_train, n_test_a, n_test_b)
    for name, n in zip(("n_train", "n_test_a", "n_test_b"), counts):
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
            raise ValueError(f"{name}={n!r}: expected an integer >= 0")
    if sum(counts) == 0:
        raise ValueError("n_train=n_test_a=n_test_b=0: expected at least one image")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    small = [
        (
            max(MIN_SIZE, round(width * w / GLAS_SIZE[0])),
            max(MIN_SIZE, round(height * h / GLAS_SIZE[1])),
        )
        for w, h in SMALL_GLAS_SIZES
    ]
    items: list[GlasItem] = []
    for part, ((prefix, benign_fraction), n) in enumerate(zip(GLAS_PARTS, counts)):
        sizes = [(width, height)] * n
        for j, i in enumerate(rng.permutation(n)[: n // 20]):
            sizes[i] = small[j % len(small)]
        malignant = np.ones(n, dtype=bool)
        malignant[rng.permutation(n)[: round(n * benign_fraction)]] = False
        patients = rng.integers(1, 17, n)
        for i in range(n):
            grades = MALIGNANT_GRADES if malignant[i] else BENIGN_GRADES
            weights = np.array(list(grades.values()), dtype=np.float64)
            grade = list(grades)[rng.choice(len(grades), p=weights / weights.sum())]
            items.append(
                GlasItem(
                    name=f"{prefix}_{i + 1}",
                    part=part,
                    index=i,
                    size=sizes[i],
                    malignant=bool(malignant[i]),
                    patient=int(patients[i]),
                    grade=grade,
                )
            )
    return items


def grade_csv_text(items: list[GlasItem]) -> str:
    """``Grade.csv`` exactly as the real file lays it out.

    Header ``name,patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)``, rows
    ``name,patient, benign|malignant, fine grade`` (values after the first comma-space), rows in
    string order of the name (``testA_1, testA_10, ...``), lines separated by a bare CR and no CR
    after the last row.
    """
    rows = sorted(
        f"{it.name},{it.patient}, {'malignant' if it.malignant else 'benign'}, {it.grade}"
        for it in items
    )
    return "\r".join([GRADE_HEADER, *rows])


def check_output_folder(
    out: Path, is_dataset_file: Callable[[str], bool], kind: str, overwrite: bool
) -> None:
    """Refuse a file, or a folder already holding files of a ``kind`` dataset unless ``overwrite``.

    Raises:
        UserInputError: naming the folder and one of the files found.
    """
    if out.exists() and not out.is_dir():
        raise UserInputError(
            f"{out}: expected a folder to write the {kind} dataset into, found a file"
        )
    if overwrite or not out.is_dir():
        return
    existing = sorted(p.name for p in out.iterdir() if is_dataset_file(p.name))
    if existing:
        raise UserInputError(
            f"{out}: already holds a {kind} dataset ({existing[0]}, ...); "
            "use --overwrite (overwrite=True) to replace it"
        )


def _is_glas_file(name: str) -> bool:
    return name == "Grade.csv" or _GLAS_FILE.match(name) is not None


def make_glas(
    out_dir: str | Path,
    n_train: int = 85,
    n_test_a: int = 60,
    n_test_b: int = 20,
    size: tuple[int, int] = GLAS_SIZE,
    seed: int = 0,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic GLaS folder readable as ``glas:out_dir``.

    Every file is written atomically; ``Grade.csv`` comes last (an old one is removed first), so
    a folder with a Grade.csv is complete. With ``overwrite``, GLaS files of an earlier dataset
    that the new one does not have (``train_90.bmp`` when writing 85) are removed after the new
    files are in place.

    Args:
        out_dir: the folder (created if missing).
        n_train, n_test_a, n_test_b: images per part (>= 0, not all 0); the defaults are the real
            dataset's 85, 60 and 20.
        size: (width, height) of most images, each >= ``MIN_SIZE``; see :func:`plan_glas`.
        seed: same seed, same files. Image i of a part depends only on (seed, part, i, its size
            and class), not on how many images the other parts have.
        overwrite: replace the GLaS files of a dataset already in ``out_dir``.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        UserInputError: ``out_dir`` is a file, or already holds GLaS files and not ``overwrite``.
        ValueError: a count or the size is out of range.
    """
    from PIL import Image

    items = plan_glas(n_train, n_test_a, n_test_b, size, seed)
    out = Path(out_dir)
    check_output_folder(out, _is_glas_file, "GLaS", overwrite)
    out.mkdir(parents=True, exist_ok=True)
    # An overwrite interrupted half-way must not leave the old Grade.csv vouching for new images.
    (out / "Grade.csv").unlink(missing_ok=True)
    written = {"Grade.csv"}
    for it in items:
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1 + it.part, it.index)))
        rgb, labels = render_glas_image(rng, it.size, it.malignant)
        for name, image in (
            (f"{it.name}.bmp", Image.fromarray(rgb, "RGB")),
            (f"{it.name}_anno.bmp", Image.fromarray(labels.astype(np.uint8), "L")),
        ):
            with atomic_path(out / name) as tmp:
                image.save(tmp, format="BMP")
            written.add(name)
    # Bytes, so that no platform turns the bare CRs into anything else.
    text = grade_csv_text(items).encode("ascii")
    atomic_write(out / "Grade.csv", lambda f: f.write(text), mode="wb")
    for stale in out.iterdir():
        if _is_glas_file(stale.name) and stale.name not in written:
            stale.unlink()
    return out
