"""Gland targets and gland instances: what the segmentation network learns and what it outputs.

* :func:`contour_target`: the DCAN contour map (Chen et al., "DCAN: Deep contour-aware networks for
  accurate gland segmentation", CVPR 2016, https://arxiv.org/abs/1604.02677) computed from instance
  labels: the band of gland pixels within ``width`` pixels of another label (background or another
  gland). Where two glands touch, the two bands meet, so "gland and not contour" separates them.
* :func:`instances_from_probabilities`: the network's gland (and contour) probabilities to an
  instance label map for the GLaS object metrics: threshold, optional contour split, hole filling,
  connected components, small-object removal.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from histodrl.metrics.instances import instances_from_mask


def disk(radius: int) -> np.ndarray:
    """Boolean disk footprint: the offsets (dy, dx) with dy^2 + dx^2 <= radius^2.

    Shape: (2 radius + 1, 2 radius + 1).
    """
    if radius < 0:
        raise ValueError(f"radius={radius}: expected >= 0")
    r = np.arange(-radius, radius + 1)
    return r[:, None] ** 2 + r[None, :] ** 2 <= radius**2


def contour_target(labels: np.ndarray, width: int = 3) -> np.ndarray:
    """DCAN contour target: gland pixels with a different label within ``width`` pixels.

    A pixel p is contour iff ``labels[p] > 0`` and some pixel q with ``|q - p| <= width``
    (Euclidean) inside the image has ``labels[q] != labels[p]``. The band therefore lies inside
    each gland, ``width`` pixels deep, and covers the line where two glands touch from both sides.
    The image border is not a boundary: a gland cut by the border gets no contour along it (the
    pixels outside are unknown, not background).

    Computed as ``max_filter(labels) != min_filter(labels)`` over the disk, with the border handled
    by edge replication (which never adds a new label value).

    Args:
        labels: instance labels, integer, 0 = background. Shape: (H, W).
        width: band depth in pixels (>= 1).

    Returns:
        Boolean contour map. Shape: (H, W).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected a 2-D integer array, got {labels.dtype} {labels.shape}")
    if width < 1:
        raise ValueError(f"width={width}: expected at least 1 pixel")
    footprint = disk(width)
    high = ndimage.maximum_filter(labels, footprint=footprint, mode="nearest")
    low = ndimage.minimum_filter(labels, footprint=footprint, mode="nearest")
    return (labels > 0) & (high != low)


def instances_from_probabilities(
    gland: np.ndarray,
    contour: np.ndarray | None = None,
    *,
    threshold: float = 0.5,
    min_area: int = 0,
    contour_width: int = 3,
) -> np.ndarray:
    """Instance labels from gland (and optionally contour) probability maps.

    Without ``contour`` this is :func:`histodrl.metrics.instances_from_mask`: foreground =
    ``gland > threshold``, holes filled, 8-connected components, components under ``min_area``
    pixels removed, numbered 1..N in raster order.

    With ``contour`` (DCAN): the foreground is ``gland > threshold`` with holes filled; the
    *cores* are the foreground pixels with ``contour <= threshold`` (the gland pixels that are not
    contour, so touching glands fall apart); each 8-connected core is one gland. The contour band
    was cut off every gland's rim, so the foreground pixels outside the cores are given back to the
    nearest core within ``2 contour_width + 1`` pixels (:func:`skimage.segmentation.expand_labels`,
    restricted to the foreground; a gland's corner lies ``sqrt(2) contour_width`` from its core, and
    predicted bands tend to be wider than the target's); foreground that no core reaches is
    dropped. Objects under
    ``min_area`` pixels are then removed and the rest numbered 1..N in raster order.

    Args:
        gland: gland probability (or any score compared with ``threshold``). Shape: (H, W).
        contour: contour probability, or ``None``. Shape: (H, W).
        threshold: a pixel is gland when ``gland > threshold``, contour when
            ``contour > threshold``.
        min_area: objects with fewer pixels are removed (an area equal to it is kept).
        contour_width: the training contour band's depth (:func:`contour_target`); cores are
            grown back by at most ``2 contour_width + 1`` pixels.

    Returns:
        Instance labels, int32, 0 = background. Shape: (H, W).
    """
    if contour is None:
        return instances_from_mask(gland, threshold=threshold, min_area=min_area)
    from skimage.segmentation import expand_labels

    gland = np.asarray(gland)
    contour = np.asarray(contour)
    if gland.ndim != 2 or gland.shape != contour.shape:
        raise ValueError(
            f"gland {gland.shape} and contour {contour.shape}: expected two maps of one (H, W)"
        )
    if min_area < 0:
        raise ValueError(f"min_area={min_area}: expected >= 0")
    eight = ndimage.generate_binary_structure(2, 2)
    four = ndimage.generate_binary_structure(2, 1)
    # Holes are judged 4-connected, the complement of 8-connected objects (as instances_from_mask).
    foreground = ndimage.binary_fill_holes(gland > threshold, structure=four)
    cores, _ = ndimage.label(foreground & ~(contour > threshold), structure=eight)
    grown = expand_labels(cores, distance=2 * contour_width + 1)
    grown[~foreground] = 0
    return _renumber(grown, min_area)


def _renumber(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Drop labels under ``min_area`` pixels and number the rest 1..N by their first pixel."""
    flat = labels.ravel()
    ids, first, areas = np.unique(flat, return_index=True, return_counts=True)
    keep = (ids > 0) & (areas >= min_area)
    order = np.argsort(first[keep], kind="stable")
    new_ids = np.zeros(int(ids.max()) + 1 if ids.size else 1, dtype=np.int32)
    new_ids[ids[keep][order]] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return new_ids[labels]
