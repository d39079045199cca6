"""``histodrl wsi-preview``: what a ``wsi:`` source will draw from a slide, as a picture.

The slide (a pyramid level about :data:`DISPLAY_SIDE` pixels a side) with the tissue mask of
:mod:`histodrl.data.wsi` tinted over it (computed, as the reader does, on the lowest-resolution
level) and the candidate tiles of :class:`~histodrl.data.wsi.WsiTiles` outlined, a dot at each
centre (every tile it may draw; a seeded sample of ``max_tiles`` of them when there are more).
Candidates lie on a half-tile grid, so neighbouring outlines overlap by half a tile. The title
gives the number of tiles, the tile size and level (or resolution), and the tissue share of the
slide (the share of mask pixels that are tissue).

Only the public functions of :mod:`histodrl.data.wsi` are used, so the tiles outlined are those
the pretraining reader computes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from histodrl.data.wsi import ReadPlan
from histodrl.errors import UserInputError
from histodrl.io import atomic_path

DEFAULT_MAX_TILES = 2000
# The picture is drawn from a pyramid level about this many pixels a side.
DISPLAY_SIDE = 1024
TISSUE_TINT = (0.1, 0.75, 0.3)  # green, 25 % opaque over tissue
TISSUE_ALPHA = 0.25
TILE_COLOUR = (0.1, 0.2, 0.9)
FIGURE_SIDE = 9.0  # inches, the longer side of the slide in the figure


def read_slide_overview(
    path: str | os.PathLike[str],
    crop: int = 256,
    level: int | None = None,
    mpp: float | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[int, int], ReadPlan]:
    """What the preview shows of a slide: mask image, picture, level-0 size, read plan.

    The mask image is the lowest-resolution level as RGB, downscaled to at most
    :data:`~histodrl.data.wsi.MASK_MAX_SIDE` a side: the image that
    :class:`~histodrl.data.wsi.WsiTiles` computes its tissue mask on. The picture is the
    coarsest level with a side of at least :data:`DISPLAY_SIDE` (level 0 when none is that
    large), downscaled to at most that.

    Returns:
        ``(uint8 (h, w, 3) mask image, uint8 (h', w', 3) picture, level-0 (width, height),
        the ReadPlan of crop tiles)``.

    Raises:
        UserInputError: a missing or unreadable slide, samples other than 8-bit, a level or
            resolution the slide lacks (:func:`~histodrl.data.wsi.read_plan`).
    """
    import tiffslide

    from histodrl.data.wsi import MASK_MAX_SIDE, read_plan

    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: no such slide")
    try:
        slide = tiffslide.TiffSlide(path)
    except Exception as exc:  # tifffile and tiffslide raise many types for a bad file
        raise UserInputError(f"{path}: not a readable whole-slide image ({exc})") from exc
    try:
        plan = read_plan(
            slide.level_downsamples,
            crop,
            level,
            mpp,
            slide.properties.get("tiffslide.mpp-x"),
            name=str(path),
        )
        base = (int(slide.dimensions[0]), int(slide.dimensions[1]))
        last = slide.level_count - 1
        mask_image = _read_level(slide, path, last, MASK_MAX_SIDE)
        # The picture: the coarsest level at least DISPLAY_SIDE a side (level 0 if none is).
        sides = [max(d) for d in slide.level_dimensions]
        shown = max([k for k, side in enumerate(sides) if side >= DISPLAY_SIDE], default=0)
        if shown == last:
            display = _shrink(mask_image, DISPLAY_SIDE)
        else:
            display = _read_level(slide, path, shown, DISPLAY_SIDE)
    finally:
        slide.close()
    return mask_image, display, base, plan


def _read_level(slide: Any, path: Path, level: int, max_side: int) -> np.ndarray:
    width, height = slide.level_dimensions[level]
    region = np.asarray(slide.read_region((0, 0), level, (width, height), as_array=True))
    if region.dtype != np.uint8:
        raise UserInputError(f"{path}: {region.dtype} samples (expected 8-bit RGB)")
    rgb = np.repeat(region, 3, axis=2) if region.shape[2] == 1 else region[:, :, :3]
    return _shrink(np.ascontiguousarray(rgb), max_side)


def _shrink(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale (box filter) so that the longer side is at most ``max_side``."""
    height, width = rgb.shape[:2]
    if max(width, height) <= max_side:
        return rgb
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))


@dataclass(frozen=True)
class SlidePreview:
    """What :func:`wsi_preview` draws.

    Attributes:
        picture: uint8 (h, w, 3) image of the slide (:func:`read_slide_overview`).
        mask: bool tissue mask, on the lowest-resolution level (as the reader computes it).
        base: level-0 ``(width, height)``.
        plan: the :class:`~histodrl.data.wsi.ReadPlan` of the tiles.
        positions: int64 (K, 2) level-0 ``(x, y)`` corners of every tile the reader may draw.
        tissue_share: share of mask pixels that are tissue.
    """

    picture: np.ndarray
    mask: np.ndarray
    base: tuple[int, int]
    plan: ReadPlan
    positions: np.ndarray
    tissue_share: float


def preview_tiles(
    slide_path: str | os.PathLike[str],
    *,
    crop: int = 256,
    level: int | None = None,
    mpp: float | None = None,
    min_tissue: float = 0.5,
) -> SlidePreview:
    """The tissue mask and the candidate tiles of :class:`~histodrl.data.wsi.WsiTiles` on a slide.

    The positions are those of ``WsiTiles`` itself (none when no tile has ``min_tissue``).

    Raises:
        UserInputError: an unreadable slide, a slide without tissue (naming it), a level or
            resolution the slide lacks.
        ValueError: ``crop`` or ``min_tissue`` out of range.
    """
    from histodrl.data.wsi import WsiTiles, tile_positions, tissue_mask

    if crop < 1:
        raise ValueError(f"crop={crop}: expected a positive crop size")
    if not 0.0 <= min_tissue <= 1.0:
        raise ValueError(f"min_tissue={min_tissue}: expected a fraction in [0, 1]")
    slide_path = Path(slide_path)
    mask_image, picture, base, plan = read_slide_overview(slide_path, crop, level, mpp)
    mask = tissue_mask(mask_image)
    if not mask.any():
        raise UserInputError(
            f"{slide_path}: no tissue found (the saturation mask of the slide is empty)"
        )
    positions = np.zeros((0, 2), dtype=np.int64)
    if len(tile_positions(mask, base, plan.footprint, min_tissue)):
        tiles = WsiTiles(slide_path, crop=crop, level=level, mpp=mpp, min_tissue=min_tissue)
        positions = tiles.positions[:, 1:].copy()
    return SlidePreview(picture, mask, base, plan, positions, float(mask.mean()))


def wsi_preview(
    slide_path: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    *,
    crop: int = 256,
    level: int | None = None,
    mpp: float | None = None,
    min_tissue: float = 0.5,
    max_tiles: int = DEFAULT_MAX_TILES,
    seed: int = 0,
) -> str:
    """Write the preview of one slide to ``out_png`` (PNG, atomically); returns a one-line summary.

    A slide with tissue but no tile with ``min_tissue`` of it gives a figure with no tile and
    says so (where :class:`~histodrl.data.wsi.WsiTiles` would refuse the slide).

    Args:
        slide_path: one slide file.
        out_png: the figure to write.
        crop, level, mpp, min_tissue: as :class:`~histodrl.data.wsi.WsiTiles`.
        max_tiles: outline at most this many tiles (a seeded sample when there are more; >= 1).
        seed: seed of that sample.

    Raises:
        UserInputError: an unreadable slide, a slide without tissue (naming it), a level or
            resolution the slide lacks, an output path that is a folder.
        ValueError: ``crop``, ``min_tissue`` or ``max_tiles`` out of range.
    """
    if max_tiles < 1:
        raise ValueError(f"max_tiles={max_tiles}: expected at least 1")
    slide_path, out = Path(slide_path), Path(out_png)
    if out.is_dir():
        raise UserInputError(f"{out}: is a folder, expected the path of a PNG file")
    view = preview_tiles(slide_path, crop=crop, level=level, mpp=mpp, min_tissue=min_tissue)
    positions, plan, share = view.positions, view.plan, view.tissue_share
    shown = positions
    if len(positions) > max_tiles:
        rng = np.random.default_rng(seed)
        shown = positions[np.sort(rng.choice(len(positions), max_tiles, replace=False))]
    where = f"level {plan.level}" if mpp is None else f"{mpp:g} um/px (level {plan.level})"
    count = f"{len(positions)} tiles {crop}x{crop} at {where}"
    if len(shown) < len(positions):
        count += f", {len(shown)} outlined"
    figure = _figure(view.picture, view.mask, view.base, shown, plan.footprint)
    figure.suptitle(
        f"{slide_path.name}: {count}; tissue {share:.1%} of the slide, min_tissue {min_tissue:.0%}",
        fontsize=10,
    )
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png")
    hint = "" if len(positions) else "; lower min_tissue or crop"
    return f"wrote {out} ({slide_path.name}: {count}, tissue {share:.1%}{hint})"


def _figure(
    picture: np.ndarray,
    mask: np.ndarray,
    base: tuple[int, int],
    positions: np.ndarray,
    footprint: float,
) -> Figure:
    """The picture and the mask tint in level-0 coordinates, tiles outlined, centres dotted."""
    width, height = base
    extent = (0.0, float(width), float(height), 0.0)
    longest = max(width, height)
    size = (max(3.0, FIGURE_SIDE * width / longest), max(3.0, FIGURE_SIDE * height / longest) + 0.6)
    figure = Figure(figsize=size, layout="constrained")
    ax = figure.add_subplot()
    ax.imshow(picture, extent=extent, interpolation="antialiased")
    tint = np.zeros((*mask.shape, 4), dtype=np.float32)
    tint[mask] = (*TISSUE_TINT, TISSUE_ALPHA)
    ax.imshow(tint, extent=extent, interpolation="nearest")
    rects = [Rectangle((float(x), float(y)), footprint, footprint) for x, y in positions]
    ax.add_collection(
        PatchCollection(rects, facecolor="none", edgecolor=TILE_COLOUR, linewidth=0.6, alpha=0.8)
    )
    if len(positions):
        centres = positions.astype(np.float64) + footprint / 2
        ax.plot(centres[:, 0], centres[:, 1], ".", color=TILE_COLOUR, markersize=2)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    return figure
