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

Reading (``benchmarks/wsi.py`` measures it): a tile's region is read straight from the TIFF tiles
of its pyramid level (:class:`LevelReader`: the compressed tiles are read from the file and
decoded with tifffile's own decoder, without tiffslide's zarr layer, whose asynchronous machinery
cost more than the decoding), and decoded tiles are kept in a per-process least-recently-used
:class:`TileCache` bounded in bytes, so neighbouring and repeated draws decode each slide tile
once. The pixels are the ones ``tiffslide.TiffSlide.read_region`` returns (checked against it on
the first read of every level; a level that tifffile does not describe as plain tiles, or that
differs, is read through tiffslide). Resampling to a requested ``mpp`` is unchanged: the region
read at the plan's level is resized by Pillow (box filter when shrinking, bilinear when growing).
"""

from __future__ import annotations

import glob
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Hashable, Sequence
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
# Decoded slide tiles kept per process (each DataLoader worker has its own cache): 128 MiB is
# about 770 JPEG tiles of 240x240 RGB, or 170 of 512x512.
DEFAULT_TILE_CACHE_BYTES = 128 * 2**20


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
    # Channel-wise maximum/minimum on uint8 planes: numpy's reduction over a last axis of 3 is
    # several times slower (and this runs on up to MASK_MAX_SIDE^2 pixels per slide).
    r, g, b = (rgb[:, :, c] for c in range(3))
    high = np.maximum(np.maximum(r, g), b).astype(np.float32)
    low = np.minimum(np.minimum(r, g), b).astype(np.float32)
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


class TileCache:
    """Decoded slide tiles, least recently used first out, at most ``max_bytes`` in all.

    One per process (a :class:`WsiTiles` replaces it in a new process): entries are read-only
    numpy arrays keyed by ``(slide, level, tile index)``. A tile larger than ``max_bytes`` is
    not kept; ``max_bytes=0`` keeps nothing.

    Attributes:
        max_bytes: the bound on :attr:`nbytes`.
        nbytes: bytes held now.
        hits, misses: lookups that found, or did not find, their tile.
    """

    def __init__(self, max_bytes: int = DEFAULT_TILE_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes={max_bytes}: expected a size >= 0")
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def get(self, key: Hashable) -> np.ndarray | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry

    def put(self, key: Hashable, value: np.ndarray) -> None:
        if key in self._entries:
            self.nbytes -= self._entries.pop(key).nbytes
        if value.nbytes > self.max_bytes:
            return
        value.flags.writeable = False
        self._entries[key] = value
        self.nbytes += value.nbytes
        while self.nbytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.nbytes -= evicted.nbytes

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0


class LevelReader:
    """Regions of one pyramid level, read from its TIFF tiles and decoded by tifffile.

    Use :meth:`for_level`, which returns None when the level is not plain tiles of 8-bit
    interleaved samples of the level's size (tiffslide then reads it).

    Args:
        page: the level's tifffile page (tiled, planar configuration contiguous).
        cache: where decoded tiles are kept.
        key: this level's prefix in the cache keys, e.g. ``(slide index, level)``.
    """

    def __init__(self, page: Any, cache: TileCache, key: tuple[Any, ...]) -> None:
        self.page = page
        self.keyframe = page.keyframe
        self.cache = cache
        self.key = key
        self.height, self.width = int(page.shaped[2]), int(page.shaped[3])
        self.samples = int(page.shaped[4])
        self.tile_height, self.tile_width = int(page.chunks[0]), int(page.chunks[1])
        self.tiles_across = -(-self.width // self.tile_width)
        self._decode_args: dict[str, Any] = {"_fullsize": True}
        if page.jpegtables is not None:
            self._decode_args["jpegtables"] = page.jpegtables
        if getattr(self.keyframe, "jpegheader", None) is not None:
            self._decode_args["jpegheader"] = self.keyframe.jpegheader

    @classmethod
    def for_level(
        cls, slide: Any, level: int, cache: TileCache, key: tuple[Any, ...]
    ) -> LevelReader | None:
        """The reader of ``slide``'s level, or None where tiffslide must read it."""
        try:
            if slide.properties.get("tiffslide.series-axes") != "YXS":
                return None
            series = slide.ts_tifffile.series[int(slide.properties["tiffslide.series-index"])]
            pages = series.levels[level].pages
            page = pages[0]
            width, height = slide.level_dimensions[level]
            plain = (
                len(pages) == 1
                and page.is_tiled
                and not page.is_ndpi
                and page.dtype == np.uint8
                and page.planarconfig == 1
                and len(page.chunks) == 3
                and tuple(page.shaped[:2]) == (1, 1)
                and (page.shaped[3], page.shaped[2]) == (width, height)
            )
        except Exception:  # kerchunk-backed slides, formats tifffile lays out otherwise
            return None
        return cls(page, cache, key) if plain else None

    def read(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        """The level's pixels ``[y, y + height) x [x, x + width)``, zero outside the level.

        Returns:
            uint8. Shape: (height, width, samples).
        """
        x1, y1 = min(x + width, self.width), min(y + height, self.height)
        x0, y0 = max(x, 0), max(y, 0)
        inside = (x0, y0, x1, y1) == (x, y, x + width, y + height)
        out = (np.empty if inside else np.zeros)((height, width, self.samples), np.uint8)
        if x0 >= x1 or y0 >= y1:
            return out
        th, tw = self.tile_height, self.tile_width
        for row in range(y0 // th, (y1 - 1) // th + 1):
            top = row * th
            r0, r1 = max(y0, top), min(y1, top + th)
            for col in range(x0 // tw, (x1 - 1) // tw + 1):
                left = col * tw
                c0, c1 = max(x0, left), min(x1, left + tw)
                tile = self.tile(row, col)
                out[r0 - y : r1 - y, c0 - x : c1 - x] = tile[
                    r0 - top : r1 - top, c0 - left : c1 - left
                ]
        return out

    def tile(self, row: int, col: int) -> np.ndarray:
        """Decoded tile (row, col), cropped to the level: from the cache, or read and decoded."""
        index = row * self.tiles_across + col
        key = (*self.key, index)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        th = min(self.tile_height, self.height - row * self.tile_height)
        tw = min(self.tile_width, self.width - col * self.tile_width)
        offset = int(self.page.dataoffsets[index])
        count = int(self.page.databytecounts[index])
        if offset == 0 or count == 0:  # a tile missing from the file reads as zeros
            tile = np.zeros((th, tw, self.samples), np.uint8)
        else:
            fh = self.page.parent.filehandle
            with fh.lock:
                fh.seek(offset)
                data = fh.read(count)
            decoded = self.keyframe.decode(data, index, **self._decode_args)[0]
            full = decoded.reshape(self.tile_height, self.tile_width, self.samples)
            tile = full if (th, tw) == full.shape[:2] else np.ascontiguousarray(full[:th, :tw])
        self.cache.put(key, tile)
        return tile


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
        tile_cache_bytes: bound of each process's :class:`TileCache` of decoded slide tiles
            (every DataLoader worker has its own); 0 decodes every tile at every read.

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
        ValueError: ``crop``, ``min_tissue``, ``seed``, ``tiles_per_epoch`` or
            ``tile_cache_bytes`` out of range.
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
        tile_cache_bytes: int = DEFAULT_TILE_CACHE_BYTES,
    ) -> None:
        if crop < 1:
            raise ValueError(f"crop={crop}: expected a positive crop size")
        if not 0.0 <= min_tissue <= 1.0:
            raise ValueError(f"min_tissue={min_tissue}: expected a fraction in [0, 1]")
        if seed < 0:
            raise ValueError(f"seed={seed}: expected a non-negative seed")
        if tiles_per_epoch < 1:
            raise ValueError(f"tiles_per_epoch={tiles_per_epoch}: expected a positive count")
        if tile_cache_bytes < 0:
            raise ValueError(f"tile_cache_bytes={tile_cache_bytes}: expected a size >= 0")
        self.crop = int(crop)
        self.tile_cache_bytes = int(tile_cache_bytes)
        self.seed = int(seed)
        self.tiles_per_epoch = int(tiles_per_epoch)
        self.paths = resolve_slide_paths(paths_or_glob)
        self.plans: list[ReadPlan] = []
        self._downsamples: list[tuple[float, ...]] = []
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
            self._downsamples.append(tuple(float(d) for d in slide.level_downsamples))
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
        self._readers: dict[tuple[int, int], LevelReader | None] = {}
        self._cache = TileCache(self.tile_cache_bytes)
        self._slides_pid: int | None = None

    def __len__(self) -> int:
        return self.tiles_per_epoch

    def __getstate__(self) -> dict[str, Any]:
        # Slide handles, readers and decoded tiles are per process (made lazily by the process
        # that reads).
        state = dict(self.__dict__)
        state["_slides"] = {}
        state["_readers"] = {}
        state["_cache"] = TileCache(self.tile_cache_bytes)
        state["_slides_pid"] = None
        return state

    @property
    def tile_cache(self) -> TileCache:
        """This process's cache of decoded slide tiles."""
        self._own_process()
        return self._cache

    def _own_process(self) -> None:
        pid = os.getpid()
        if self._slides_pid != pid:
            # Handles inherited through fork are replaced, never shared between processes; the
            # decoded tiles go with them (each worker fills its own cache).
            self._slides, self._readers = {}, {}
            self._cache = TileCache(self.tile_cache_bytes)
            self._slides_pid = pid

    def _slide(self, k: int) -> Any:
        self._own_process()
        if k not in self._slides:
            self._slides[k] = _open_slide(self.paths[k])
        return self._slides[k]

    def _reader(self, k: int, level: int) -> LevelReader | None:
        """The direct reader of slide k's level, or None to read through tiffslide."""
        slide = self._slide(k)
        if (k, level) not in self._readers:
            reader = LevelReader.for_level(slide, level, self._cache, (k, level))
            if reader is not None and not self._reads_like_tiffslide(slide, level, reader):
                logger.debug("%s: level %d is read through tiffslide", self.paths[k], level)
                reader = None
            self._readers[(k, level)] = reader
        return self._readers[(k, level)]

    def _reads_like_tiffslide(self, slide: Any, level: int, reader: LevelReader) -> bool:
        """Compare a region across the first tile corner with tiffslide's read_region."""
        ds = float(slide.level_downsamples[level])
        x0 = max(0, min(reader.tile_width - 8, reader.width - 16))
        y0 = max(0, min(reader.tile_height - 8, reader.height - 16))
        base = (math.ceil(x0 * ds), math.ceil(y0 * ds))
        rx, ry = int(base[0] / ds), int(base[1] / ds)  # tiffslide's level coordinates
        size = (min(16, reader.width - rx), min(16, reader.height - ry))
        if min(size) < 1:
            return False
        expected = np.asarray(slide.read_region(base, level, size, as_array=True))
        return bool(np.array_equal(reader.read(rx, ry, *size), expected))

    def tile(self, slide_index: int, x: int, y: int) -> torch.Tensor:
        """Read the tile of slide ``slide_index`` with level-0 corner ``(x, y)``.

        Returns:
            uint8 tensor. Shape: (3, crop, crop).
        """
        plan = self.plans[slide_index]
        path = self.paths[slide_index]
        n = plan.read_size
        reader = self._reader(slide_index, plan.level)
        if reader is None:
            region = self._slide(slide_index).read_region((x, y), plan.level, (n, n), as_array=True)
        else:
            ds = self._downsamples[slide_index][plan.level]
            region = reader.read(int(x / ds), int(y / ds), n, n)  # tiffslide's level coordinates
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
