"""``monuseg:DIR``: the MoNuSeg nucleus segmentation data (Kumar et al. 2017), as released.

Layouts of a folder (``DIR`` itself, or each of its ``train/``, ``val/``, ``test*/`` folders):

* the training release: ``Tissue Images/NAME.tif`` with ``Annotations/NAME.xml``, optionally
  ``Binary masks/NAME.png``;
* the test release: ``NAME.tif`` and ``NAME.xml`` side by side (optionally ``Binary masks/``).

Annotations are Aperio ImageScope XML: ``Annotations/Annotation/Regions/Region/Vertices/Vertex``
with ``X`` and ``Y`` attributes in pixels of the tile; ``Annotations@MicronsPerPixel`` is kept as
the record's ``mpp``. Each ``Region`` is one nucleus, rasterised as a filled polygon: pixel
``(row, col)`` belongs to it when its centre, the point ``(x=col, y=row)``, is inside the polygon
by the even-odd rule (:func:`polygon_mask`); parts outside the tile are cut off. On the
training release this convention reproduces the third-party binary masks shipped with it
(foreground IoU 0.99-1.00 on the three tiles with an XML; shifted by one pixel: 0.80-0.92).

**Overlaps: smaller over larger.** Regions are painted in order of decreasing polygon area (the
shoelace area of the vertices), so where two nuclei overlap the pixel goes to the smaller one; of
two regions with the same area the later one in the file wins. A small nucleus drawn inside or
across a larger outline therefore survives, and the result does not depend on the order in which
the annotator drew the nuclei. A region left with no pixel (degenerate, outside the tile, or
wholly covered by smaller ones) is dropped; the remaining regions are labelled 1..N in file order.

A tile without an XML but with ``Binary masks/NAME.png`` (0/1 or 0/255, as some copies of the
dataset ship) uses that mask: its objects are 8-connected components, so touching nuclei merge,
and the source reports ``binary_masks = True``. An XML is always preferred to a mask.

Splits as in :mod:`histodrl.data.masks` (split folders when present, else a seeded split of the
tiles by name). :data:`MIN_OBJECT_AREA` is the default smallest predicted object kept for nuclei
at 40x (0.25 um/px, nuclei about 20-40 px across; the smallest annotated nuclei of the training
release cover about 60 px).

Bad input is a one-line :class:`~histodrl.errors.UserInputError` naming the file: malformed XML,
an XML without a region, a vertex with a missing or non-numeric coordinate, an XML whose regions
all fall outside the tile, an image with neither XML nor mask, an XML or a mask without an
image, a mask of the wrong size or with values other than 0/1 or 0/255.
"""

from __future__ import annotations

import logging
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from histodrl.data.masks import (
    DEFAULT_TEST_FRACTION,
    DEFAULT_VAL_FRACTION,
    ImageCrops,
    binary_to_instances,
    image_size,
    is_binary_mask,
    natural_key,
    pretrain_records,
    read_image,
    read_mask,
    split_folders,
    split_records,
)
from histodrl.errors import UserInputError

logger = logging.getLogger(__name__)

IMAGES_FOLDER = "Tissue Images"
ANNOTATIONS_FOLDER = "Annotations"
MASKS_FOLDER = "Binary masks"
IMAGE_EXTENSIONS = (".tif", ".tiff", ".png")
MASK_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp")
# Smallest object kept in predictions, in pixels: nuclei at 40x cover about 300-1250 px, the
# smallest annotated ones about 60 px; 30 px removes speckles and keeps every real nucleus.
MIN_OBJECT_AREA = 30


# ------------------------------------------------------------------------------------------------
# Aperio ImageScope XML
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AperioRegions:
    """The polygons of one Aperio XML file.

    Attributes:
        polygons: one float64 array (K, 2) of (x, y) vertices per Region, in file order.
        ids: each Region's ``Id`` attribute (its position when absent).
        mpp: ``MicronsPerPixel`` of the root element, or ``None``.
    """

    polygons: list[np.ndarray]
    ids: list[str]
    mpp: float | None = None


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_aperio_xml(path: str | os.PathLike[str]) -> AperioRegions:
    """Parse the Regions of an Aperio ImageScope XML file.

    Every ``Region`` under ``Annotation/Regions`` (of every ``Annotation``) is one polygon; its
    vertices are ``Vertices/Vertex`` elements with numeric ``X`` and ``Y`` attributes (a ``Z``
    is ignored).

    Raises:
        UserInputError: a missing or malformed file, no Region with vertices, or a vertex whose X
            or Y is missing or not a finite number (naming the region and the vertex).
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError as exc:
        raise UserInputError(f"{path}: file not found") from exc
    except ET.ParseError as exc:
        raise UserInputError(f"{path}: malformed XML ({exc})") from exc
    polygons, ids = [], []
    annotations = [root] if root.tag == "Annotation" else root.iter("Annotation")
    for annotation in annotations:
        for region in annotation.iterfind("./Regions/Region"):
            region_id = region.get("Id") or str(len(ids) + 1)
            vertices = []
            for k, vertex in enumerate(region.iterfind("./Vertices/Vertex"), 1):
                x, y = _number(vertex.get("X")), _number(vertex.get("Y"))
                if x is None or y is None:
                    raise UserInputError(
                        f"{path}: Region Id={region_id} vertex {k} has "
                        f"X={vertex.get('X')!r} Y={vertex.get('Y')!r} (expected two numbers)"
                    )
                vertices.append((x, y))
            if not vertices:
                logger.warning("%s: Region Id=%s has no vertex, skipped", path, region_id)
                continue
            polygons.append(np.asarray(vertices, dtype=np.float64))
            ids.append(region_id)
    if not polygons:
        raise UserInputError(
            f"{path}: no Region with vertices (expected Annotations/Annotation/Regions/Region/"
            "Vertices/Vertex X= Y=)"
        )
    return AperioRegions(polygons, ids, _number(root.get("MicronsPerPixel")))


def polygon_area(vertices: np.ndarray) -> float:
    """Unsigned shoelace area of a closed polygon given as (x, y) vertices. Shape: (K, 2)."""
    x, y = vertices[:, 0], vertices[:, 1]
    if len(x) < 3:
        return 0.0
    return 0.5 * abs(float(x[:-1] @ y[1:] - y[:-1] @ x[1:] + x[-1] * y[0] - y[-1] * x[0]))


def polygon_mask(vertices: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, np.ndarray]:
    """Pixels of a tile whose centre is inside a polygon, by the even-odd rule.

    Pixel ``(row, col)`` is inside when a ray from its centre ``(x=col, y=row)`` towards +x
    crosses the outline an odd number of times; edge ``(x_j, y_j) -> (x_i, y_i)`` counts when
    ``(y_i > row) != (y_j > row)`` and ``col`` is left of the crossing, the usual
    crossing-number test, computed for all rows at once: a pixel is inside when it lies between
    the ``2k``-th and ``2k+1``-th crossing of its row (``x_2k <= col < x_2k+1``). A pixel centre
    exactly on the outline is thus inside on left edges and outside on right edges, so a
    polygon covers about its area in pixels. (:func:`skimage.draw.polygon` gives the same
    pixels except that it adds every pixel whose centre lies on the outline: with integer vertex
    coordinates, as in one of the three XMLs of the training release, that makes each nucleus
    about 10 % larger.)

    Args:
        vertices: (x, y) vertices of a closed polygon. Shape: (K, 2).
        shape: ``(height, width)`` of the tile; pixels outside it are cut off.

    Returns:
        ``(top, left, inside)``: ``inside`` is the bool mask of the rows and columns of the tile
        the polygon's bounding box spans, starting at ``(top, left)`` (an empty mask when the
        polygon is outside the tile).
    """
    height, width = shape
    x = np.asarray(vertices[:, 0], dtype=np.float64)
    y = np.asarray(vertices[:, 1], dtype=np.float64)
    top = max(0, math.ceil(float(y.min())))
    bottom = min(height - 1, math.floor(float(y.max())))
    left = max(0, math.ceil(float(x.min())))
    right = min(width - 1, math.floor(float(x.max())))
    if len(x) < 3 or bottom < top or right < left:
        return top, left, np.zeros((0, 0), dtype=bool)
    xj, yj = np.concatenate((x[-1:], x[:-1])), np.concatenate((y[-1:], y[:-1]))  # previous
    rows = np.arange(top, bottom + 1, dtype=np.float64)
    # Every (row, edge) crossing; a closed outline crosses each row an even number of times.
    row_index, edge = np.nonzero((y[None, :] > rows[:, None]) != (yj[None, :] > rows[:, None]))
    xi, yi = x[edge], y[edge]
    xc = (xj[edge] - xi) * (rows[row_index] - yi) / (yj[edge] - yi) + xi
    order = np.lexsort((xc, row_index))
    row_index, xc = row_index[order], xc[order]
    # Columns c with x_2k <= c < x_2k+1 (ceil(x_2k) .. ceil(x_2k+1) - 1), in bbox columns.
    cols = right - left + 1
    start = np.clip(np.ceil(xc[0::2]) - left, 0, cols).astype(np.int64)
    stop = np.clip(np.ceil(xc[1::2]) - left, 0, cols).astype(np.int64)
    pair_row = row_index[0::2] * (cols + 1)
    size = len(rows) * (cols + 1)
    diff = np.bincount(pair_row + start, minlength=size) - np.bincount(
        pair_row + stop, minlength=size
    )
    inside = np.cumsum(diff.reshape(len(rows), cols + 1)[:, :cols], axis=1) > 0
    return top, left, inside


def rasterise_polygons(polygons: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Instance map of polygons, smaller over larger (module docstring).

    Args:
        polygons: (x, y) vertices of each polygon, in file order. Shape: (K, 2) each.
        shape: ``(height, width)`` of the map.

    Returns:
        int32 labels: 0 = background, 1..N = the polygons that kept at least one pixel, numbered
        in file order. Shape: ``shape``.
    """
    canvas = np.zeros(shape, dtype=np.int32)
    areas = [polygon_area(v) for v in polygons]
    # Largest first; of equal areas the earlier first, so the later one is painted over it.
    order = sorted(range(len(polygons)), key=lambda k: (-areas[k], k))
    for k in order:
        top, left, inside = polygon_mask(polygons[k], shape)
        if inside.size:
            window = canvas[top : top + inside.shape[0], left : left + inside.shape[1]]
            window[inside] = k + 1
    present = np.flatnonzero(np.bincount(canvas.reshape(-1), minlength=len(polygons) + 1))
    present = present[present > 0]
    lookup = np.zeros(len(polygons) + 1, dtype=np.int32)
    lookup[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    return lookup[canvas]


# ------------------------------------------------------------------------------------------------
# Records
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MonusegRecord:
    """One MoNuSeg tile and its annotation.

    Attributes:
        name: the tile's stem, e.g. ``"TCGA-18-5592-01Z-00-DX1"``.
        part: its split.
        image_path: the tile.
        annotation_path: the XML, or the binary mask when there is no XML.
        annotation_kind: ``"xml"`` or ``"binary"``.
        width, height: tile size in pixels.
        mpp: microns per pixel from the XML, or ``None``.
        patient, grade, fine_grade: always ``None`` (as :class:`~histodrl.data.masks.MaskRecord`).
    """

    name: str
    part: str
    image_path: Path
    annotation_path: Path
    annotation_kind: str
    width: int
    height: int
    mpp: float | None = None
    patient: int | None = None
    grade: str | None = None
    fine_grade: str | None = None
    polygons: tuple[np.ndarray, ...] = field(default=(), repr=False, compare=False)

    @property
    def mask_path(self) -> Path:
        return self.annotation_path


def _files(folder: Path, extensions: Sequence[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() not in extensions:
            continue
        if path.stem in found:
            raise UserInputError(f"{path}: {found[path.stem].name} has the same name; keep one")
        found[path.stem] = path
    return found


def find_monuseg_records(
    folder: str | os.PathLike[str], part: str = "train", read_polygons: bool = True
) -> list[MonusegRecord]:
    """The tiles of one MoNuSeg folder (either layout) with their annotations, by natural name.

    Every XML is parsed (and kept on the record) unless ``read_polygons`` is False; masks and
    images are only header-read.

    Raises:
        UserInputError: not a folder, no tile, a tile with neither XML nor mask, an XML or mask
            without its tile, a bad XML (:func:`read_aperio_xml`), a mask whose size differs from
            its tile's, each naming the file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"{folder}: expected a MoNuSeg folder ({IMAGES_FOLDER}/, ...)")
    if (folder / IMAGES_FOLDER).is_dir():
        images = _files(folder / IMAGES_FOLDER, IMAGE_EXTENSIONS)
        xmls = _files(folder / ANNOTATIONS_FOLDER, (".xml",))
        xml_where = folder / ANNOTATIONS_FOLDER
    else:
        images = _files(folder, IMAGE_EXTENSIONS)
        xmls = _files(folder, (".xml",))
        xml_where = folder
    masks = _files(folder / MASKS_FOLDER, MASK_EXTENSIONS)
    if not images:
        raise UserInputError(
            f"{folder}: no MoNuSeg tiles (expected '{IMAGES_FOLDER}/NAME.tif' with "
            f"'{ANNOTATIONS_FOLDER}/NAME.xml', or NAME.tif beside NAME.xml)"
        )
    for stem, path in {**masks, **xmls}.items():
        if stem not in images:
            raise UserInputError(f"{path}: annotation without its tile (expected {stem}.tif)")
    records = []
    for stem in sorted(images, key=natural_key):
        image_path = images[stem]
        width, height = image_size(image_path)
        if stem in xmls:
            regions = read_aperio_xml(xmls[stem]) if read_polygons else AperioRegions([], [], None)
            records.append(
                MonusegRecord(
                    stem, part, image_path, xmls[stem], "xml", width, height, regions.mpp,
                    polygons=tuple(regions.polygons),
                )
            )  # fmt: skip
        elif stem in masks:
            mask_width, mask_height = image_size(masks[stem])
            if (mask_width, mask_height) != (width, height):
                raise UserInputError(
                    f"{masks[stem]}: mask is {mask_width}x{mask_height}, expected the size of "
                    f"its tile {image_path.name} ({width}x{height})"
                )
            records.append(
                MonusegRecord(stem, part, image_path, masks[stem], "binary", width, height)
            )
        else:
            raise UserInputError(
                f"{image_path}: no annotation (expected {xml_where}/{stem}.xml or "
                f"{folder / MASKS_FOLDER}/{stem}.png)"
            )
    return records


def find_monuseg_splits(
    root: str | os.PathLike[str], read_polygons: bool = True
) -> dict[str, list[MonusegRecord]]:
    """The records of ``monuseg:DIR`` by split folder, or ``{"": records}`` without any."""
    root = Path(root)
    if not root.is_dir():
        raise UserInputError(f"{root}: expected a MoNuSeg folder ({IMAGES_FOLDER}/, ...)")
    folders = split_folders(root)
    if folders is None:
        return {"": find_monuseg_records(root, "train", read_polygons)}
    return {
        split: find_monuseg_records(path, split, read_polygons) for split, path in folders.items()
    }


def monuseg_labels(record: MonusegRecord) -> np.ndarray:
    """The int32 instance map of a record (rasterised polygons, or mask components).

    Raises:
        UserInputError: an XML whose regions all fall outside the tile, or a mask that is not
            binary, of the wrong size, or unreadable.
    """
    shape = (record.height, record.width)
    if record.annotation_kind == "xml":
        polygons = record.polygons or tuple(read_aperio_xml(record.annotation_path).polygons)
        labels = rasterise_polygons(polygons, shape)
        if not labels.any():
            raise UserInputError(
                f"{record.annotation_path}: no region falls inside the {record.width}x"
                f"{record.height} tile {record.image_path.name} (are the coordinates in pixels?)"
            )
        return labels
    mask = read_mask(record.annotation_path)
    if mask.shape != shape:
        raise UserInputError(
            f"{record.annotation_path}: mask decodes to {mask.shape[1]}x{mask.shape[0]}, "
            f"expected {record.width}x{record.height}"
        )
    if not is_binary_mask(mask):
        raise UserInputError(
            f"{record.annotation_path}: values other than 0/1 or 0/255 (expected a binary "
            "nucleus mask)"
        )
    return binary_to_instances(mask)


class MonusegDataset(Dataset):
    """MoNuSeg tiles with instance labels, in the item format of
    :class:`~histodrl.data.glas.GlasDataset`.

    Labels are rasterised when an item is read (a few milliseconds for a 1000x1000 tile); the
    polygons are parsed once, when the records are found.

    Attributes:
        records, binary_masks (True when any record uses a binary mask), description.

    Item ``i`` is a dict:
        ``image``: uint8 numpy array (H, W, 3); ``label``: int32 (H, W), 0 = background;
        ``name``, ``part``: strings; ``patient``, ``grade``, ``fine_grade``: ``None``.
    """

    def __init__(self, records: Sequence[MonusegRecord], description: str) -> None:
        self.records = list(records)
        self.binary_masks = any(r.annotation_kind == "binary" for r in self.records)
        self.description = description

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def read_label(self, index: int) -> np.ndarray:
        return monuseg_labels(self.records[index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        image = read_image(record.image_path)
        if image.shape[:2] != (record.height, record.width):
            raise UserInputError(f"{record.image_path}: changed on disk since it was indexed")
        return {
            "image": image,
            "label": monuseg_labels(record),
            "name": record.name,
            "part": record.part,
            "patient": None,
            "grade": None,
            "fine_grade": None,
        }


def monuseg_datasets(
    root: str | os.PathLike[str],
    seed: int = 0,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    val_fraction: float = DEFAULT_VAL_FRACTION,
) -> dict[str, MonusegDataset]:
    """The splits of ``monuseg:DIR`` (``"train"``, ``"val"`` when any, the test splits).

    Every annotation is checked once here: XMLs are parsed and rasterised, masks decoded.

    Raises:
        UserInputError: as :func:`find_monuseg_records`, :func:`monuseg_labels` and
            :func:`~histodrl.data.masks.split_records`.
    """
    root = Path(root)
    splits = split_records(find_monuseg_splits(root), seed, test_fraction, val_fraction, str(root))
    for records in splits.values():
        for record in records:
            monuseg_labels(record)
    datasets = {}
    for split, records in splits.items():
        n_binary = sum(r.annotation_kind == "binary" for r in records)
        kinds = f"{len(records) - n_binary} XML"
        if n_binary:
            kinds += f", {n_binary} binary mask"
        datasets[split] = MonusegDataset(
            records, f"monuseg:{root} {split} ({len(records)} tiles; {kinds})"
        )
    return datasets


def monuseg_pretrain_crops(
    root: str | os.PathLike[str],
    crop: int,
    stride: int,
    split_seed: int = 0,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> ImageCrops:
    """Sliding-window crops of the non-test tiles of ``monuseg:DIR`` (annotations unread).

    The test split is the one :func:`monuseg_datasets` gives with the same ``split_seed`` and
    ``test_fraction``.
    """
    root = Path(root)
    splits = split_records(
        find_monuseg_splits(root, read_polygons=False), split_seed, test_fraction, 0.0, str(root)
    )
    records = pretrain_records(splits)
    return ImageCrops(
        [r.image_path for r in records],
        [(r.width, r.height) for r in records],
        crop,
        stride,
        f"monuseg:{root} non-test",
    )
