"""``histodrl embed``: pooled encoder features of every tile of a source, in one HDF5 file.

The features are those a slide- or image-level model (multiple-instance learning, attention
pooling, a classifier of your own) is trained on: the frozen trunk (``--init``, as every
downstream command reads it, into :func:`histodrl.nn.build_encoder` ``(arch, width)``; a random
trunk is seeded as ``probe --seed 0`` seeds it) runs in eval mode without gradients, batched on
the device under the autocast of ``--precision``, on the tiles as every downstream task sees them
(uint8 -> [0, 1] -> ImageNet mean and std), and the output of each block of ``--blocks`` (at its
tap, :data:`histodrl.downstream.probe.BLOCK_TAPS`) is globally average-pooled into one float32
vector per tile.

What is embedded, one row per tile, in this order:

* ``folder:DIR``: every image under DIR (recursively, sorted by relative path). With class
  folders (``DIR/<class>/`` with two or more classes, or ``DIR/train|val|test/<class>/``, as
  ``classify`` reads them) the label is the class index (classes sorted by name) and the split is
  the split folder or the seeded split of :func:`~histodrl.data.labelled.classification_source`
  (split seed 0, its default fractions; left unknown when that split cannot be drawn). Otherwise
  no label and no split.
* ``glas:DIR``: the train, testA and testB images; split = part; label = the grade of
  ``Grade.csv`` (benign 0, malignant 1) when the folder has one.
* ``masks:DIR``, ``monuseg:DIR``: the images of every split of
  :func:`~histodrl.data.labelled.segmentation_source` (split seed 0, its default fractions); no
  label (the masks are not embedded).
* ``pcam:DIR``: every patch of the splits present (train, valid, test); label = the patch's.
* ``wsi:PATH|GLOB``: every tissue tile of every slide: the candidate tiles of
  :class:`~histodrl.data.wsi.WsiTiles` (``--level`` / ``--mpp``, ``--min-tissue``: those
  ``wsi-preview`` outlines) that lie on the grid without overlap (every other candidate along
  each axis of its half-tile grid); with ``--max-tiles-per-slide N``, N of a slide's tiles evenly
  spread over them in row-major order. Name = the slide's path relative to the slides' common
  folder; attributes ``slides`` and ``read_levels`` give the pyramid level each slide is read at.

**Tiling of images** (every kind but ``wsi``): an image of ``W x H`` pixels is cut into a grid
of ``max(1, W // crop) x max(1, H // crop)`` tiles of ``crop x crop`` without overlap, centred on
the image (the remainder, less than a tile, is split between the two margins and not embedded).
A side shorter than the crop is not resized, which would change the scale the encoder was
trained at: the tile is the whole side, padded with white (255, the glass) on the right or the
bottom, and its recorded ``w`` / ``h`` say how much of it is image. ``--crop`` defaults to 256
(pcam: 96, the patch).

**The file** (``--out FILE.h5``; N tiles; every per-tile dataset has length N):

=======================  =========  ===============================================================
``name``                 str        the image (path relative to DIR, or the record's name, e.g.
                                    ``testA_3``; pcam ``<split>_<index>``) or the slide
``split``                str        the source's split or part; ``""`` where unknown
``label``                int64      class index (into attribute ``classes``); -1 where unknown
``x``, ``y``             int64      the tile's top-left corner in level-0 pixels of the image/slide
``w``, ``h``             int64      the tile's size in level-0 pixels (a slide tile read at
                                    ``--mpp`` or a coarser level covers more than ``crop``)
``features/<block>``     float32    (N, C) pooled features of the block (attribute ``tap``)
=======================  =========  ===============================================================

File attributes: ``format`` (``histodrl-embed-1``), ``data``, ``data_description``, ``init``,
``init_description``, ``arch``, ``width``, ``blocks``, ``taps``, ``crop``, ``tiling``,
``precision``; for ``wsi`` ``min_tissue``, ``slides``, ``read_levels`` and, when given, ``mpp``,
``level``, ``max_tiles_per_slide``; ``classes`` (when labels are known); ``histodrl_version``,
``torch_version``, ``encoder_sha256`` (of the trunk's state dict), ``tiles_sha256`` (of the tile
list), ``n_tiles``, ``finished_tiles``, ``complete`` and ``settings`` (JSON: what ``--resume``
compares).

**Interrupted runs.** The file is written as ``FILE.h5.partial``: the per-tile datasets first,
then the features batch by batch (rows not yet computed read as NaN); every :data:`FLUSH_EVERY` batches (or
:data:`FLUSH_SECONDS`) the number of finished tiles is recorded (``finished_tiles``) and the file
flushed; an interrupted run (Ctrl-C, SIGTERM, an error) records its last finished batch before it
stops. ``--resume`` continues from the recorded count when the settings match (else a one-line
error lists the differences); rows after it are computed again, so a run killed between two
records loses at most those batches. When every tile is done the file is marked ``complete`` and
renamed atomically to ``FILE.h5``: a ``FILE.h5`` is always complete. An existing ``FILE.h5`` is
replaced only with ``--overwrite`` (and only once the new one is complete).

Reading the file back needs only h5py::

    import h5py
    with h5py.File("features.h5", "r") as f:
        conv5 = f["features/conv5"][:]                        # float32 (N, C), a row per tile
        names, splits = f["name"].asstr()[:], f["split"].asstr()[:]  # split "" if unknown
        x, y, w, h = (f[k][:] for k in ("x", "y", "w", "h"))  # level-0 box of each tile
        labels, settings = f["label"][:], dict(f.attrs)       # label -1 if unknown
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from histodrl.commands.embed import EmbedOptions
from histodrl.errors import UserInputError

logger = logging.getLogger(__name__)

FORMAT = "histodrl-embed-1"
PARTIAL_SUFFIX = ".partial"
#: Batches between two recorded progress counts (and flushes) of the partial file ...
FLUSH_EVERY = 8
#: ... or seconds, whichever comes first.
FLUSH_SECONDS = 60.0
#: Value of the pixels that pad a tile side shorter than the crop (white, the glass).
PAD_VALUE = 255
#: Bytes of features per HDF5 chunk (rows of one block's dataset).
CHUNK_BYTES = 1 << 20

IMAGE_TILING = (
    "centred grid of crop x crop tiles without overlap, max(1, side // crop) per side; a side "
    "shorter than crop padded with white (255) on the right/bottom"
)
SLIDE_TILING = (
    "tissue tiles of WsiTiles on the grid without overlap (every other candidate of its "
    "half-tile grid), read at the plan's level and resized to crop"
)

# Settings compared by --resume, with how a difference is named.
_SETTING_FLAGS = {
    "data_kind": "--data",
    "arch": "--arch",
    "width": "--width",
    "blocks": "--blocks",
    "crop": "--crop",
    "precision": "--precision",
    "mpp": "--mpp",
    "level": "--level",
    "min_tissue": "--min-tissue",
    "max_tiles_per_slide": "--max-tiles-per-slide",
}
_TILING_KEYS = ("data_kind", "crop", "mpp", "level", "min_tissue", "max_tiles_per_slide")


def partial_path(out: str | os.PathLike[str]) -> Path:
    """Where the file is written until it is complete: ``FILE.h5.partial``."""
    out = Path(out)
    return out.with_name(out.name + PARTIAL_SUFFIX)


# ------------------------------------------------------------------------------------------------
# Tiles
# ------------------------------------------------------------------------------------------------


def grid_boxes(width: int, height: int, crop: int) -> np.ndarray:
    """The tiles of a ``width x height`` image (module docstring: centred grid, no overlap).

    Returns:
        int64 ``(x, y, w, h)`` boxes in the image's pixels, row-major. Shape: (K, 4), K >= 1.
    """
    if crop < 1 or width < 1 or height < 1:
        raise ValueError(f"width={width}, height={height}, crop={crop}: expected sizes >= 1")
    nx, ny = max(1, width // crop), max(1, height // crop)
    ox, oy = max(0, (width - nx * crop) // 2), max(0, (height - ny * crop) // 2)
    w, h = min(crop, width), min(crop, height)
    xs = ox + crop * np.arange(nx, dtype=np.int64)
    ys = oy + crop * np.arange(ny, dtype=np.int64)
    gx, gy = np.meshgrid(xs, ys)  # row-major: y outer, x inner
    boxes = np.empty((nx * ny, 4), dtype=np.int64)
    boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3] = gx.ravel(), gy.ravel(), w, h
    return boxes


def _padded(region: np.ndarray, crop: int) -> np.ndarray:
    """A (h, w, 3) uint8 region as a (crop, crop, 3) tile, white where the region is smaller."""
    if region.shape[:2] == (crop, crop):
        return region
    tile = np.full((crop, crop, 3), PAD_VALUE, dtype=np.uint8)
    tile[: region.shape[0], : region.shape[1]] = region
    return tile


class ImageTiles:
    """Reads the tiles of image files; each image is decoded once per run of its tiles.

    Args:
        paths, sizes: the images and their ``(width, height)`` when they were indexed.
        image: the image (index into ``paths``) of each tile. Shape: (N,).
        boxes: each tile's ``(x, y, w, h)``. Shape: (N, 4).
        crop: tile side.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        sizes: Sequence[tuple[int, int]],
        image: np.ndarray,
        boxes: np.ndarray,
        crop: int,
    ) -> None:
        self.paths = list(paths)
        self.sizes = list(sizes)
        self.image = np.asarray(image, dtype=np.int64)
        self.boxes = np.asarray(boxes, dtype=np.int64)
        self.crop = int(crop)
        self._last: tuple[int, np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_last": None}

    def _decode(self, k: int) -> np.ndarray:
        from histodrl.data.masks import read_image

        if self._last is not None and self._last[0] == k:
            return self._last[1]
        image = read_image(self.paths[k])
        width, height = self.sizes[k]
        if image.shape[:2] != (height, width):
            raise UserInputError(f"{self.paths[k]}: changed on disk since it was indexed")
        self._last = (k, image)
        return image

    def read(self, tiles: np.ndarray) -> torch.Tensor:
        """uint8 (n, 3, crop, crop) tiles."""
        out = np.empty((len(tiles), self.crop, self.crop, 3), dtype=np.uint8)
        for j, t in enumerate(tiles):
            image = self._decode(int(self.image[t]))
            x, y, w, h = (int(v) for v in self.boxes[t])
            out[j] = _padded(image[y : y + h, x : x + w], self.crop)
        return torch.from_numpy(np.ascontiguousarray(out.transpose(0, 3, 1, 2)))


class PcamTiles:
    """Reads the tiles of PCam patches, one HDF5 read per split and batch.

    Args:
        datasets: one :class:`~histodrl.data.pcam.PCamDataset` per split.
        split, patch: each tile's split (index into ``datasets``) and patch index.
        boxes: each tile's ``(x, y, w, h)`` inside its patch.
        crop: tile side.
    """

    def __init__(
        self,
        datasets: Sequence[Any],
        split: np.ndarray,
        patch: np.ndarray,
        boxes: np.ndarray,
        crop: int,
    ) -> None:
        self.datasets = list(datasets)
        self.split = np.asarray(split, dtype=np.int64)
        self.patch = np.asarray(patch, dtype=np.int64)
        self.boxes = np.asarray(boxes, dtype=np.int64)
        self.crop = int(crop)

    def read(self, tiles: np.ndarray) -> torch.Tensor:
        out = np.full((len(tiles), 3, self.crop, self.crop), PAD_VALUE, dtype=np.uint8)
        tiles = np.asarray(tiles, dtype=np.int64)
        for s in np.unique(self.split[tiles]):
            rows = np.nonzero(self.split[tiles] == s)[0]
            patches = self.datasets[int(s)].read_patches(self.patch[tiles[rows]]).numpy()
            for j, patch in zip(rows, patches):
                x, y, w, h = (int(v) for v in self.boxes[tiles[j]])
                out[j, :, :h, :w] = patch[:, y : y + h, x : x + w]
        return torch.from_numpy(out)


class SlideTiles:
    """Reads slide tiles through :meth:`histodrl.data.wsi.WsiTiles.tile` (its public API).

    Args:
        wsi: the reader of the slides.
        slide: each tile's slide index. Shape: (N,).
        corners: each tile's level-0 ``(x, y)``. Shape: (N, 2).
    """

    def __init__(self, wsi: Any, slide: np.ndarray, corners: np.ndarray) -> None:
        self.wsi = wsi
        self.slide = np.asarray(slide, dtype=np.int64)
        self.corners = np.asarray(corners, dtype=np.int64)

    def read(self, tiles: np.ndarray) -> torch.Tensor:
        return torch.stack(
            [
                self.wsi.tile(int(self.slide[t]), int(self.corners[t, 0]), int(self.corners[t, 1]))
                for t in tiles
            ]
        )


@dataclass
class TilePlan:
    """Every tile a run embeds, in file order, and how to read it.

    Attributes:
        kind: the data kind.
        description: one line about the source and its tiles.
        names, splits: per tile (``""``: unknown split).
        labels: int64 (N,), -1 where unknown.
        boxes: int64 (N, 4) level-0 ``(x, y, w, h)``.
        classes: class names (label = position), empty without labels.
        reader: has ``read(tile indices) -> uint8 tensor (n, 3, crop, crop)``.
        crop: tile side.
        tiling: how the tiles were laid out (a file attribute).
        attributes: more file attributes of the kind (wsi: ``slides``, ``read_levels``).
    """

    kind: str
    description: str
    names: list[str]
    splits: list[str]
    labels: np.ndarray
    boxes: np.ndarray
    classes: tuple[str, ...]
    reader: Any
    crop: int
    tiling: str = IMAGE_TILING
    attributes: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)

    def checksum(self) -> str:
        """sha256 of the tile list (names, splits, labels, boxes): what the rows of the file are."""
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.boxes, dtype="<i8").tobytes())
        digest.update(np.ascontiguousarray(self.labels, dtype="<i8").tobytes())
        for texts in (self.names, self.splits):
            digest.update(json.dumps(texts).encode())
        return digest.hexdigest()


@dataclass(frozen=True)
class _Image:
    path: Path
    name: str
    split: str
    label: int
    width: int
    height: int


def _image_plan(
    kind: str, images: Sequence[_Image], classes: Sequence[str], crop: int, description: str
) -> TilePlan:
    names: list[str] = []
    splits: list[str] = []
    labels: list[int] = []
    owner: list[np.ndarray] = []
    boxes: list[np.ndarray] = []
    for k, im in enumerate(images):
        grid = grid_boxes(im.width, im.height, crop)
        names += [im.name] * len(grid)
        splits += [im.split] * len(grid)
        labels += [im.label] * len(grid)
        owner.append(np.full(len(grid), k, dtype=np.int64))
        boxes.append(grid)
    box = np.concatenate(boxes)
    reader = ImageTiles(
        [im.path for im in images],
        [(im.width, im.height) for im in images],
        np.concatenate(owner),
        box,
        crop,
    )
    return TilePlan(
        kind=kind,
        description=f"{description}: {len(names)} tiles {crop}x{crop}",
        names=names,
        splits=splits,
        labels=np.asarray(labels, dtype=np.int64),
        boxes=box,
        classes=tuple(classes),
        reader=reader,
        crop=crop,
    )


def _class_layout(root: Path, paths: Sequence[Path]) -> str:
    """``"splits"`` (train/ val/ test/ folders), ``"classes"`` (two or more class folders and
    no image beside them) or ``"plain"``."""
    if (root / "train").is_dir():
        return "splits"
    parts = [p.relative_to(root).parts for p in paths]
    if all(len(q) >= 2 for q in parts) and len({q[0] for q in parts}) >= 2:
        return "classes"
    return "plain"


def _folder_images(root: Path) -> tuple[list[_Image], tuple[str, ...], str]:
    from histodrl.data.folder import find_images
    from histodrl.data.labelled import folder_classification
    from histodrl.data.masks import image_size

    paths = find_images(root)
    layout = _class_layout(root, paths)
    known: dict[Path, tuple[int, str]] = {}
    classes: tuple[str, ...] = ()
    if layout != "plain":
        try:
            source = folder_classification(root)
        except UserInputError as exc:
            if layout == "splits":
                raise
            classes = tuple(sorted({p.relative_to(root).parts[0] for p in paths}))
            known = {p.resolve(): (classes.index(p.relative_to(root).parts[0]), "") for p in paths}
            logger.warning(
                "%s: labels from the class folders, no split recorded (the seeded split of "
                "classify cannot be drawn: %s)",
                root,
                exc,
            )
        else:
            classes = source.classes
            for split, dataset in (
                ("train", source.train),
                ("val", source.val),
                ("test", source.test),
            ):
                for im in dataset.images if dataset is not None else ():
                    known[im.path.resolve()] = (im.label, split)
    images = []
    for path in paths:
        label, split = known.get(path.resolve(), (-1, ""))
        width, height = image_size(path)
        images.append(_Image(path, path.relative_to(root).as_posix(), split, label, width, height))
    what = _count(len(images), "image")
    if classes:
        what += f", {len(classes)} classes {', '.join(classes)}"
    return images, classes, f"folder:{root} ({what})"


def _segmentation_images(spec: str) -> tuple[list[_Image], tuple[str, ...], str]:
    from histodrl.data.glas import GRADES
    from histodrl.data.labelled import segmentation_source

    source = segmentation_source(spec)
    parts: list[tuple[str, Any]] = [("train", source.train)]
    if source.val is not None:
        parts.append(("val", source.val))
    parts += list(source.tests.items())
    images = []
    for split, dataset in parts:
        for r in dataset.records:
            label = GRADES.index(r.grade) if r.grade in GRADES else -1
            images.append(
                _Image(Path(r.image_path), r.name, split, label, int(r.width), int(r.height))
            )
    classes = GRADES if any(im.label >= 0 for im in images) else ()
    return images, tuple(classes), source.description


def _pcam_plan(root: Path, crop: int) -> TilePlan:
    from histodrl.data.labelled import PCAM_CLASSES
    from histodrl.data.pcam import PATCH_SHAPE, PCAM_SPLITS, PCamDataset, pcam_path

    present = [s for s in PCAM_SPLITS if pcam_path(root, s, "x").is_file()]
    if not present:
        PCamDataset(root, "train")  # raises the missing-file error (with the gunzip hint)
    datasets = [
        PCamDataset(root, s, with_labels=pcam_path(root, s, "y").is_file()) for s in present
    ]
    grid = grid_boxes(PATCH_SHAPE[1], PATCH_SHAPE[0], crop)
    names: list[str] = []
    splits: list[str] = []
    labels, split_index, patch, boxes = [], [], [], []
    for s, (name, dataset) in enumerate(zip(present, datasets)):
        n = len(dataset)
        index = np.repeat(np.arange(n, dtype=np.int64), len(grid))
        names += [f"{name}_{i}" for i in index.tolist()]
        splits += [name] * len(index)
        known = dataset.labels if dataset.labels is not None else np.full(n, -1)
        labels.append(np.asarray(known, dtype=np.int64)[index])
        split_index.append(np.full(len(index), s, dtype=np.int64))
        patch.append(index)
        boxes.append(np.tile(grid, (n, 1)))
    box = np.concatenate(boxes)
    label = np.concatenate(labels)
    reader = PcamTiles(datasets, np.concatenate(split_index), np.concatenate(patch), box, crop)
    counts = ", ".join(f"{len(d)} {s}" for s, d in zip(present, datasets))
    return TilePlan(
        kind="pcam",
        description=f"pcam:{root} ({counts} patches 96x96): {len(names)} tiles {crop}x{crop}",
        names=names,
        splits=splits,
        labels=label,
        boxes=box,
        classes=PCAM_CLASSES if (label >= 0).any() else (),
        reader=reader,
        crop=crop,
    )


def slide_names(paths: Sequence[Path]) -> list[str]:
    """Each slide's path relative to the slides' common folder (one slide: its file name)."""
    parents = [str(Path(p).resolve().parent) for p in paths]
    common = Path(os.path.commonpath(parents))
    return [Path(p).resolve().relative_to(common).as_posix() for p in paths]


def grid_tiles(positions: np.ndarray, footprint: float) -> np.ndarray:
    """The candidates (level-0 corners on the half-tile grid of
    :func:`~histodrl.data.wsi.tile_positions`) that lie on the grid without overlap.

    Shape: (K, 2) -> bool (K,).
    """
    step = footprint / 2.0
    index = np.rint(np.asarray(positions, dtype=np.float64) / step).astype(np.int64)
    return (index[:, 0] % 2 == 0) & (index[:, 1] % 2 == 0)


def spread(count: int, most: int | None) -> np.ndarray:
    """``most`` indices of ``range(count)`` evenly spread (all of them when ``most`` is None or
    not smaller)."""
    if most is None or count <= most:
        return np.arange(count, dtype=np.int64)
    return np.unique(np.rint(np.linspace(0, count - 1, most)).astype(np.int64))


def _slide_plan(path: str, options: EmbedOptions, crop: int) -> TilePlan:
    from histodrl.data.wsi import WsiTiles

    wsi = WsiTiles(
        path, crop=crop, level=options.level, mpp=options.mpp, min_tissue=options.min_tissue
    )
    names = slide_names(wsi.paths)
    slide_of, corners, sides, tile_names = [], [], [], []
    on_grid = 0
    for k, plan in enumerate(wsi.plans):
        rows = wsi.positions[wsi.positions[:, 0] == k][:, 1:]
        rows = rows[grid_tiles(rows, plan.footprint)]
        on_grid += len(rows)
        rows = rows[spread(len(rows), options.max_tiles_per_slide)]
        slide_of.append(np.full(len(rows), k, dtype=np.int64))
        corners.append(rows)
        sides.append(np.full(len(rows), round(plan.footprint), dtype=np.int64))
        tile_names += [names[k]] * len(rows)
    corner = np.concatenate(corners).astype(np.int64)
    if len(corner) == 0:
        raise UserInputError(
            f"{options.data}: no tile of {crop}x{crop} with at least {options.min_tissue:.0%} "
            "tissue on the grid without overlap (lower --min-tissue or --crop?)"
        )
    side = np.concatenate(sides)
    boxes = np.column_stack([corner, side, side]).astype(np.int64)
    slides = np.concatenate(slide_of)
    where = f"{options.mpp:g} um/px" if options.mpp is not None else f"level {wsi.plans[0].level}"
    used = len(np.unique(slides))
    count = f"{len(boxes)} of {on_grid}" if len(boxes) < on_grid else f"{len(boxes)}"
    return TilePlan(
        kind="wsi",
        description=f"wsi:{path} ({_count(len(wsi.paths), 'slide')}, {used} with tissue tiles): "
        f"{count} tissue tiles {crop}x{crop} at {where}, without overlap",
        names=tile_names,
        splits=[""] * len(boxes),
        labels=np.full(len(boxes), -1, dtype=np.int64),
        boxes=boxes,
        classes=(),
        reader=SlideTiles(wsi, slides, corner),
        crop=crop,
        tiling=SLIDE_TILING,
        attributes={"slides": names, "read_levels": [p.level for p in wsi.plans]},
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def build_plan(options: EmbedOptions) -> TilePlan:
    """The tiles of ``options.data`` (module docstring), checked before anything is written.

    Raises:
        UserInputError: a bad source, as each reader reports it.
    """
    from histodrl.data.sources import parse_source

    kind, path = parse_source(options.data)
    crop = options.tile_side
    if kind != "wsi":
        ignored = [
            flag
            for flag, value, default in (
                ("--mpp", options.mpp, None),
                ("--level", options.level, None),
                ("--min-tissue", options.min_tissue, 0.5),
                ("--max-tiles-per-slide", options.max_tiles_per_slide, None),
            )
            if value != default
        ]
        if ignored:
            logger.warning(
                "%s: apply to wsi: sources only; ignored for %s:", ", ".join(ignored), kind
            )
    if kind == "wsi":
        return _slide_plan(path, options, crop)
    if kind == "pcam":
        return _pcam_plan(Path(path), crop)
    if kind == "folder":
        images, classes, description = _folder_images(Path(path))
    else:
        images, classes, description = _segmentation_images(options.data)
    return _image_plan(kind, images, classes, crop, description)


# ------------------------------------------------------------------------------------------------
# The encoder
# ------------------------------------------------------------------------------------------------


def frozen_encoder(options: EmbedOptions) -> tuple[nn.Module, str]:
    """The trunk with its ``--init`` weights, in eval mode without gradients; and its description.

    A random trunk is drawn from the seed ``probe --seed 0`` uses, so it is the same every run.
    """
    from histodrl.downstream.init import load_init
    from histodrl.nn import build_encoder
    from histodrl.runs.sampling import derive_seed

    generator = torch.Generator().manual_seed(derive_seed(0, "encoder-init"))
    encoder = build_encoder(options.arch, options.width, generator=generator)
    description = load_init(encoder, options.init)
    encoder.eval().requires_grad_(False)
    return encoder, description


def encoder_checksum(encoder: nn.Module) -> str:
    """sha256 of a module's state dict (names, dtypes, shapes and bytes, in name order)."""
    digest = hashlib.sha256()
    for key, value in sorted(encoder.state_dict().items()):
        tensor = value.detach().to("cpu").contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------
# The file
# ------------------------------------------------------------------------------------------------


def embed_settings(
    options: EmbedOptions, plan: TilePlan, precision: str, checksum: str
) -> dict[str, Any]:
    """What the rows of the file depend on: compared by ``--resume``."""
    settings: dict[str, Any] = {
        "format": FORMAT,
        "data_kind": plan.kind,
        "arch": options.arch,
        "width": options.width,
        "blocks": ",".join(options.block_list),
        "crop": plan.crop,
        "precision": precision,
        "encoder_sha256": checksum,
        "n_tiles": len(plan),
        "tiles_sha256": plan.checksum(),
    }
    if plan.kind == "wsi":
        settings.update(
            mpp=options.mpp,
            level=options.level,
            min_tissue=options.min_tissue,
            max_tiles_per_slide=options.max_tiles_per_slide,
        )
    return settings


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def settings_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The differences between two :func:`embed_settings`, as the flags a user would change."""
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    out = [
        f"{_SETTING_FLAGS[k]} {_show(old.get(k))} (now {_show(new.get(k))})"
        for k in _SETTING_FLAGS
        if k in changed
    ]
    if "encoder_sha256" in changed and not {"arch", "width"} & set(changed):
        out.append("the encoder weights (--init) differ")
    if {"tiles_sha256", "n_tiles"} & set(changed) and not set(_TILING_KEYS) & set(changed):
        out.append(
            f"the tiles of --data differ ({old.get('n_tiles')} tiles, now {new.get('n_tiles')})"
        )
    return out


def _create(
    partial: Path,
    plan: TilePlan,
    attributes: dict[str, Any],
    channels: dict[str, tuple[str, int]],
) -> Any:
    """A new partial file with the per-tile datasets and empty (NaN) feature datasets."""
    import h5py

    partial.parent.mkdir(parents=True, exist_ok=True)
    h5 = h5py.File(partial, "w-")
    try:
        text = h5py.string_dtype()
        h5.create_dataset("name", data=np.asarray(plan.names, dtype=object), dtype=text)
        h5.create_dataset("split", data=np.asarray(plan.splits, dtype=object), dtype=text)
        h5.create_dataset("label", data=np.asarray(plan.labels, dtype=np.int64))
        for i, key in enumerate(("x", "y", "w", "h")):
            h5.create_dataset(key, data=np.ascontiguousarray(plan.boxes[:, i], dtype=np.int64))
        group = h5.create_group("features")
        n = len(plan)
        for block, (tap, c) in channels.items():
            rows = max(1, min(n, CHUNK_BYTES // (4 * c)))
            data = group.create_dataset(
                block, shape=(n, c), dtype=np.float32, chunks=(rows, c), fillvalue=np.nan
            )
            data.attrs["tap"] = tap
        for key, value in attributes.items():
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                h5.attrs.create(key, data=[str(v) for v in value], dtype=text)
            elif isinstance(value, (list, tuple)):
                h5.attrs[key] = np.asarray(value, dtype=np.int64)
            elif isinstance(value, str):  # str subclasses too (torch.__version__)
                h5.attrs[key] = str(value)
            elif value is not None:
                h5.attrs[key] = value
        h5.flush()
    except BaseException:
        h5.close()
        partial.unlink(missing_ok=True)
        raise
    return h5


def _reopen(partial: Path, settings: dict[str, Any]) -> tuple[Any, int]:
    """The partial file of an interrupted run, opened for writing, and its finished tile count.

    Raises:
        UserInputError: an unreadable file, or one written with other settings (listing them).
    """
    import h5py

    try:
        h5 = h5py.File(partial, "r+")
    except OSError as exc:
        raise UserInputError(
            f"--resume: {partial} cannot be read ({str(exc).splitlines()[0]}); start again with "
            "--overwrite"
        ) from None
    try:
        raw = h5.attrs.get("settings")
        old = json.loads(raw) if isinstance(raw, (str, bytes)) else None
        if not isinstance(old, dict) or old.get("format") != FORMAT:
            raise UserInputError(
                f"--resume: {partial} is not a partial file of histodrl embed ({FORMAT}); start "
                "again with --overwrite"
            )
        differences = settings_differences(old, settings)
        if differences:
            raise UserInputError(
                f"--resume: {partial} was started with other settings: {'; '.join(differences)} "
                "(use the same settings, or --overwrite to start again)"
            )
        done = int(h5.attrs.get("finished_tiles", 0))
    except BaseException:
        h5.close()
        raise
    return h5, max(0, min(done, int(settings["n_tiles"])))


def _checkpoint(h5: Any, done: int) -> None:
    """Record ``done`` finished tiles and flush the file."""
    h5.attrs["finished_tiles"] = int(done)
    h5.flush()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


class _Batches(Dataset):
    """Batch ``j`` = tiles ``[start + j * size, start + (j + 1) * size)`` of a plan, as uint8."""

    def __init__(self, reader: Any, n_tiles: int, start: int, size: int) -> None:
        self.reader, self.n_tiles, self.start, self.size = reader, n_tiles, start, size

    def __len__(self) -> int:
        return max(0, math.ceil((self.n_tiles - self.start) / self.size))

    def __getitem__(self, j: int) -> torch.Tensor:
        low = self.start + j * self.size
        return self.reader.read(np.arange(low, min(self.n_tiles, low + self.size)))


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt (so the progress is recorded) while the block runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class _Progress:
    done: int


def _check_paths(out: Path, partial: Path, options: EmbedOptions) -> None:
    """The one-line refusals about the output that need no data."""
    if out.is_dir():
        raise UserInputError(f"--out {out}: is a folder, expected the path of an HDF5 file")
    if out.exists() and not options.overwrite:
        if options.resume:
            raise UserInputError(
                f"--resume: {out} is already complete (--overwrite computes it again)"
            )
        raise UserInputError(f"{out}: exists (--overwrite replaces it)")
    if options.resume and not partial.is_file():
        raise UserInputError(
            f"--resume: {partial} not found (nothing to continue; run without --resume)"
        )
    if partial.exists() and not (options.resume or options.overwrite):
        raise UserInputError(
            f"{partial}: an unfinished embedding is there (--resume continues it, --overwrite "
            "starts again)"
        )


def _embed_batches(
    h5: Any,
    plan: TilePlan,
    encoder: nn.Module,
    channels: dict[str, tuple[str, int]],
    device: torch.device,
    precision: str,
    options: EmbedOptions,
    progress: _Progress,
) -> None:
    """Features of the tiles from ``progress.done`` on, written batch by batch into ``h5``;
    ``progress.done`` counts the tiles written, the count is recorded every few batches."""
    from tqdm import tqdm

    from histodrl.downstream.evaluation import eval_input
    from histodrl.nn import pooled_taps
    from histodrl.runs.trainer import autocast_for

    n = len(plan)
    batches = _Batches(plan.reader, n, progress.done, options.batch_size)
    workers = options.num_workers
    loader = DataLoader(
        batches,
        batch_size=None,
        num_workers=_default_workers(len(batches)) if workers is None else workers,
        pin_memory=device.type == "cuda",
    )
    encoder = encoder.to(device=device, memory_format=torch.channels_last)
    taps = [tap for tap, _ in channels.values()]
    datasets = [h5["features"][block] for block in channels]
    since, last = 0, time.monotonic()
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device.type == "cuda"  # one tile size throughout
    bar = tqdm(
        total=n,
        initial=progress.done,
        unit="tile",
        desc=f"embed {Path(options.out).name}",
        file=sys.stderr,
        disable=options.no_progress,
        dynamic_ncols=True,
    )
    try:
        with _sigterm_interrupts(), torch.inference_mode():
            for tiles in loader:
                x = eval_input(tiles.to(device, non_blocking=True))
                with autocast_for(device, precision):
                    pooled = pooled_taps(encoder, x, taps)
                low, high = progress.done, progress.done + len(tiles)
                for data, tap in zip(datasets, taps):
                    data[low:high] = pooled[tap].float().cpu().numpy()
                progress.done = high
                bar.update(len(tiles))
                since += 1
                if since >= FLUSH_EVERY or time.monotonic() - last >= FLUSH_SECONDS:
                    _checkpoint(h5, progress.done)
                    since, last = 0, time.monotonic()
    finally:
        bar.close()
        torch.backends.cudnn.benchmark = benchmark


def _default_workers(n_batches: int) -> int:
    return max(0, min(4, os.cpu_count() or 1, n_batches - 1))


def file_attributes(
    options: EmbedOptions, plan: TilePlan, settings: dict[str, Any], init_description: str
) -> dict[str, Any]:
    """The file attributes of a new embedding (module docstring); ``None`` values are left out."""
    from histodrl import __version__
    from histodrl.downstream.probe import BLOCK_TAPS

    attributes = {
        "format": FORMAT,
        "data": options.data,
        "data_description": plan.description,
        "init": options.init,
        "init_description": init_description,
        "arch": options.arch,
        "width": options.width,
        "blocks": settings["blocks"],
        "taps": ",".join(BLOCK_TAPS[b] for b in options.block_list),
        "crop": plan.crop,
        "tiling": plan.tiling,
        "precision": settings["precision"],
        "classes": list(plan.classes) if plan.classes else None,
        "histodrl_version": __version__,
        "torch_version": torch.__version__,
        "encoder_sha256": settings["encoder_sha256"],
        "tiles_sha256": settings["tiles_sha256"],
        "n_tiles": len(plan),
        "finished_tiles": 0,
        "complete": False,
        "settings": json.dumps(settings, sort_keys=True),
    }
    attributes.update(plan.attributes)
    if plan.kind == "wsi":
        attributes.update(
            mpp=options.mpp,
            level=options.level,
            min_tissue=options.min_tissue,
            max_tiles_per_slide=options.max_tiles_per_slide,
        )
    return attributes


def run_embed(options: EmbedOptions) -> int:
    """``histodrl embed``: pooled features of every tile of ``--data`` into ``--out FILE.h5``.

    Returns:
        The exit status (0).

    Raises:
        UserInputError: a bad source or ``--init``, an existing output without ``--overwrite``,
            an unfinished one without ``--resume`` or ``--overwrite``, or ``--resume`` with other
            settings than the partial file's.
    """
    from histodrl.downstream.probe import BLOCK_TAPS
    from histodrl.runs.trainer import resolve_device

    out = Path(options.out)
    partial = partial_path(out)
    _check_paths(out, partial, options)
    device = resolve_device(options.accelerator)
    precision = options.precision or ("bf16-mixed" if device.type == "cuda" else "32-true")
    blocks = options.block_list
    taps = [BLOCK_TAPS[b] for b in blocks]
    plan = build_plan(options)
    encoder, init_description = frozen_encoder(options)
    settings = embed_settings(options, plan, precision, encoder_checksum(encoder))
    channels = {b: (t, int(encoder.tap_channels(t))) for b, t in zip(blocks, taps)}

    if options.resume:
        h5, done = _reopen(partial, settings)
    else:
        partial.unlink(missing_ok=True)  # --overwrite: an unfinished one is started again
        attributes = file_attributes(options, plan, settings, init_description)
        h5, done = _create(partial, plan, attributes, channels), 0

    n = len(plan)
    progress = _Progress(done)
    completed = False
    try:
        _embed_batches(h5, plan, encoder, channels, device, precision, options, progress)
        _checkpoint(h5, progress.done)
        h5.attrs["complete"] = True
        h5.close()
        completed = True
    except KeyboardInterrupt:
        print(
            f"histodrl: embed stopped after {progress.done} of {n} tiles; {partial} keeps them "
            "(--resume continues)",
            file=sys.stderr,
        )
        raise
    finally:
        if not completed:
            with contextlib.suppress(Exception):
                h5.attrs["finished_tiles"] = int(progress.done)
            with contextlib.suppress(Exception):
                h5.close()
    _fsync(partial)
    os.replace(partial, out)
    features = ", ".join(f"{b} ({c})" for b, (_, c) in channels.items())
    print(f"histodrl: wrote {out} ({plan.description}; features {features}; {init_description})")
    return 0
