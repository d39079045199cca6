"""Turn a binary or probability mask into the instance label map that the GLaS metrics expect."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def instances_from_mask(
    mask: np.ndarray,
    threshold: float = 0.5,
    min_area: int = 0,
    fill_holes: bool = True,
    connectivity: int = 2,
) -> np.ndarray:
    """Label the connected components of a thresholded mask, one object per component.

    Steps, in this order: foreground = ``mask > threshold``; holes (background regions not
    connected to the image border) are filled; connected components are labelled; components with
    fewer than ``min_area`` pixels are removed; the remaining ones are numbered 1..N in raster order
    of their first pixel. Touching glands that the mask does not separate become one object.

    Args:
        mask: Binary (bool or 0/1, 0/255) or probability mask. Shape: (H, W).
        threshold: A pixel is foreground when its value is strictly greater than this.
        min_area: Components with fewer pixels than this are removed (an area equal to it is kept).
        fill_holes: Fill holes of the foreground before labelling. A hole is judged with the
            connectivity complementary to ``connectivity`` (8 for the background when objects are
            4-connected and vice versa), so a diagonal gap in an 8-connected ring is not an exit.
        connectivity: 1 = 4-connectivity (edge neighbours), 2 = 8-connectivity (edge and corner
            neighbours, MATLAB ``bwlabel(..., 8)``, the default).

    Returns:
        Instance labels, int32, 0 = background. Shape: (H, W).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected a 2-D array, got shape {mask.shape}")
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity={connectivity!r}: expected 1 (4-neighbours) or 2 (8)")
    if min_area < 0:
        raise ValueError(f"min_area={min_area!r}: expected >= 0")
    if mask.dtype != np.bool_ and not np.issubdtype(mask.dtype, np.number):
        raise ValueError(f"mask: expected a boolean or numeric array, got dtype {mask.dtype}")
    foreground = mask > threshold
    structure = ndimage.generate_binary_structure(2, connectivity)
    if fill_holes:
        background_structure = ndimage.generate_binary_structure(2, 3 - connectivity)
        foreground = ndimage.binary_fill_holes(foreground, structure=background_structure)
    labels, n = ndimage.label(foreground, structure=structure)
    if min_area > 0 and n:
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        keep = areas >= min_area
        keep[0] = False
        new_ids = np.zeros(n + 1, dtype=np.int32)
        new_ids[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        labels = new_ids[labels]
    return labels.astype(np.int32, copy=False)
