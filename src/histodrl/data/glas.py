"""``glas:DIR``: the GLaS (Warwick-QU) gland segmentation dataset, as released.

Layout (DATASETS_AND_METRICS.md §3): one flat folder holding ``train_N``, ``testA_N`` and
``testB_N`` images (N = 1, 2, ... not zero-padded, sorted numerically), each with its instance
annotation ``<name>_anno`` beside it, as BMP (the release) or PNG / TIFF with the same stems, and
``Grade.csv``. Files whose names do not follow the pattern are ignored.

* Annotations are read as one channel and returned as int32 instance labels (0 = background,
  1..N = one gland each) with the stored values untouched: palette BMPs give their palette
  indices; a 3-channel annotation is accepted only when its channels are equal. They are never
  resized here (resize them only with nearest-neighbour interpolation).
* Images may have any size (most are 775x522, testA_2 / testA_3 are smaller); an annotation whose
  size differs from its image's is an error.
* ``Grade.csv``: CR-only line endings, leading spaces in three column names and in the values, and
  the misspelt fine grade ``moderately-to-poorly differentated``, which is returned correctly spelt
  (``moderately-to-poorly differentiated``). A folder without ``Grade.csv`` is accepted (every
  grade is ``None``: a folder of one's own images in the GLaS layout has none); when the file
  exists, every image must have a row.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from histodrl.data.crops import sliding_windows
from histodrl.data.folder import image_header, read_rgb_image
from histodrl.errors import UserInputError

logger = logging.getLogger(__name__)

GLAS_PARTS = ("train", "testA", "testB")
GLAS_EXTENSIONS = (".bmp", ".png", ".tif", ".tiff")
GRADE_FILE = "Grade.csv"
GRADES = ("benign", "malignant")
# Column names of Grade.csv once their leading spaces are stripped.
GRADE_COLUMNS = ("name", "patient ID", "grade (GlaS)", "grade (Sirinukunwattana et al. 2015)")
# The release spells one fine grade wrongly; readers get the correct spelling.
_FINE_GRADE_SPELLING = {
    "moderately-to-poorly differentated": "moderately-to-poorly differentiated",
}

_NAME_PATTERN = re.compile(r"^(train|testA|testB)_([0-9]+)(_anno)?$")


@dataclass(frozen=True)
class GlasGrade:
    """One row of ``Grade.csv``.

    Attributes:
        patient: patient ID (1..16 in the release).
        grade: ``"benign"`` or ``"malignant"`` (the GlaS grade).
        fine_grade: Sirinukunwattana et al. 2015 grade, e.g. ``"healthy"``, ``"adenomatous"``,
            ``"moderately differentiated"``, ``"moderately-to-poorly differentiated"``,
            ``"poorly differentiated"`` (lower case, stripped, spelling corrected).
    """

    patient: int
    grade: str
    fine_grade: str


@dataclass(frozen=True)
class GlasRecord:
    """One GLaS image and its annotation.

    Attributes:
        name: file stem, e.g. ``"testA_12"``.
        part: ``"train"``, ``"testA"`` or ``"testB"``.
        number: N of ``<part>_N``.
        image_path, annotation_path: the two files.
        width, height: image size in pixels (equal for both files).
        patient, grade, fine_grade: from ``Grade.csv``; ``None`` when the folder has none.
    """

    name: str
    part: str
    number: int
    image_path: Path
    annotation_path: Path
    width: int
    height: int
    patient: int | None = None
    grade: str | None = None
    fine_grade: str | None = None


def read_grade_csv(path: str | os.PathLike[str]) -> dict[str, GlasGrade]:
    """Parse GLaS ``Grade.csv`` into ``{image name: GlasGrade}``.

    Accepts CR, LF or CRLF line endings, a UTF-8 byte-order mark, leading/trailing spaces in
    column names and values, and blank lines. Grades are lower-cased; the release's misspelt fine
    grade is corrected (module docstring).

    Raises:
        UserInputError: missing file, wrong header, a row with the wrong number of fields, a
            patient ID that is not an integer, a grade other than benign/malignant, or a name
            given twice; the message names the file and line.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError as exc:
        raise UserInputError(f"{path}: file not found") from exc
    except UnicodeDecodeError as exc:
        raise UserInputError(f"{path}: not a UTF-8 text file") from exc
    # splitlines() treats the release's bare CR line endings like LF.
    rows = [(n, row) for n, row in enumerate(csv.reader(text.splitlines()), 1) if any(row)]
    if not rows:
        raise UserInputError(f"{path}: empty file (expected a header {','.join(GRADE_COLUMNS)})")
    header = tuple(c.strip().lower() for c in rows[0][1])
    if header != tuple(c.lower() for c in GRADE_COLUMNS):
        raise UserInputError(
            f"{path}: header {','.join(rows[0][1])!r} (expected {','.join(GRADE_COLUMNS)})"
        )
    grades: dict[str, GlasGrade] = {}
    for line, row in rows[1:]:
        where = f"{path} line {line}"
        if len(row) != len(GRADE_COLUMNS):
            raise UserInputError(f"{where}: {len(row)} fields (expected {len(GRADE_COLUMNS)})")
        name, patient, grade, fine = (v.strip() for v in row)
        try:
            patient_id = int(patient)
        except ValueError as exc:
            raise UserInputError(f"{where}: patient ID {patient!r} is not an integer") from exc
        grade = grade.lower()
        if grade not in GRADES:
            raise UserInputError(f"{where}: grade {grade!r} (expected benign or malignant)")
        if name in grades:
            raise UserInputError(f"{where}: {name!r} is listed twice")
        fine = fine.lower()
        grades[name] = GlasGrade(patient_id, grade, _FINE_GRADE_SPELLING.get(fine, fine))
    return grades


def read_glas_annotation(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an instance annotation as int32 labels (0 = background), values as stored.

    Single-channel files (8/16-bit grayscale, palette, 1-bit) give their stored values (palette
    indices for palette images). Multi-channel files are accepted only when their colour channels
    are identical (an 8-bit label map saved as RGB); any alpha channel is ignored.

    Returns:
        int32 array. Shape: (H, W).

    Raises:
        UserInputError: missing, unreadable or truncated file, or colour channels that differ.
    """
    try:
        with Image.open(path) as im:
            im.load()
            labels = np.asarray(im)
    except FileNotFoundError as exc:
        raise UserInputError(f"{path}: file not found") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise UserInputError(
            f"{path}: cannot decode the annotation, the file is truncated or corrupt ({exc})"
        ) from exc
    if labels.ndim == 3:
        # LA has one colour channel, RGB(A) three; alpha is never part of the label.
        colour = labels[:, :, : 1 if labels.shape[2] <= 2 else 3]
        if not (colour == colour[:, :, :1]).all():
            raise UserInputError(
                f"{path}: annotation has colour channels that differ "
                "(expected one channel of instance labels)"
            )
        labels = colour[:, :, 0]
    return labels.astype(np.int32)


def _scan(root: Path) -> dict[tuple[str, int, bool], Path]:
    """``{(part, number, is_annotation): path}`` for every GLaS-named file in ``root``."""
    found: dict[tuple[str, int, bool], Path] = {}
    for path in root.iterdir():
        if path.suffix.lower() not in GLAS_EXTENSIONS or not path.is_file():
            continue
        match = _NAME_PATTERN.match(path.stem)
        if match is None:
            continue
        key = (match.group(1), int(match.group(2)), match.group(3) is not None)
        if key in found:
            raise UserInputError(
                f"{path}: {found[key].name} has the same name; keep one format per image"
            )
        found[key] = path
    return found


def find_glas_records(
    root: str | os.PathLike[str], parts: Iterable[str] = ("train",)
) -> list[GlasRecord]:
    """Index a GLaS folder: every image of ``parts`` with its annotation, size and grades.

    Records come in the order of ``parts`` and numerically within a part (train_2 before
    train_10). Only file headers are read.

    Args:
        root: the folder holding the images, annotations and (optionally) ``Grade.csv``.
        parts: any of :data:`GLAS_PARTS`.

    Raises:
        UserInputError: ``root`` not a folder, no image of ``parts``, a missing annotation, an
            annotation without its image, an annotation whose size differs from its image's, an
            unreadable file, a bad ``Grade.csv``, or an image without a ``Grade.csv`` row.
        ValueError: an unknown part name.
    """
    root = Path(root)
    parts = tuple(parts)
    for part in parts:
        if part not in GLAS_PARTS:
            raise ValueError(f"part {part!r}: expected one of {', '.join(GLAS_PARTS)}")
    if not root.is_dir():
        raise UserInputError(f"{root}: expected a GLaS folder (train_N.bmp, train_N_anno.bmp, ...)")
    found = _scan(root)
    grade_path = root / GRADE_FILE
    grades = read_grade_csv(grade_path) if grade_path.is_file() else None
    if grades is None:
        logger.info("%s: no %s, GLaS grades are unknown", root, GRADE_FILE)

    for (part, number, is_annotation), path in sorted(found.items()):
        if is_annotation and (part, number, False) not in found and part in parts:
            raise UserInputError(
                f"{path}: annotation without its image "
                f"(expected {part}_{number} with one of {', '.join(GLAS_EXTENSIONS)})"
            )
    records = []
    for part in parts:
        numbers = sorted(n for (p, n, anno) in found if p == part and not anno)
        for number in numbers:
            records.append(_record(root, found, part, number, grades, grade_path))
    if not records:
        # The release unpacks into a subfolder ("Warwick QU Dataset (Released 2016_07_08)").
        inner = sorted({p.parent for p in root.glob(f"*/{parts[0]}_1.*")})
        hint = f"; did you mean {inner[0]}?" if inner else ""
        raise UserInputError(
            f"{root}: no GLaS images of part(s) {', '.join(parts)} "
            f"(expected files named like {parts[0]}_1.bmp and {parts[0]}_1_anno.bmp){hint}"
        )
    return records


def _record(
    root: Path,
    found: dict[tuple[str, int, bool], Path],
    part: str,
    number: int,
    grades: dict[str, GlasGrade] | None,
    grade_path: Path,
) -> GlasRecord:
    name = f"{part}_{number}"
    image_path = found[(part, number, False)]
    annotation_path = found.get((part, number, True))
    if annotation_path is None:
        raise UserInputError(
            f"{image_path}: no annotation (expected {name}_anno with one of "
            f"{', '.join(GLAS_EXTENSIONS)} in {root})"
        )
    width, height, _ = image_header(image_path)
    anno_width, anno_height, _ = image_header(annotation_path)
    if (anno_width, anno_height) != (width, height):
        raise UserInputError(
            f"{annotation_path}: annotation is {anno_width}x{anno_height}, "
            f"expected the size of its image {image_path.name} ({width}x{height})"
        )
    grade = None
    if grades is not None:
        grade = grades.get(name)
        if grade is None:
            raise UserInputError(f"{grade_path}: no row for image {name} ({image_path})")
    return GlasRecord(
        name=name,
        part=part,
        number=number,
        image_path=image_path,
        annotation_path=annotation_path,
        width=width,
        height=height,
        patient=None if grade is None else grade.patient,
        grade=None if grade is None else grade.grade,
        fine_grade=None if grade is None else grade.fine_grade,
    )


class GlasDataset(Dataset):
    """GLaS images with their instance annotations, whole (no cropping or resizing).

    Args:
        root: the GLaS folder (module docstring).
        parts: which parts to use, any of ``"train"``, ``"testA"``, ``"testB"``.

    Attributes:
        records: one :class:`GlasRecord` per image, in order.

    Item ``i`` is a dict:
        ``image``: uint8 numpy array (H, W, 3), RGB;
        ``label``: int32 numpy array (H, W), 0 = background, 1..N = glands;
        ``name``, ``part``: strings; ``grade``, ``fine_grade``: strings or ``None``;
        ``patient``: int or ``None``.
    Images differ in size, so batch them with a custom ``collate_fn`` (or crop first).

    Every image and annotation is decoded once when the dataset is built (and dropped), so a
    truncated file is reported then.

    Raises:
        UserInputError: as :func:`find_glas_records`, and a truncated or corrupt file, naming it.
    """

    def __init__(self, root: str | os.PathLike[str], parts: Sequence[str] = ("train",)) -> None:
        self.root = Path(root)
        self.parts = tuple(parts)
        self.records = find_glas_records(self.root, self.parts)
        # Decode every file once now, so that a truncated one stops the run before it starts
        # (about 1 ms per BMP pair; nothing is kept).
        for index in range(len(self.records)):
            self[index]
        self.description = f"glas:{self.root} ({len(self.records)} {'+'.join(self.parts)} images)"

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        image = read_rgb_image(record.image_path)
        label = read_glas_annotation(record.annotation_path)
        if image.shape[:2] != label.shape:
            raise UserInputError(
                f"{record.annotation_path}: annotation is {label.shape[1]}x{label.shape[0]}, "
                f"expected {image.shape[1]}x{image.shape[0]}"
            )
        return {
            "image": image,
            "label": label,
            "name": record.name,
            "part": record.part,
            "patient": record.patient,
            "grade": record.grade,
            "fine_grade": record.fine_grade,
        }


class GlasCrops(Dataset):
    """Sliding-window crops of GLaS images for pretraining (METHOD.md E19).

    The windows of each image are :func:`histodrl.data.crops.sliding_windows` (they cover the
    image, the last one flush with the border): 60 per 775x522 image at crop 256, stride 64, so
    5100 for the 85 training images if all were 775x522. Every image is decoded once, when the
    dataset is built, and kept in memory as a uint8 CHW tensor (the 85 training images take about
    100 MB); DataLoader workers started by fork share that memory.

    Args:
        root: the GLaS folder.
        crop: window side in pixels (>= 1).
        stride: step between windows in pixels (>= 1).
        parts: which parts to use; pretraining uses only ``("train",)`` (METHOD.md E19).

    Attributes:
        records: the images' :class:`GlasRecord` list.
        windows: int64 array (n_crops, 3) of (image index, top, left).

    Shape:
        item: uint8 tensor (3, crop, crop), RGB.

    Raises:
        UserInputError: as :class:`GlasDataset`, and an image smaller than the crop (naming the
            file and both sizes).
        ValueError: ``crop`` or ``stride`` below 1.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        crop: int = 256,
        stride: int = 64,
        parts: Sequence[str] = ("train",),
    ) -> None:
        if crop < 1 or stride < 1:
            raise ValueError(f"crop={crop}, stride={stride}: expected positive integers")
        self.root = Path(root)
        self.crop = int(crop)
        self.stride = int(stride)
        self.parts = tuple(parts)
        self.records = find_glas_records(self.root, self.parts)
        windows = []
        for k, record in enumerate(self.records):
            if record.width < crop or record.height < crop:
                raise UserInputError(
                    f"{record.image_path}: image is {record.width}x{record.height}, "
                    f"smaller than the crop {crop}x{crop}"
                )
            windows += [
                (k, top, left)
                for top, left in sliding_windows(record.height, record.width, crop, stride)
            ]
        self.windows = np.asarray(windows, dtype=np.int64)
        self.images = [
            torch.from_numpy(np.ascontiguousarray(read_rgb_image(r.image_path).transpose(2, 0, 1)))
            for r in self.records
        ]
        for record, image in zip(self.records, self.images):
            if (image.shape[2], image.shape[1]) != (record.width, record.height):
                raise UserInputError(f"{record.image_path}: changed on disk while being indexed")
        self.description = (
            f"glas:{self.root} ({len(self.records)} {'+'.join(self.parts)} images, "
            f"{len(self.windows)} crops {crop}/{stride})"
        )

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> torch.Tensor:
        k, top, left = (int(v) for v in self.windows[index])
        # clone: a view would keep (and, through a worker queue, ship) the whole image.
        return self.images[k][:, top : top + self.crop, left : left + self.crop].clone()
