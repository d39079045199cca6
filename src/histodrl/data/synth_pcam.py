"""Synthetic PCam: lymph-node-like 96x96 H&E patches, written in the PatchCamelyon on-disk format.

The folder holds what the real dataset holds once its ``.h5.gz`` files are gunzipped
(``DATASETS_AND_METRICS.md`` §4), for each split ``train``, ``valid`` and ``test``:

- ``camelyonpatch_level_2_split_{split}_x.h5``: key ``x``, (N, 96, 96, 3) uint8 RGB;
- ``camelyonpatch_level_2_split_{split}_y.h5``: key ``y``, (N, 1, 1, 1) uint8 0/1;
- ``camelyonpatch_level_2_split_{split}_meta.csv``: columns (unnamed index), ``coord_y``,
  ``coord_x``, ``tumor_patch``, ``center_tumor_patch``, ``wsi``, booleans as ``True``/``False``.

Patches show dense small dark lymphocytes over pale parenchyma, sometimes fat or sinus spaces;
some hold a nest of tumour cells (large, pleomorphic, dark nuclei in pink cytoplasm). As in PCam,
the label is 1 exactly when a tumour pixel (a pixel inside a tumour nucleus) lies in the centre
32x32 square; about half of the negatives carry tumour cells in the outer ring only, so the outer
ring alone does not give the label away. Splits are balanced 50/50 and written in chunks, so the
real sizes (262144 / 32768 / 32768) fit in bounded memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from histodrl.data.synth_glas import check_output_folder
from histodrl.data.tissue import (
    jitter_stains,
    jittered_grid,
    smooth_noise,
    stain_to_rgb,
    stamp_ellipses,
)
from histodrl.io import atomic_path

PATCH_SIZE = 96
CENTRE = (32, 64)
"""The centre square is rows and columns CENTRE[0] .. CENTRE[1]-1 (the middle 32x32)."""

PCAM_SPLITS = ("train", "valid", "test")
PCAM_PREFIX = "camelyonpatch_level_2_split_"
META_HEADER = ",coord_y,coord_x,tumor_patch,center_tumor_patch,wsi"

# Patches are drawn and written this many at a time (memory stays bounded for any N). Fixed, so
# that the output for a seed does not depend on anything but the seed and the counts.
_CHUNK = 512
# HDF5 chunk of the x datasets: 32 patches (0.9 MB) fit the default 1 MB chunk cache.
_H5_CHUNK = 32


def _pcam_file(out_dir: str | Path, split: str, kind: str) -> Path:
    """Path of one PCam file: ``kind`` is ``x.h5``, ``y.h5`` or ``meta.csv``."""
    return Path(out_dir) / f"{PCAM_PREFIX}{split}_{kind}"


@dataclass(frozen=True)
class TumourCells:
    """Tumour cells to paint into a batch of patches (M cells over all patches).

    Attributes:
        patch: index of the patch each cell is in. Shape: (M,), int.
        centers: (y, x) nucleus centres in pixels. Shape: (M, 2).
        semi_axes: nucleus semi-axes (a, b) with a >= b, pixels. Shape: (M, 2).
        angles: direction of the a axis, radians. Shape: (M,).
        amplitudes, phases: nucleus outline harmonics 2..K+1 (see
            :func:`histodrl.data.tissue.star_radius`); sum |amplitudes| < 1. Shape: (M, K).
        strength: hematoxylin concentration of each nucleus. Shape: (M,).
    """

    patch: np.ndarray
    centers: np.ndarray
    semi_axes: np.ndarray
    angles: np.ndarray
    amplitudes: np.ndarray
    phases: np.ndarray
    strength: np.ndarray

    def reach(self) -> np.ndarray:
        """Radius around each centre outside which its nucleus has no pixel. Shape: (M,)."""
        return self.semi_axes[:, 0] * (1.0 + np.abs(self.amplitudes).sum(axis=1))


@dataclass(frozen=True)
class PcamBatch:
    """Rendered patches with their tumour masks and labels.

    Attributes:
        x: images, uint8 RGB. Shape: (N, 96, 96, 3).
        tumour: pixels inside a tumour nucleus. Shape: (N, 96, 96), bool.
        y: 1 where the centre 32x32 holds a tumour pixel (``center_tumor_patch``). Shape: (N,), uint8.
        tumour_patch: some tumour pixel anywhere in the patch. Shape: (N,), bool.
    """

    x: np.ndarray
    tumour: np.ndarray
    y: np.ndarray
    tumour_patch: np.ndarray


def _distance_to_centre(points: np.ndarray) -> np.ndarray:
    """Euclidean distance from (y, x) points to the centre square's pixel grid (0 inside)."""
    lo, hi = CENTRE[0], CENTRE[1] - 1
    gap = np.maximum(np.maximum(lo - points, points - hi), 0.0)
    return np.hypot(gap[:, 0], gap[:, 1])


def sample_tumour_cells(
    rng: np.random.Generator, labels: np.ndarray, ring_fraction: float = 0.5
) -> TumourCells:
    """Tumour nests that make each patch's centre label come out as ``labels`` says.

    A positive patch gets a nest centred in the middle of the patch whose first cell sits within
    the centre square; its other cells spread around it and may reach the outer ring. A negative
    patch gets, with probability ``ring_fraction``, a nest in the outer ring from which every cell
    that could touch the centre square is removed; the others have no tumour.

    Args:
        rng: source of randomness.
        labels: wanted centre label of each patch, 0 or 1. Shape: (N,).
        ring_fraction: share of negatives with tumour cells in the outer ring, in [0, 1].

    Returns:
        the cells, for :func:`draw_pcam_patches`.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels: expected a 1-D array of 0/1, got shape {labels.shape}")
    if not 0.0 <= ring_fraction <= 1.0:
        raise ValueError(f"ring_fraction={ring_fraction}: expected a value in [0, 1]")
    n = len(labels)
    positive = labels == 1
    ring = ~positive & (rng.random(n) < ring_fraction)
    with_nest = np.flatnonzero(positive | ring)

    # Nest centres: positives in the middle 20x20, ring nests near an edge of the patch.
    nest = rng.uniform(38.0, 58.0, (n, 2))
    side = rng.integers(0, 4, n)
    depth = rng.uniform(2.0, 18.0, n)
    along = rng.uniform(4.0, PATCH_SIZE - 4.0, n)
    edge_y = np.choose(side, [depth, PATCH_SIZE - 1 - depth, along, along])
    edge_x = np.choose(side, [along, along, depth, PATCH_SIZE - 1 - depth])
    nest = np.where(ring[:, None], np.stack([edge_y, edge_x], axis=1), nest)

    counts = rng.integers(4, 19, n)[with_nest]
    patch = np.repeat(with_nest, counts)
    m = len(patch)
    spread = rng.uniform(6.0, 16.0, n)[patch]
    offsets = rng.normal(0.0, 1.0, (m, 2)) * spread[:, None]
    # The first cell of a positive nest sits on the nest centre, inside the centre square.
    first = np.zeros(m, dtype=bool)
    first[np.cumsum(counts) - counts] = True
    offsets[first] = 0.0
    centers = nest[patch] + offsets
    a = rng.uniform(4.5, 8.0, m)
    semi_axes = np.stack([a, a * rng.uniform(0.6, 0.95, m)], axis=1)
    amplitudes = rng.normal(0.0, 0.07, (m, 3))
    amplitudes *= np.minimum(1.0, 0.5 / np.abs(amplitudes).sum(axis=1, keepdims=True))
    cells = TumourCells(
        patch=patch,
        centers=centers,
        semi_axes=semi_axes,
        angles=rng.uniform(0.0, math.pi, m),
        amplitudes=amplitudes,
        phases=rng.uniform(0.0, 2 * math.pi, (m, 3)),
        strength=rng.uniform(1.4, 2.0, m),
    )
    # Negatives keep only cells whose every pixel stays off the centre square (half a pixel spare).
    keep = positive[patch] | (_distance_to_centre(centers) > cells.reach() + 0.5)
    return TumourCells(*(getattr(cells, f)[keep] for f in TumourCells.__dataclass_fields__))


def draw_pcam_patches(rng: np.random.Generator, n: int, cells: TumourCells) -> PcamBatch:
    """Paint ``n`` lymph-node patches with the given tumour cells; labels follow from the pixels.

    Args:
        rng: source of randomness (tissue, lymphocytes, stain); the same state gives the same
            patches.
        n: number of patches (>= 0).
        cells: tumour cells, ``cells.patch`` in [0, n).

    Returns:
        the patches, their tumour masks, ``y`` (centre 32x32 has a tumour pixel) and
        ``tumour_patch`` (any tumour pixel), see :class:`PcamBatch`.
    """
    if n < 0:
        raise ValueError(f"n={n}: expected a number of patches >= 0")
    if len(cells.patch) and not (0 <= cells.patch.min() and cells.patch.max() < n):
        raise ValueError(f"cells.patch: expected patch indices in [0, {n})")
    s = PATCH_SIZE
    shape = (n, s, s)

    # Tumour nuclei: the exact mask (rho <= 1 is coverage >= 0.5) decides the labels.
    tumour_cover = np.zeros(shape, dtype=np.float32)
    stamp_ellipses(
        tumour_cover,
        cells.centers,
        cells.semi_axes,
        cells.angles,
        np.ones(len(cells.patch)),
        batch_index=cells.patch,
        amplitudes=cells.amplitudes,
        phases=cells.phases,
    )
    tumour = tumour_cover >= 0.5
    tumour_nuclei = np.zeros(shape, dtype=np.float32)
    stamp_ellipses(
        tumour_nuclei,
        cells.centers,
        cells.semi_axes,
        cells.angles,
        cells.strength,
        batch_index=cells.patch,
        amplitudes=cells.amplitudes,
        phases=cells.phases,
    )
    # Pink cytoplasm around each tumour nucleus, and a small nucleolus in it.
    cytoplasm = np.zeros(shape, dtype=np.float32)
    stamp_ellipses(
        cytoplasm,
        cells.centers,
        cells.semi_axes * 1.9,
        cells.angles,
        np.ones(len(cells.patch)),
        batch_index=cells.patch,
    )
    r = rng.uniform(0.8, 1.4, len(cells.patch))
    stamp_ellipses(
        tumour_nuclei,
        cells.centers + rng.normal(0.0, 1.0, cells.centers.shape),
        np.stack([r, r], axis=1),
        np.zeros(len(cells.patch)),
        cells.strength + 0.5,
        batch_index=cells.patch,
    )

    # Fat or sinus spaces in some patches; none where tumour grows.
    threshold = np.where(rng.random(n) < 0.3, rng.uniform(0.6, 1.6, n), np.inf).astype(np.float32)
    fat = np.clip((smooth_noise(rng, shape, 14.0) - threshold[:, None, None]) * 3.0, 0.0, 1.0)
    fat *= 1.0 - np.clip(cytoplasm * 2.0, 0.0, 1.0)

    # Lymphocytes: small, round, very dark, densely packed, none in fat or tumour cytoplasm.
    grid = jittered_grid(rng, s, s, 5.2, 0.0)
    pts = grid[None] + rng.uniform(-0.35, 0.35, (n, len(grid), 2)) * 5.2
    pts = np.clip(pts, 0.0, s - 1e-3).reshape(-1, 2)
    which = np.repeat(np.arange(n), len(grid))
    density = np.clip(
        rng.uniform(0.55, 0.95, (n, 1, 1)).astype(np.float32)
        + 0.25 * smooth_noise(rng, shape, 20.0),
        0.0,
        1.0,
    )
    yi, xi = pts[:, 0].astype(np.int64), pts[:, 1].astype(np.int64)
    keep = (
        (rng.random(len(pts)) < density[which, yi, xi])
        & (fat[which, yi, xi] < 0.3)
        & (cytoplasm[which, yi, xi] < 0.3)
    )
    r = rng.uniform(2.3, 3.1, int(keep.sum()))
    lymphocytes = np.zeros(shape, dtype=np.float32)
    stamp_ellipses(
        lymphocytes,
        pts[keep],
        np.stack([r, r * rng.uniform(0.85, 1.0, len(r))], axis=1),
        rng.uniform(0.0, math.pi, len(r)),
        rng.uniform(1.6, 2.1, len(r)),
        batch_index=which[keep],
    )

    # Stain concentrations: pale parenchyma, pink tumour cytoplasm, dark nuclei.
    chromatin = 0.8 + 0.2 * smooth_noise(rng, shape, 1.5)
    eosin = (0.30 + 0.08 * smooth_noise(rng, shape, 10.0)) * (1.0 - fat)
    eosin = np.maximum(eosin, 0.55 * cytoplasm)
    hematoxylin = (0.10 + 0.03 * smooth_noise(rng, shape, 6.0)) * (1.0 - fat)
    hematoxylin = hematoxylin + lymphocytes + tumour_nuclei * chromatin
    eosin = eosin * (1.0 - 0.3 * np.clip(lymphocytes + tumour_nuclei, 0.0, 1.0))

    hematoxylin = ndimage.gaussian_filter(hematoxylin, (0.0, 0.6, 0.6))
    eosin = ndimage.gaussian_filter(eosin, (0.0, 0.6, 0.6))
    h_od, e_od = jitter_stains(rng, n, spread=0.05)
    hematoxylin *= rng.uniform(0.8, 1.2, (n, 1, 1)).astype(np.float32)
    eosin = eosin * rng.uniform(0.8, 1.25, (n, 1, 1)).astype(np.float32) + rng.normal(
        0.0, 0.012, shape
    ).astype(np.float32)
    illumination = rng.uniform(232.0, 250.0, (n, 1)) + rng.uniform(-3.0, 3.0, (n, 3))
    x = stain_to_rgb(
        np.clip(hematoxylin, 0.0, None),
        np.clip(eosin, 0.0, None),
        hematoxylin_od=h_od,
        eosin_od=e_od,
        illumination=illumination,
    )
    lo, hi = CENTRE
    return PcamBatch(
        x=x,
        tumour=tumour,
        y=tumour[:, lo:hi, lo:hi].any(axis=(1, 2)).astype(np.uint8),
        tumour_patch=tumour.any(axis=(1, 2)),
    )


def render_pcam_patches(
    rng: np.random.Generator, labels: np.ndarray, ring_fraction: float = 0.5
) -> PcamBatch:
    """Paint patches whose centre labels are ``labels`` (``y`` of the result equals them).

    Args:
        rng: source of randomness; the same state gives the same patches.
        labels: wanted label of each patch, 0 or 1. Shape: (N,).
        ring_fraction: share of negatives with tumour cells in the outer ring only.

    Returns:
        see :class:`PcamBatch`.
    """
    cells = sample_tumour_cells(rng, labels, ring_fraction)
    return draw_pcam_patches(rng, len(labels), cells)


def _wsi_names(rng: np.random.Generator, split: str, tumour_patch: np.ndarray) -> list[str]:
    """Slide names like the real meta CSVs, no slide shared between splits.

    Camelyon16 train slides are tumor_001..111 and normal_001..160; valid holds out the last
    fifth of them (tumor_089.., normal_129..), test uses test_001..130. Patches with tumour come
    from tumour slides, the others from either kind.
    """
    n = len(tumour_patch)
    if split == "test":
        return [f"camelyon16_test_{i:03d}" for i in rng.integers(1, 131, n)]
    tumour_range, normal_range = (
        ((1, 89), (1, 129)) if split == "train" else ((89, 112), (129, 161))
    )
    from_tumour_slide = tumour_patch | (rng.random(n) < 0.5)
    tumour_ids = rng.integers(*tumour_range, n)
    normal_ids = rng.integers(*normal_range, n)
    return [
        f"camelyon16_train_tumor_{t:03d}" if is_t else f"camelyon16_train_normal_{m:03d}"
        for is_t, t, m in zip(from_tumour_slide, tumour_ids, normal_ids)
    ]


def _is_pcam_file(name: str) -> bool:
    return name.startswith(PCAM_PREFIX)


def make_pcam(
    out_dir: str | Path,
    n_train: int = 2048,
    n_valid: int = 256,
    n_test: int = 256,
    seed: int = 0,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic PCam folder readable as ``pcam:out_dir``.

    Each split's three files are written under temporary names and renamed together at the end
    of the split, patches in chunks of 512 (memory does not grow with N). Each split is
    balanced: ``N // 2`` positives, in random order.

    Args:
        out_dir: the folder (created if missing).
        n_train, n_valid, n_test: patches per split (>= 1). Real PCam has 262144, 32768, 32768.
        seed: same seed, same files; a split depends only on the seed and its own size.
        overwrite: replace the PCam files of a dataset already in ``out_dir``.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        UserInputError: ``out_dir`` is a file, or already holds PCam files and not ``overwrite``.
        ValueError: a count is out of range.
    """
    import h5py

    counts = (n_train, n_valid, n_test)
    for name, n in zip(("n_train", "n_valid", "n_test"), counts):
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"{name}={n!r}: expected an integer >= 1")
    out = Path(out_dir)
    check_output_folder(out, _is_pcam_file, "PCam", overwrite)
    out.mkdir(parents=True, exist_ok=True)
    for split_no, (split, n) in enumerate(zip(PCAM_SPLITS, counts)):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_no,)))
        labels = rng.permutation(np.arange(n) < n // 2).astype(np.uint8)
        with (
            atomic_path(_pcam_file(out, split, "x.h5")) as x_tmp,
            atomic_path(_pcam_file(out, split, "y.h5")) as y_tmp,
            atomic_path(_pcam_file(out, split, "meta.csv")) as meta_tmp,
        ):
            with (
                h5py.File(x_tmp, "w") as fx,
                h5py.File(y_tmp, "w") as fy,
                open(meta_tmp, "w", newline="") as meta,
            ):
                x = fx.create_dataset(
                    "x",
                    shape=(n, PATCH_SIZE, PATCH_SIZE, 3),
                    dtype="uint8",
                    chunks=(min(n, _H5_CHUNK), PATCH_SIZE, PATCH_SIZE, 3),
                )
                y = fy.create_dataset("y", shape=(n, 1, 1, 1), dtype="uint8")
                meta.write(META_HEADER + "\n")
                for chunk_no, lo in enumerate(range(0, n, _CHUNK)):
                    hi = min(n, lo + _CHUNK)
                    chunk_rng = np.random.default_rng(
                        np.random.SeedSequence(seed, spawn_key=(split_no, chunk_no))
                    )
                    batch = render_pcam_patches(chunk_rng, labels[lo:hi])
                    x[lo:hi] = batch.x
                    y[lo:hi] = batch.y.reshape(-1, 1, 1, 1)
                    coords = chunk_rng.integers(1000, 100000, (hi - lo, 2))
                    wsi = _wsi_names(chunk_rng, split, batch.tumour_patch)
                    meta.writelines(
                        f"{lo + i},{cy},{cx},{tp},{bool(c)},{w}\n"
                        for i, ((cy, cx), tp, c, w) in enumerate(
                            zip(coords.tolist(), batch.tumour_patch.tolist(), batch.y, wsi)
                        )
                    )
    return out
