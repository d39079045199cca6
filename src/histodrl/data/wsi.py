"""``wsi:PATH|GLOB``: tiles of whole-slide images, drawn on the fly where there is tissue.

Slides are read with tiffslide (SVS, generic pyramidal TIFF, NDPI, ... as tiffslide supports).

Tissue mask: HSV saturation ``(max(R,G,B) - min(R,G,B)) / max(R,G,B)`` of the lowest-resolution
pyramid level (downscaled to at most :data:`MASK_MAX_SIDE` pixels a side), thresholded by Otsu's
method, and never below :data:`MIN_SATURATION`. Saturation rather than ``1 - grey``: stained
tissue is coloured, while both the white glass and the black padding or grey dust of scanned
slides have low saturation (``1 - grey`` would call black padding tissue). The floor keeps a
blank slide (all background, Otsu then splits noise) from being called tissue.

Tiles: the output is ``crop x crop`` pixels at pyramid ``level`` or at ``mpp`` microns per pixel
(see :func:`read_plan`). Candidate tiles lie on a grid with a step of half a tile; a candidate is
kept when the mask covers at least ``min_tissue`` of the mask pixels under it (measured on the
mask's grid: the tile's footprint is widened to whole mask pixels). Item ``i`` of epoch ``e`` is
the candidate drawn uniformly over all slides' candidates by
:func:`histodrl.data.crops.item_rng` ``(seed, e, i)``.
"""

from __future__ import annotations

import glob
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from histodrl.data.crops import EpochSeeded
from histodrl.errors import UserInputError

logger = logging.getLogger(__name__)

SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".qptiff")
# The mask is computed on at most this many pixels a side (memory and Otsu time stay small).
MASK_MAX_SIDE = 2048
# Least saturation that can count as tissue, whatever Otsu's threshold (empty-slide guard).
MIN_SATURATION = 0.05
# Downsamples within this relative tolerance count as equal (levels are e.g. 4.0003x).
_DOWNSAMPLE_TOLERANCE = 1e-3


def resolve_slide_paths(paths_or_glob: str | os.PathLike[str] | Sequence[Any]) -> list[Path]:
    """Slide files named by a path, a folder (its slides, recursively), a glob, or a list of those.

    Globs use :func:`glob.glob` with ``recursive=True`` (``**`` spans folders). The result is
    sorted and free of duplicates.

    Raises:
        UserInputError: a path that does not exist, or nothing matched.
    """
    entries = (
        [paths_or_glob] if isinstance(paths_or_glob, (str, os.PathLike)) else list(paths_or_glob)
    )
    found: set[Path] = set()
    for entry in entries:
        text = os.fspath(entry)
        if glob.has_magic(text):
            matches = [Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file()]
            if not matches:
                raise UserInputError(f"{text}: no file matches")
            found.update(matches)
        elif Path(text).is_dir():
            found.update(
                p
                for p in Path(text).rglob("*")
                if p.is_file() and p.suffix.lower() in SLIDE_EXTENSIONS
            )
        elif Path(text).is_file():
            found.add(Path(text))
        else:
            raise UserInputError(f"{text}: no such slide, folder or pattern")
    if not found:
        raise UserInputError(
            f"{os.fspath(entries[0]) if entries else '(none)'}: no slides found "
            f"(expected files ending in {', '.join(SLIDE_EXTENSIONS)})"
        )
    return sorted(found)


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation ``(max - min) / max`` per pixel, 0 where the pixel is black.

    Args:
        rgb: uint8 image. Shape: (H, W, 3).

    Returns:
        float32 in [0, 1]. Shape: (H, W).
    """
    rgb = rgb.astype(np.float32)
    high = rgb.max(axis=2)
    low = rgb.min(axis=2)
    return np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Tissue pixels of a low-resolution slide image: saturation above Otsu's threshold.

    The threshold is ``max(otsu(saturation), MIN_SATURATION)``; an image of uniform saturation
    has no Otsu split and uses :data:`MIN_SATURATION` alone.

    Args:
        rgb: uint8 image. Shape: (H, W, 3).

    Returns:
        bool mask, True on tissue. Shape: (H, W).
    """
    from skimage.filters import threshold_otsu

    sat = saturation(rgb)
    threshold = MIN_SATURATION
    if sat.size and float(sat.max()) - float(sat.min()) > 1e-6:
        threshold = max(float(threshold_otsu(sat)), MIN_SATURATION)
    return sat > threshold


@dataclass(frozen=True)
class ReadPlan:
    """How one output tile is read from a slide.

    Attributes:
        level: pyramid level read from.
        read_size: side of the square region read at ``level``, in that level's pixels; resized
            to the crop when it differs.
        footprint: side of the tile in level-0 pixels.
    """

    level: int
    read_size: int
    footprint: float


def read_plan(
    downsamples: Sequence[float],
    crop: int,
    level: int | None = None,
    mpp: float | None = None,
    base_mpp: float | None = None,
    name: str = "<slide>",
) -> ReadPlan:
    """Choose the level and the region size that give ``crop x crop`` tiles.

    * ``level`` given: read ``crop`` pixels at that level (footprint ``crop * downsample``).
    * ``mpp`` given: the wanted downsample is ``d = mpp / base_mpp``; read at the coarsest level
      whose downsample is at most ``d`` (so tiles are only ever shrunk), a region of
      ``round(crop * d / downsample[level])`` pixels (footprint ``crop * d``).
    * neither: level 0.

    Args:
        downsamples: each level's downsample relative to level 0 (level 0 first, 1.0).
        crop: output tile side in pixels.
        level: pyramid level, or None.
        mpp: target microns per pixel, or None.
        base_mpp: the slide's level-0 microns per pixel (needed with ``mpp``).
        name: the slide, for error messages.

    Raises:
        UserInputError: both ``level`` and ``mpp``, a level the slide lacks, ``mpp`` without a
            slide resolution, or ``mpp`` finer than the slide's level 0.
    """
    if level is not None and mpp is not None:
        raise UserInputError(
            f"level={level}, mpp={mpp}: give a pyramid level or a resolution, not both"
        )
    if level is not None:
        if not 0 <= level < len(downsamples):
            raise UserInputError(
                f"{name}: level {level} does not exist (the slide has levels 0..{len(downsamples) - 1})"
            )
        return ReadPlan(level, crop, crop * float(downsamples[level]))
    if mpp is None:
        return ReadPlan(0, crop, float(crop))
    if mpp <= 0:
        raise UserInputError(f"mpp={mpp}: expected a positive resolution in microns per pixel")
    if base_mpp is None or not base_mpp > 0:
        raise UserInputError(f"{name}: the slide does not record its microns per pixel (use level)")
    wanted = mpp / base_mpp
    if wanted < 1.0 - _DOWNSAMPLE_TOLERANCE:
        raise UserInputError(
            f"{name}: mpp {mpp} is finer than the slide's level 0 ({base_mpp:.4g} microns per pixel)"
        )
    chosen = max(
        k for k, ds in enumerate(downsamples) if ds <= wanted * (1.0 + _DOWNSAMPLE_TOLERANCE)
    )
    read_size = max(1, round(crop * wanted / float(downsamples[chosen])))
    return ReadPlan(chosen, read_size, crop * wanted)


def tile_positions(
    mask: np.ndarray, base_size: tuple[int, int], footprint: float, min_tissue: float
) -> np.ndarray:
    """Level-0 corners of the grid tiles whose mask coverage is at least ``min_tissue``.

    The grid steps by ``footprint / 2`` from (0, 0) and keeps tiles wholly inside the slide. A
    tile's coverage is the mean of the mask over the mask pixels it touches (the tile spans
    ``[x / sx, (x + footprint) / sx)`` mask columns, widened to whole pixels, at least one; rows
    alike), computed with a summed-area table.

    Args:
        mask: bool tissue mask of the whole slide. Shape: (h, w).
        base_size: level-0 ``(width, height)``.
        footprint: tile side in level-0 pixels (> 0).
        min_tissue: least covered fraction, 0..1.

    Returns:
        int64 ``(x, y)`` level-0 corners, row-major. Shape: (K, 2).
    """
    if footprint <= 0:
        raise ValueError(f"footprint={footprint}: expected a positive tile size")
    if not 0.0 <= min_tissue <= 1.0:
        raise ValueError(f"min_tissue={min_tissue}: expected a fraction in [0, 1]")
    width, height = base_size
    h, w = mask.shape
    if footprint > width or footprint > height:
        return np.zeros((0, 2), dtype=np.int64)
    step = footprint / 2.0
    xs = np.floor(np.arange(0.0, width - footprint + 1e-9, step)).astype(np.int64)
    ys = np.floor(np.arange(0.0, height - footprint + 1e-9, step)).astype(np.int64)
    sx, sy = width / w, height / h

    def span(starts: np.ndarray, scale: float, size: int) -> tuple[np.ndarray, np.ndarray]:
        lo = np.minimum(np.floor(starts / scale).astype(np.int64), size - 1)
        hi = np.ceil((starts + footprint) / scale - 1e-9).astype(np.int64)
        return lo, np.clip(hi, lo + 1, size)

    c0, c1 = span(xs, sx, w)
    r0, r1 = span(ys, sy, h)
    table = np.zeros((h + 1, w + 1), dtype=np.int64)
    table[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    covered = (
        table[r1[:, None], c1[None, :]]
        - table[r0[:, None], c1[None, :]]
        - table[r1[:, None], c0[None, :]]
        + table[r0[:, None], c0[None, :]]
    )
    area = (r1 - r0)[:, None] * (c1 - c0)[None, :]
    rows, cols = np.nonzero(covered >= min_tissue * area)
    return np.stack([xs[cols], ys[rows]], axis=1).astype(np.int64)


def _open_slide(path: Path) -> Any:
    import tiffslide

    try:
        return tiffslide.TiffSlide(path)
    except Exception as exc:  # tifffile and tiffslide raise many types for a bad file
        raise UserInputError(f"{path}: not a readable whole-slide image ({exc})") from exc


def _as_rgb(region: np.ndarray, path: Path) -> np.ndarray:
    if region.dtype != np.uint8:
        raise UserInputError(f"{path}: {region.dtype} samples (expected 8-bit RGB)")
    if region.shape[2] == 1:
        return np.repeat(region, 3, axis=2)
    return region[:, :, :3]


def _read_mask_image(slide: Any, path: Path) -> np.ndarray:
    """The lowest-resolution level as RGB, downscaled to at most MASK_MAX_SIDE a side."""
    level = slide.level_count - 1
    width, height = slide.level_dimensions[level]
    rgb = _as_rgb(slide.read_region((0, 0), level, (width, height), as_array=True), path)
    if max(width, height) > MASK_MAX_SIDE:
        scale = MASK_MAX_SIDE / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))
    return rgb


class WsiTiles(EpochSeeded, Dataset):
    """Random tissue tiles of whole-slide images, for pretraining (``wsi:PATH|GLOB``).

    Args:
        paths_or_glob: a slide, a folder of slides, a glob, or a list of those
            (:func:`resolve_slide_paths`).
        crop: output tile side in pixels (>= 1).
        level: pyramid level to read tiles at (default: level 0 unless ``mpp`` is given).
        mpp: target resolution in microns per pixel (exclusive with ``level``).
        min_tissue: least fraction of a tile that the tissue mask must cover, 0..1.
        seed: seed of the tile draws (>= 0).
        tiles_per_epoch: items per epoch (>= 1).

    Attributes:
        paths: the slides.
        plans: one :class:`ReadPlan` per slide.
        positions: int64 array (K, 3) of (slide index, x, y), the candidate tiles' level-0
            corners, all slides together.

    Shape:
        item: uint8 tensor (3, crop, crop), RGB.

    Raises:
        UserInputError: no slide, an unreadable slide, a level or resolution a slide lacks, or no
            tile with enough tissue in any slide (slides without any are logged and skipped).
        ValueError: ``crop``, ``min_tissue``, ``seed`` or ``tiles_per_epoch`` out of range.
    """

    def __init__(
        self,
        paths_or_glob: str | os.PathLike[str] | Sequence[Any],
        crop: int,
        level: int | None = None,
        mpp: float | None = None,
        min_tissue: float = 0.5,
        seed: int = 0,
        tiles_per_epoch: int = 10_000,
    ) -> None:
        if crop < 1:
            raise ValueError(f"crop={crop}: expected a positive crop size")
        if not 0.0 <= min_tissue <= 1.0:
            raise ValueError(f"min_tissue={min_tissue}: expected a fraction in [0, 1]")
        if seed < 0:
            raise ValueError(f"seed={seed}: expected a non-negative seed")
        if tiles_per_epoch < 1:
            raise ValueError(f"tiles_per_epoch={tiles_per_epoch}: expected a positive count")
        self.crop = int(crop)
        self.seed = int(seed)
        self.tiles_per_epoch = int(tiles_per_epoch)
        self.paths = resolve_slide_paths(paths_or_glob)
        self.plans: list[ReadPlan] = []
        per_slide = []
        for k, path in enumerate(self.paths):
            slide = _open_slide(path)
            try:
                mpp_x = slide.properties.get("tiffslide.mpp-x")
                plan = read_plan(
                    slide.level_downsamples, self.crop, level, mpp, mpp_x, name=str(path)
                )
                mask = tissue_mask(_read_mask_image(slide, path))
                found = tile_positions(mask, slide.dimensions, plan.footprint, min_tissue)
                # Keep the region read at the plan's level inside that level (no padding).
                level_w, level_h = slide.level_dimensions[plan.level]
                ds = float(slide.level_downsamples[plan.level])
                last_x = max(0, math.floor((level_w - plan.read_size) * ds))
                last_y = max(0, math.floor((level_h - plan.read_size) * ds))
                found[:, 0] = np.minimum(found[:, 0], last_x)
                found[:, 1] = np.minimum(found[:, 1], last_y)
            finally:
                slide.close()
            if len(found) == 0:
                logger.warning("%s: no tile with at least %.0f%% tissue", path, 100 * min_tissue)
            self.plans.append(plan)
            per_slide.append(np.column_stack([np.full(len(found), k), found]))
        self.positions = np.concatenate(per_slide).astype(np.int64)
        if len(self.positions) == 0:
            raise UserInputError(
                f"{self.paths[0]}{' and others' if len(self.paths) > 1 else ''}: no tile of "
                f"{crop}x{crop} with at least {min_tissue:.0%} tissue (lower min_tissue?)"
            )
        where = f"mpp {mpp}" if mpp is not None else f"level {self.plans[0].level}"
        source = paths_or_glob if isinstance(paths_or_glob, (str, os.PathLike)) else self.paths[0]
        self.description = (
            f"wsi:{os.fspath(source)} ({len(self.paths)} slides, {len(self.positions)} tissue "
            f"tiles {crop}x{crop} at {where}, {self.tiles_per_epoch} per epoch)"
        )
        self._slides: dict[int, Any] = {}
        self._slides_pid: int | None = None

    def __len__(self) -> int:
        return self.tiles_per_epoch

    def __getstate__(self) -> dict[str, Any]:
        # Slide handles are per process (opened lazily by the process that reads).
        state = dict(self.__dict__)
        state["_slides"] = {}
        state["_slides_pid"] = None
        return state

    def _slide(self, k: int) -> Any:
        pid = os.getpid()
        if self._slides_pid != pid:
            # Handles inherited through fork are replaced, never shared between processes.
            self._slides, self._slides_pid = {}, pid
        if k not in self._slides:
            self._slides[k] = _open_slide(self.paths[k])
        return self._slides[k]

    def tile(self, slide_index: int, x: int, y: int) -> torch.Tensor:
        """Read the tile of slide ``slide_index`` with level-0 corner ``(x, y)``.

        Returns:
            uint8 tensor. Shape: (3, crop, crop).
        """
        plan = self.plans[slide_index]
        path = self.paths[slide_index]
        size = (plan.read_size, plan.read_size)
        region = self._slide(slide_index).read_region((x, y), plan.level, size, as_array=True)
        rgb = _as_rgb(np.asarray(region), path)
        if plan.read_size != self.crop:
            resample = (
                Image.Resampling.BOX if plan.read_size > self.crop else Image.Resampling.BILINEAR
            )
            rgb = np.asarray(Image.fromarray(rgb).resize((self.crop, self.crop), resample))
        return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))

    def draw(self, index: int) -> tuple[int, int, int]:
        """``(slide index, x, y)`` of the tile that item ``index`` reads."""
        _, rng = self.rng(index)
        k, x, y = self.positions[int(rng.integers(len(self.positions)))]
        return int(k), int(x), int(y)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.tile(*self.draw(index))
