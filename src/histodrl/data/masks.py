"""``masks:DIR``: a user's own segmentation data, images with instance (or binary) masks.

Layouts (checked in this order, in ``DIR`` and in each split folder):

* ``images/`` + ``masks/``: ``images/X.png`` is paired with the mask in ``masks/`` whose stem is
  ``X``, ``X_mask`` or ``X_anno``;
* side by side: ``X.png`` beside ``X_mask.*`` or ``X_anno.*``.

Images may be PNG, TIFF, JPEG or BMP (:data:`~histodrl.data.folder.IMAGE_EXTENSIONS`); masks must
be lossless (PNG, TIFF or BMP: JPEG alters label values and is refused). Hidden files are skipped.

Masks: an **instance map** (any integer dtype: 8- or 16-bit PNG, 8/16/32-bit TIFF; 0 =
background, every other value one object), or a **binary mask** (only the values {0, 1} or
{0, 255}), whose objects are then its 8-connected components (the convention of MATLAB's
``bwlabel(..., 8)`` that the GLaS evaluation code mentions), so touching objects merge.
``mask_kind="auto"`` decides once for the whole source: binary when every mask holds only {0, 1}
or only {0, 255} (and at least one holds an object), instance maps otherwise; a single-object
instance map is therefore indistinguishable from a binary mask, and ``mask_kind="instance"``
forces the instance reading. A mask with colour channels is accepted only when they are equal.

Splits (:func:`find_mask_splits`, :func:`split_records`): when ``DIR`` has ``train/`` (and
optionally ``val/`` and one or more ``test*/`` folders, e.g. ``test/`` or ``testA/`` +
``testB/``), those are used, each in either layout. A missing test (or validation) split is
drawn from the training images by :func:`seeded_split`, as is the whole split of a folder with no
split folders: a seeded, reproducible choice (default: 20 % test, no validation) that depends only
on the image names and the seed, never on file-system order. The seed is a *split* seed: pass the
same one to pretraining (so that test images are never pretrained on) and to every downstream run.

Every bad pairing is a one-line :class:`~histodrl.errors.UserInputError` naming the file: an
image without a mask, a mask without an image, two masks (or two images) for one stem, a mask
whose size differs from its image's, an unreadable file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from histodrl.data.crops import sliding_windows
from histodrl.data.folder import IMAGE_EXTENSIONS, image_header, read_rgb_image
from histodrl.errors import UserInputError

logger = logging.getLogger(__name__)

MASK_SUFFIXES = ("_mask", "_anno")
MASK_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp")
LOSSY_EXTENSIONS = (".jpg", ".jpeg")
MASK_KINDS = ("auto", "instance", "binary")
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_VAL_FRACTION = 0.0
# Images decoded for pretraining are kept in memory up to this many bytes in all.
CACHE_LIMIT_BYTES = 2 << 30
_TIFF = (".tif", ".tiff")

R = TypeVar("R")


# ------------------------------------------------------------------------------------------------
# Files: images, masks and their sizes
# ------------------------------------------------------------------------------------------------


def natural_key(text: str) -> list[Any]:
    """Sort key putting ``img_2`` before ``img_10``."""
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", text)]


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` of an image or mask file from its header (Pillow, else tifffile).

    Raises:
        UserInputError: a missing or unreadable file.
    """
    path = Path(path)
    try:
        width, height, _ = image_header(path)
        return width, height
    except UserInputError:
        if path.suffix.lower() not in _TIFF or not path.is_file():
            raise
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            return int(page.imagewidth), int(page.imagelength)
    except Exception as exc:  # tifffile raises many types for a bad file
        raise UserInputError(f"{path}: not a readable image ({exc})") from exc


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an H&E image as RGB uint8 (Pillow; tifffile for TIFFs Pillow cannot read).

    Returns:
        uint8 array. Shape: (H, W, 3).

    Raises:
        UserInputError: a missing, unreadable or truncated file, or an unsupported sample type.
    """
    path = Path(path)
    try:
        return read_rgb_image(path)
    except UserInputError:
        if path.suffix.lower() not in _TIFF or not path.is_file():
            raise
    import tifffile

    try:
        array = np.asarray(tifffile.imread(path))
    except Exception as exc:  # tifffile raises many types for a bad file
        raise UserInputError(f"{path}: cannot decode the image ({exc})") from exc
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    if array.dtype != np.uint8:
        raise UserInputError(f"{path}: {array.dtype} samples (expected 8-bit RGB)")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise UserInputError(f"{path}: image of shape {array.shape} (expected (H, W, 3) RGB)")
    return np.ascontiguousarray(array[:, :, :3])


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a mask file with its stored values (instance labels or a binary mask).

    PNG / BMP are read with Pillow (8- or 16-bit grey, palette indices, 1-bit), TIFF with
    tifffile (any integer dtype; float only with whole values). Colour channels must be equal;
    alpha is ignored.

    Returns:
        a non-negative integer array as stored (uint8, uint16, int32, ...). Shape: (H, W).

    Raises:
        UserInputError: missing, unreadable or JPEG file, differing colour channels, fractional
            or negative values, values beyond int32, naming the file.
    """
    path = Path(path)
    if path.suffix.lower() in LOSSY_EXTENSIONS:
        raise UserInputError(
            f"{path}: JPEG masks are lossy (their values change); save masks as PNG or TIFF"
        )
    try:
        if path.suffix.lower() in _TIFF:
            import tifffile

            array = np.asarray(tifffile.imread(path))
        else:
            with Image.open(path) as im:
                im.load()
                array = np.asarray(im)
    except FileNotFoundError as exc:
        raise UserInputError(f"{path}: file not found") from exc
    except Exception as exc:  # Pillow and tifffile raise many types for corrupt files
        raise UserInputError(f"{path}: cannot read the mask ({_first_line(exc)})") from exc
    if array.ndim == 3:
        colour = array[:, :, : 1 if array.shape[2] <= 2 else 3]
        if not (colour == colour[:, :, :1]).all():
            raise UserInputError(
                f"{path}: mask has colour channels that differ "
                "(expected one channel: instance labels or a 0/1 or 0/255 mask)"
            )
        array = colour[:, :, 0]
    if array.ndim != 2:
        raise UserInputError(f"{path}: mask of shape {array.shape} (expected (H, W))")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not (np.isfinite(array).all() and np.array_equal(array, np.round(array))):
            raise UserInputError(f"{path}: {array.dtype} mask with fractional values")
        array = array.astype(np.int64)
    elif not np.issubdtype(array.dtype, np.integer):
        raise UserInputError(f"{path}: {array.dtype} mask (expected integer labels)")
    if array.size and array.min() < 0:
        raise UserInputError(f"{path}: negative mask value {array.min()} (expected labels >= 0)")
    if array.size and array.max() > np.iinfo(np.int32).max:
        raise UserInputError(f"{path}: mask value {array.max()} does not fit in int32")
    return array


def is_binary_mask(mask: np.ndarray) -> bool:
    """True when ``mask`` holds only values in {0, 1} or only values in {0, 255}."""
    if mask.size == 0:
        return True
    top = int(mask.max())
    if top <= 1:
        return True
    return top == 255 and bool(((mask == 0) | (mask == 255)).all())


def binary_to_instances(mask: np.ndarray) -> np.ndarray:
    """Objects of a binary mask: its 8-connected foreground components, labelled 1..N.

    Components are numbered in raster order of their first pixel (scipy.ndimage.label).

    Returns:
        int32 labels, 0 = background. Shape: (H, W).
    """
    from scipy import ndimage

    labels, _ = ndimage.label(mask > 0, structure=np.ones((3, 3), dtype=bool))
    return labels.astype(np.int32)


def mask_to_labels(mask: np.ndarray, binary: bool) -> np.ndarray:
    """int32 instance labels of a mask read by :func:`read_mask` (components when ``binary``)."""
    return binary_to_instances(mask) if binary else mask.astype(np.int32)


def default_min_object_area(areas: Sequence[int] | np.ndarray) -> int:
    """A data-derived ``min_object_area`` for a source without a known default.

    A quarter of the 5th percentile of the training objects' areas, clipped to 1..100 px (0 when
    there is no object): small enough to keep nearly every real object, large enough to drop
    speckles of a few pixels. MoNuSeg nuclei give about 30, GLaS glands 100.
    """
    areas = np.asarray(areas, dtype=np.float64)
    areas = areas[areas > 0]
    if areas.size == 0:
        return 0
    return int(np.clip(math.floor(np.percentile(areas, 5) / 4), 1, 100))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ------------------------------------------------------------------------------------------------
# Pairing images with masks
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskRecord:
    """One image and its mask.

    Attributes:
        name: the image's stem (unique within a source).
        part: the split the image belongs to (``"train"``, ``"val"``, ``"test"``, ...).
        image_path, mask_path: the two files.
        width, height: image size in pixels (equal for both files).
        patient, grade, fine_grade: always ``None`` (kept so that code written for GLaS records,
            e.g. grade stratification, runs unchanged).
    """

    name: str
    part: str
    image_path: Path
    mask_path: Path
    width: int
    height: int
    patient: int | None = None
    grade: str | None = None
    fine_grade: str | None = None


def _visible_files(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")),
        key=lambda p: natural_key(p.name),
    )


def _mask_base(stem: str) -> str | None:
    for suffix in MASK_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return None


def _by_stem(files: Iterable[Path], key: Callable[[Path], str], what: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in files:
        stem = key(path)
        if stem in found:
            raise UserInputError(
                f"{path}: {found[stem].name} is a {what} for the same image; keep one"
            )
        found[stem] = path
    return found


def find_mask_pairs(folder: str | os.PathLike[str], part: str = "train") -> list[MaskRecord]:
    """The image/mask pairs of one folder, in either layout (module docstring), by natural name.

    Only file headers are read.

    Raises:
        UserInputError: ``folder`` not a folder, ``images/`` without ``masks/`` (or the reverse),
            no pair, an image without a mask, a mask without an image, two masks or two images
            for one stem, a JPEG mask, an unreadable file, a mask whose size differs from its
            image's; each names the file and what was expected.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"{folder}: expected a folder of images and masks")
    images_dir, masks_dir = folder / "images", folder / "masks"
    if images_dir.is_dir() != masks_dir.is_dir():
        have, lack = ("images", "masks") if images_dir.is_dir() else ("masks", "images")
        raise UserInputError(f"{folder / have}: has no {lack}/ folder beside it")
    mask_exts = MASK_EXTENSIONS + LOSSY_EXTENSIONS
    if images_dir.is_dir():
        image_files = [
            p for p in _visible_files(images_dir) if p.suffix.lower() in IMAGE_EXTENSIONS
        ]
        mask_files = [p for p in _visible_files(masks_dir) if p.suffix.lower() in mask_exts]
        images = _by_stem(image_files, lambda p: p.stem, "second image")
        masks = _by_stem(mask_files, lambda p: _mask_base(p.stem) or p.stem, "second mask")
        mask_where, mask_suffix = f"{masks_dir}/", "[_mask|_anno].png|tif|bmp"
    else:
        files = [p for p in _visible_files(folder) if p.suffix.lower() in IMAGE_EXTENSIONS]
        images = _by_stem(
            (p for p in files if _mask_base(p.stem) is None), lambda p: p.stem, "second image"
        )
        masks = _by_stem(
            (p for p in files if _mask_base(p.stem) is not None),
            lambda p: _mask_base(p.stem) or "",
            "second mask",
        )
        mask_where, mask_suffix = "", "_mask.png|tif|bmp (or _anno) beside it"
    for stem, mask_path in masks.items():
        if stem not in images:
            where = images_dir if images_dir.is_dir() else folder
            raise UserInputError(
                f"{mask_path}: mask without an image (expected {where}/{stem}.png|tif|jpg|bmp)"
            )
    if not images:
        raise UserInputError(
            f"{folder}: no image/mask pairs (expected images/ + masks/ folders, X.png beside "
            "X_mask.png, or train/ and test/ folders holding either)"
        )
    records = []
    for stem in sorted(images, key=natural_key):
        image_path = images[stem]
        mask_path = masks.get(stem)
        if mask_path is None:
            raise UserInputError(
                f"{image_path}: image without a mask (expected {mask_where}{stem}{mask_suffix})"
            )
        if mask_path.suffix.lower() in LOSSY_EXTENSIONS:
            read_mask(mask_path)  # raises the JPEG error
        width, height = image_size(image_path)
        mask_width, mask_height = image_size(mask_path)
        if (mask_width, mask_height) != (width, height):
            raise UserInputError(
                f"{mask_path}: mask is {mask_width}x{mask_height}, expected the size of its image "
                f"{image_path.name} ({width}x{height})"
            )
        records.append(MaskRecord(stem, part, image_path, mask_path, width, height))
    return records


# ------------------------------------------------------------------------------------------------
# Splits
# ------------------------------------------------------------------------------------------------


def is_test_split(name: str) -> bool:
    """Split folder names that hold test images: ``test``, ``testA``, ``test_external``, ..."""
    return name.lower().startswith("test")


def split_folders(root: str | os.PathLike[str]) -> dict[str, Path] | None:
    """``{split: folder}`` of the ``train/``, ``val/`` and ``test*/`` folders of ``root``.

    Returns:
        ``None`` when ``root`` has none of them (the whole folder is one pool to split).

    Raises:
        UserInputError: split folders without ``train/``.
    """
    root = Path(root)
    found = {
        p.name: p
        for p in sorted(root.iterdir(), key=lambda p: natural_key(p.name))
        if p.is_dir()
        and not p.name.startswith(".")
        and (p.name in ("train", "val") or is_test_split(p.name))
    }
    if not found:
        return None
    if "train" not in found:
        raise UserInputError(
            f"{root}: has {', '.join(n + '/' for n in found)} but no train/ folder "
            "(expected train/ and test/, optionally val/, or no split folders at all)"
        )
    return found


def _hash_rank(seed: int, name: str) -> bytes:
    return hashlib.blake2b(f"{int(seed)}\0{name}".encode(), digest_size=16).digest()


def _split_counts(n: int, test_fraction: float, val_fraction: float) -> tuple[int, int]:
    n_test = math.floor(test_fraction * n + 0.5)
    n_val = math.floor(val_fraction * n + 0.5)
    if test_fraction > 0:
        n_test = max(n_test, 1)
    if val_fraction > 0:
        n_val = max(n_val, 1)
    return n_test, n_val


def check_fractions(test_fraction: float, val_fraction: float) -> None:
    """Raise UserInputError unless both fractions are in [0, 1) and sum to less than 1."""
    for what, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0.0 <= value < 1.0:
            raise UserInputError(f"{what}={value}: expected a fraction in [0, 1)")
    if test_fraction + val_fraction >= 1.0:
        raise UserInputError(
            f"test_fraction={test_fraction}, val_fraction={val_fraction}: "
            "expected a sum below 1 (some images must stay for training)"
        )


def seeded_split(
    names: Sequence[str],
    seed: int,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    labels: Sequence[Any] | np.ndarray | None = None,
    what: str = "images",
) -> dict[str, list[str]]:
    """A reproducible train / val / test split of unique ``names``.

    Names are ranked by a keyed hash (BLAKE2b of ``"seed\\0name"``); the first
    ``round(test_fraction x n)`` go to test, the next ``round(val_fraction x n)`` to val, the rest
    to train (a non-zero fraction takes at least one name). The split depends only on the names
    and the seed (not on their order or on the file system), the test names do not depend on
    ``val_fraction``, and adding a name moves at most a few others. With ``labels`` the split is
    stratified: each class is split on its own with the same rule.

    Args:
        names: unique names (file stems, relative paths).
        seed: split seed.
        test_fraction, val_fraction: shares in [0, 1), summing to less than 1.
        labels: a class per name, or None.
        what: what the names are, for error messages (e.g. ``"images of class 'tumour'"``).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each in natural name order (``val`` or
        ``test`` may be empty).

    Raises:
        UserInputError: bad fractions, or too few names (of a class) to leave one for training.
    """
    check_fractions(test_fraction, val_fraction)
    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError("names: expected unique names")
    groups: dict[Any, list[str]] = {}
    for k, name in enumerate(names):
        groups.setdefault(None if labels is None else labels[k], []).append(name)
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for label, members in groups.items():
        n = len(members)
        n_test, n_val = _split_counts(n, test_fraction, val_fraction)
        if n_test + n_val >= n:
            of = what if label is None else f"{what} of class {label!r}"
            raise UserInputError(
                f"{of}: {n}, too few for test_fraction={test_fraction}, "
                f"val_fraction={val_fraction} (at least {n_test + n_val + 1} needed)"
            )
        ranked = sorted(members, key=lambda m: (_hash_rank(seed, m), m))
        out["test"] += ranked[:n_test]
        out["val"] += ranked[n_test : n_test + n_val]
        out["train"] += ranked[n_test + n_val :]
    return {k: sorted(v, key=natural_key) for k, v in out.items()}


def split_records(
    found: dict[str, list[R]],
    seed: int,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    where: str = "",
) -> dict[str, list[R]]:
    """Assign records (with ``name`` and ``part`` fields) to splits.

    Args:
        found: ``{folder split: records}`` from split folders (``"train"``, ``"val"``, test
            names), or ``{"": records}`` for a folder without split folders.
        seed, test_fraction, val_fraction: as :func:`seeded_split`; they draw the test split when
            there is no test folder and the validation split when there is no ``val/`` folder
            (``val_fraction=0``: none).
        where: the source folder, for error messages.

    Returns:
        ``{"train": [...], "val": [...] (when any), test splits...}``, records with ``part`` set
        to their split. Names must be unique across all splits.

    Raises:
        UserInputError: a name in two splits, no test split (``test_fraction=0`` and no test
            folder), or too few images to split.
    """
    check_fractions(test_fraction, val_fraction)
    seen: dict[str, str] = {}
    for split, records in found.items():
        for record in records:
            name = record.name  # type: ignore[attr-defined]
            if name in seen:
                raise UserInputError(
                    f"{where}: image {name!r} is in both {seen[name] or 'the top folder'} and "
                    f"{split} (expected unique names)"
                )
            seen[name] = split
    pool = list(found.get("train") or found.get("") or [])
    tests = {k: v for k, v in found.items() if is_test_split(k)}
    draw_test = 0.0 if tests else test_fraction
    draw_val = 0.0 if "val" in found else val_fraction
    if not tests and draw_test == 0:
        raise UserInputError(
            f"{where}: no test split (expected a test/ folder, or a test fraction above 0)"
        )
    drawn = seeded_split(
        [r.name for r in pool],  # type: ignore[attr-defined]
        seed,
        draw_test,
        draw_val,
        what=f"images in {where}" if where else "images",
    )
    by_name = {r.name: r for r in pool}  # type: ignore[attr-defined]
    out: dict[str, list[R]] = {"train": [by_name[n] for n in drawn["train"]]}
    if "val" in found:
        out["val"] = list(found["val"])
    elif drawn["val"]:
        out["val"] = [by_name[n] for n in drawn["val"]]
    if tests:
        out.update(tests)
    else:
        out["test"] = [by_name[n] for n in drawn["test"]]
    return {
        split: [dataclasses.replace(r, part=split) for r in records]  # type: ignore[type-var]
        for split, records in out.items()
    }


def find_mask_splits(root: str | os.PathLike[str]) -> dict[str, list[MaskRecord]]:
    """The records of ``masks:DIR`` by split folder, or ``{"": records}`` without split folders."""
    root = Path(root)
    if not root.is_dir():
        raise UserInputError(f"{root}: expected a folder of images and masks")
    folders = split_folders(root)
    if folders is None:
        return {"": find_mask_pairs(root, part="train")}
    return {split: find_mask_pairs(folder, part=split) for split, folder in folders.items()}


# ------------------------------------------------------------------------------------------------
# Datasets
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskSurvey:
    """What reading every mask of a source once found.

    Attributes:
        binary: the masks are read as binary masks (objects = connected components).
        train_areas: pixel areas of the training objects (for :func:`default_min_object_area`).
    """

    binary: bool
    train_areas: np.ndarray


def survey_masks(splits: dict[str, list[MaskRecord]], mask_kind: str = "auto") -> MaskSurvey:
    """Read every mask once: check it decodes at its header's size, and decide binary vs instance.

    Raises:
        UserInputError: an unreadable or truncated mask, or (``mask_kind="binary"``) a mask with
            values other than {0, 1} / {0, 255}.
        ValueError: an unknown ``mask_kind``.
    """
    if mask_kind not in MASK_KINDS:
        raise ValueError(f"mask_kind={mask_kind!r}: expected one of {', '.join(MASK_KINDS)}")
    all_binary, any_object = True, False
    instance_areas: list[np.ndarray] = []
    component_areas: list[np.ndarray] = []
    for split, records in splits.items():
        for record in records:
            mask = read_mask(record.mask_path)
            if mask.shape != (record.height, record.width):
                raise UserInputError(
                    f"{record.mask_path}: decodes to {mask.shape[1]}x{mask.shape[0]}, expected "
                    f"{record.width}x{record.height}"
                )
            binary = is_binary_mask(mask)
            if mask_kind == "binary" and not binary:
                raise UserInputError(
                    f"{record.mask_path}: values other than 0/1 or 0/255 in a binary mask"
                )
            all_binary &= binary
            any_object |= bool(mask.any())
            if split == "train" and mask.any():
                counts = np.bincount(mask.reshape(-1).astype(np.int64))[1:]
                instance_areas.append(counts[counts > 0])
                if binary:
                    comp = np.bincount(binary_to_instances(mask).reshape(-1))[1:]
                    component_areas.append(comp)
    if mask_kind == "auto":
        binary = all_binary and any_object
    else:
        binary = mask_kind == "binary"
    areas = component_areas if binary else instance_areas
    return MaskSurvey(binary, np.concatenate(areas) if areas else np.zeros(0, dtype=np.int64))


class MaskDataset(Dataset):
    """Images with instance labels, in the item format of :class:`~histodrl.data.glas.GlasDataset`.

    Args:
        records: the pairs (:class:`MaskRecord` or any record with ``name``, ``part``,
            ``image_path``, ``mask_path``, ``width``, ``height``).
        binary: read masks as binary (objects = 8-connected components).
        description: one line naming the source.

    Attributes:
        records, binary_masks, description.

    Item ``i`` is a dict:
        ``image``: uint8 numpy array (H, W, 3), RGB; ``label``: int32 (H, W), 0 = background;
        ``name``, ``part``: strings; ``patient``, ``grade``, ``fine_grade``: ``None``.

    Raises (when an item is read):
        UserInputError: a truncated file, or an image whose decoded size differs from its mask's.
    """

    def __init__(self, records: Sequence[Any], binary: bool, description: str) -> None:
        self.records = list(records)
        self.binary_masks = bool(binary)
        self.description = description

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def read_label(self, index: int) -> np.ndarray:
        """The int32 instance labels of item ``index`` (without decoding its image)."""
        return mask_to_labels(read_mask(self.records[index].mask_path), self.binary_masks)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        image = read_image(record.image_path)
        label = self.read_label(index)
        if image.shape[:2] != label.shape:
            raise UserInputError(
                f"{record.mask_path}: mask is {label.shape[1]}x{label.shape[0]}, expected "
                f"{image.shape[1]}x{image.shape[0]} (the size of {record.image_path.name})"
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


def mask_datasets(
    root: str | os.PathLike[str],
    seed: int = 0,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    mask_kind: str = "auto",
) -> tuple[dict[str, MaskDataset], MaskSurvey]:
    """The splits of ``masks:DIR`` as :class:`MaskDataset` objects, and the mask survey.

    Returns:
        ``({"train": ..., "val": ... (when any), "test" or the test folders' names: ...},
        survey)``.

    Raises:
        UserInputError: as :func:`find_mask_pairs`, :func:`split_records` and
            :func:`survey_masks`.
    """
    root = Path(root)
    splits = split_records(find_mask_splits(root), seed, test_fraction, val_fraction, str(root))
    survey = survey_masks(splits, mask_kind)
    kind = "binary masks" if survey.binary else "instance masks"
    datasets = {
        split: MaskDataset(
            records, survey.binary, f"masks:{root} {split} ({len(records)} images, {kind})"
        )
        for split, records in splits.items()
    }
    return datasets, survey


# ------------------------------------------------------------------------------------------------
# Pretraining crops
# ------------------------------------------------------------------------------------------------


class ImageCrops(Dataset):
    """Sliding-window crops of a list of images, for pretraining (no labels).

    The windows of each image are :func:`histodrl.data.crops.sliding_windows` (they cover the
    image, the last one flush with the border), as :class:`~histodrl.data.glas.GlasCrops` does for
    GLaS. Images are decoded once when the dataset is built and kept in memory as uint8 CHW
    tensors when they take at most :data:`CACHE_LIMIT_BYTES` in all (DataLoader workers started
    by fork share that memory); otherwise each item decodes its image.

    Args:
        paths: the image files.
        sizes: their ``(width, height)``.
        crop, stride: window side and step in pixels (>= 1).
        description: one line naming the source.

    Attributes:
        windows: int64 array (n_crops, 3) of (image index, top, left).

    Shape:
        item: uint8 tensor (3, crop, crop), RGB.

    Raises:
        UserInputError: no image, an image smaller than the crop (naming it), a truncated file.
        ValueError: ``crop`` or ``stride`` below 1.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        sizes: Sequence[tuple[int, int]],
        crop: int,
        stride: int,
        description: str,
    ) -> None:
        if crop < 1 or stride < 1:
            raise ValueError(f"crop={crop}, stride={stride}: expected positive integers")
        if not paths:
            raise UserInputError(f"{description}: no images to pretrain on")
        self.paths = [Path(p) for p in paths]
        self.sizes = [tuple(s) for s in sizes]
        self.crop, self.stride = int(crop), int(stride)
        windows = []
        for k, (path, (width, height)) in enumerate(zip(self.paths, self.sizes)):
            if width < crop or height < crop:
                raise UserInputError(
                    f"{path}: image is {width}x{height}, smaller than the crop {crop}x{crop}"
                )
            windows += [(k, t, left) for t, left in sliding_windows(height, width, crop, stride)]
        self.windows = np.asarray(windows, dtype=np.int64)
        total = sum(3 * w * h for w, h in self.sizes)
        self.images: list[torch.Tensor] | None = None
        if total <= CACHE_LIMIT_BYTES:
            self.images = [self._decode(k) for k in range(len(self.paths))]
        else:
            logger.info("%s: %.1f GB of images, decoded per crop", description, total / 1e9)
        self.description = (
            f"{description} ({len(self.paths)} images, {len(self.windows)} crops {crop}/{stride})"
        )

    def _decode(self, k: int) -> torch.Tensor:
        image = read_image(self.paths[k])
        if (image.shape[1], image.shape[0]) != self.sizes[k]:
            raise UserInputError(f"{self.paths[k]}: changed on disk since it was indexed")
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> torch.Tensor:
        k, top, left = (int(v) for v in self.windows[index])
        image = self.images[k] if self.images is not None else self._decode(k)
        # clone: a view would keep (and, through a worker queue, ship) the whole image.
        return image[:, top : top + self.crop, left : left + self.crop].clone()


def pretrain_records(
    splits: dict[str, list[R]],
) -> list[R]:
    """The records of every split except the test splits (what pretraining may see)."""
    return [r for split, records in splits.items() if not is_test_split(split) for r in records]


def mask_pretrain_crops(
    root: str | os.PathLike[str],
    crop: int,
    stride: int,
    split_seed: int = 0,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> ImageCrops:
    """Sliding-window crops of the non-test images of ``masks:DIR`` (masks are not read).

    The test split is the one :func:`mask_datasets` gives with the same ``split_seed`` and
    ``test_fraction`` (validation images are pretrained on).
    """
    root = Path(root)
    splits = split_records(find_mask_splits(root), split_seed, test_fraction, 0.0, str(root))
    records = pretrain_records(splits)
    return ImageCrops(
        [r.image_path for r in records],
        [(r.width, r.height) for r in records],
        crop,
        stride,
        f"masks:{root} non-test",
    )
