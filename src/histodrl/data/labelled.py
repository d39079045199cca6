"""Labelled data for the downstream tasks, whatever its source: one interface per task.

Segmentation (:func:`segmentation_source`, ``glas:``, ``masks:``, ``monuseg:``): a
:class:`SegmentationSource` with a ``train`` dataset, optionally ``val``, and one or more test
datasets, all in the item format of :class:`~histodrl.data.glas.GlasDataset` (``image`` uint8
(H, W, 3), ``label`` int32 instance map, ``name``, ``part``, ``grade``, ...) and each with a
``records`` list (``record.name``, ``record.grade``) so grade stratification works as for GLaS.

==========  =======================================  ==================  =================
kind        splits                                   binary_masks        min_object_area
==========  =======================================  ==================  =================
``glas``    train; testA, testB (the release's)      False               100 (GLaS)
``masks``   split folders, else a seeded split       from the masks      from the data
``monuseg`` split folders, else a seeded split       when a tile has     30 (nuclei, 40x)
                                                     only a binary mask
==========  =======================================  ==================  =================

Classification (:func:`classification_source`, ``pcam:``, ``folder:``): a
:class:`ClassificationSource` with ``train``, ``val`` (may be None) and ``test`` datasets whose
items are ``(uint8 tensor (3, crop, crop), int label)`` like
:class:`~histodrl.data.pcam.PCamDataset`, each with a ``labels`` numpy array.

``folder:DIR`` with class subfolders (``DIR/<class>/**/*.png|jpg|tif|bmp``, classes sorted by
name, label = position): with ``DIR/train/<class>/`` (and optionally ``val/``, ``test/``) the
folders are the splits; a split without a folder is drawn from the training images, class by
class, by :func:`~histodrl.data.masks.seeded_split`. **Tiles of any size are resized, not
cropped**: the shorter side is scaled to ``crop`` (box filter when shrinking, bilinear when
enlarging) and the longer side centre-cropped to ``crop``, so a square tile keeps its whole field
of view (at a coarser scale, e.g. LC25000's 224 px to 96 px); ``fit="center_crop"`` keeps the
scale instead and cuts the centre ``crop x crop`` (tiles smaller than that are an error).

**Seeds.** ``seed`` here is the *split* seed: it decides which images are held out. Give every
run on a source (pretraining and each downstream run) the same split seed (default 0), and vary
the training seed separately; :meth:`SegmentationSource.split_lists` gives the names per split to
write to the run folder. GLaS and PCam have official splits and ignore the fractions (a GLaS
validation split is drawn from the training images when ``val_fraction > 0``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from histodrl.data.folder import IMAGE_EXTENSIONS, image_header
from histodrl.data.masks import (
    DEFAULT_TEST_FRACTION,
    DEFAULT_VAL_FRACTION,
    check_fractions,
    default_min_object_area,
    natural_key,
    read_image,
    seeded_split,
)
from histodrl.errors import UserInputError

logger = logging.getLogger(__name__)

SEGMENTATION_KINDS = ("glas", "masks", "monuseg")
CLASSIFICATION_KINDS = ("pcam", "folder")
# Smallest predicted object kept on GLaS (METHOD.md's post-processing, segment --min-object-area).
GLAS_MIN_OBJECT_AREA = 100
PCAM_CLASSES = ("normal", "tumour")
DEFAULT_CROP = 96
FITS = ("resize", "center_crop")
# Classification defaults: a validation split for model selection, and a test split.
DEFAULT_CLASSIFY_VAL_FRACTION = 0.1
DEFAULT_CLASSIFY_TEST_FRACTION = 0.2

_GLAS_NAME = re.compile(r"^(train|testA|testB)_([0-9]+)$")


# ------------------------------------------------------------------------------------------------
# Segmentation
# ------------------------------------------------------------------------------------------------


class RecordSubset(Dataset):
    """Some items of a dataset with ``records`` (a GLaS validation split), itself with records."""

    def __init__(self, dataset: Any, indices: Sequence[int], part: str, description: str) -> None:
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        self.records = [dataset.records[i] for i in self.indices]
        self.part = part
        self.binary_masks = bool(getattr(dataset, "binary_masks", False))
        self.description = description

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.records]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[self.indices[index]])
        item["part"] = self.part
        return item


@dataclass
class SegmentationSource:
    """The labelled splits of a segmentation source.

    Attributes:
        kind: ``"glas"``, ``"masks"`` or ``"monuseg"``.
        root: the source folder.
        train: the training images (a Dataset with ``records``).
        tests: ``{name: Dataset}``: GLaS ``testA`` and ``testB``; otherwise ``test`` or the
            names of the test folders.
        val: the validation images, or ``None``.
        description: one line.
        binary_masks: objects are connected components of binary masks (touching objects
            merge), for a report to say so.
        min_object_area: the source's default smallest predicted object in pixels.
        seed: the split seed the splits were drawn with.
    """

    kind: str
    root: Path
    train: Any
    tests: dict[str, Any]
    val: Any | None
    description: str
    binary_masks: bool
    min_object_area: int
    seed: int = 0

    def split_lists(self) -> dict[str, list[str]]:
        """``{split: image names}`` for train, val (when any) and each test split."""
        out = {"train": _names(self.train)}
        if self.val is not None:
            out["val"] = _names(self.val)
        out.update({name: _names(d) for name, d in self.tests.items()})
        return out


def _names(dataset: Any) -> list[str]:
    return [r.name for r in dataset.records]


def _parse(spec: str, kinds: Sequence[str], task: str) -> tuple[str, str]:
    from histodrl.data.sources import parse_source

    kind, path = parse_source(spec)
    if kind not in kinds:
        raise UserInputError(
            f"{spec}: {kind}: is not a labelled {task} source "
            f"(expected {' or '.join(k + ':DIR' for k in kinds)})"
        )
    return kind, path


def _glas_parts_present(root: Path) -> list[str]:
    from histodrl.data.glas import GLAS_EXTENSIONS

    parts = set()
    for path in root.iterdir():
        match = _GLAS_NAME.match(path.stem)
        if match and path.suffix.lower() in GLAS_EXTENSIONS:
            parts.add(match.group(1))
    return [p for p in ("testA", "testB") if p in parts]


def _glas_source(root: Path, seed: int, val_fraction: float) -> SegmentationSource:
    from histodrl.data.glas import GlasDataset

    train = GlasDataset(root, parts=("train",))
    test_parts = _glas_parts_present(root)
    if not test_parts:
        raise UserInputError(
            f"{root}: no GLaS test images (expected testA_N.bmp / testB_N.bmp with their _anno)"
        )
    tests = {part: GlasDataset(root, parts=(part,)) for part in test_parts}
    val = None
    if val_fraction > 0:
        names = [r.name for r in train.records]
        grades = [r.grade for r in train.records]
        labels = None if any(g is None for g in grades) else grades
        drawn = seeded_split(names, seed, 0.0, val_fraction, labels=labels, what="GLaS images")
        index = {name: k for k, name in enumerate(names)}
        keep = [index[n] for n in drawn["train"]]
        held = [index[n] for n in drawn["val"]]
        val = RecordSubset(train, held, "val", f"glas:{root} val ({len(held)} train images)")
        train = RecordSubset(train, keep, "train", f"glas:{root} train ({len(keep)} images)")
    counts = ", ".join(f"{len(d)} {p}" for p, d in tests.items())
    extra = f", {len(val)} val" if val is not None else ""
    return SegmentationSource(
        kind="glas",
        root=root,
        train=train,
        tests=tests,
        val=val,
        description=f"glas:{root} ({len(train)} train{extra}, {counts} images)",
        binary_masks=False,
        min_object_area=GLAS_MIN_OBJECT_AREA,
        seed=seed,
    )


def _masks_source(
    root: Path, seed: int, test_fraction: float, val_fraction: float, mask_kind: str
) -> SegmentationSource:
    from histodrl.data.masks import mask_datasets

    datasets, survey = mask_datasets(root, seed, test_fraction, val_fraction, mask_kind)
    return _split_source("masks", root, datasets, survey.binary,
                         default_min_object_area(survey.train_areas), seed)  # fmt: skip


def _monuseg_source(
    root: Path, seed: int, test_fraction: float, val_fraction: float
) -> SegmentationSource:
    from histodrl.data.monuseg import MIN_OBJECT_AREA, monuseg_datasets

    datasets = monuseg_datasets(root, seed, test_fraction, val_fraction)
    binary = any(d.binary_masks for d in datasets.values())
    return _split_source("monuseg", root, datasets, binary, MIN_OBJECT_AREA, seed)


def _split_source(
    kind: str, root: Path, datasets: dict[str, Any], binary: bool, min_area: int, seed: int
) -> SegmentationSource:
    from histodrl.data.masks import is_test_split

    tests = {k: v for k, v in datasets.items() if is_test_split(k)}
    counts = ", ".join(f"{len(d)} {k}" for k, d in datasets.items())
    note = "; binary masks, touching objects merge" if binary else ""
    return SegmentationSource(
        kind=kind,
        root=root,
        train=datasets["train"],
        tests=tests,
        val=datasets.get("val"),
        description=f"{kind}:{root} ({counts} images{note})",
        binary_masks=binary,
        min_object_area=int(min_area),
        seed=seed,
    )


def segmentation_source(
    spec: str,
    seed: int = 0,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    mask_kind: str = "auto",
) -> SegmentationSource:
    """The labelled splits of a ``glas:``, ``masks:`` or ``monuseg:`` source.

    Args:
        spec: ``KIND:DIR``.
        seed: split seed (module docstring: keep it fixed across runs on one source).
        test_fraction: share of images held out for test when the source has no test folder
            (masks, monuseg; ignored by glas).
        val_fraction: share held out for validation when the source has no ``val/`` folder
            (0: no validation split).
        mask_kind: masks only: ``"auto"``, ``"instance"`` or ``"binary"``
            (:mod:`histodrl.data.masks`).

    Raises:
        UserInputError: a bad spec, a source of another kind, bad fractions, or bad data (each
            reader names the file).
    """
    kind, path = _parse(spec, SEGMENTATION_KINDS, "segmentation")
    check_fractions(test_fraction, val_fraction)
    root = Path(path)
    if kind == "glas":
        return _glas_source(root, seed, val_fraction)
    if kind == "masks":
        return _masks_source(root, seed, test_fraction, val_fraction, mask_kind)
    return _monuseg_source(root, seed, test_fraction, val_fraction)


# ------------------------------------------------------------------------------------------------
# Classification
# ------------------------------------------------------------------------------------------------


def fit_to_crop(image: np.ndarray, crop: int, fit: str = "resize") -> np.ndarray:
    """Bring an RGB tile to ``crop x crop`` (module docstring: resize, or centre crop).

    ``"resize"``: scale so that the shorter side is ``crop`` (``round`` of the longer side's new
    length, at least ``crop``; Pillow box filter when shrinking, bilinear when enlarging, left
    alone when the shorter side already is ``crop``), then cut the centred ``crop x crop``
    window (rounded towards the top-left). ``"center_crop"``: cut the centred window only.

    Args:
        image: uint8 array. Shape: (H, W, 3).

    Returns:
        uint8 array. Shape: (crop, crop, 3).

    Raises:
        ValueError: an unknown ``fit``, or (center_crop) an image smaller than the crop.
    """
    if fit not in FITS:
        raise ValueError(f"fit={fit!r}: expected one of {', '.join(FITS)}")
    height, width = image.shape[:2]
    if fit == "resize" and min(height, width) != crop:
        scale = crop / min(height, width)
        if width <= height:
            size = (crop, max(crop, round(height * scale)))
        else:
            size = (max(crop, round(width * scale)), crop)
        resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
        image = np.asarray(Image.fromarray(image).resize(size, resample))
        height, width = image.shape[:2]
    if height < crop or width < crop:
        raise ValueError(f"image {width}x{height} is smaller than the crop {crop}x{crop}")
    top, left = (height - crop) // 2, (width - crop) // 2
    return np.ascontiguousarray(image[top : top + crop, left : left + crop])


@dataclass(frozen=True)
class ClassImage:
    """One image of a class folder: ``name`` is its path relative to the split folder."""

    name: str
    path: Path
    label: int
    width: int
    height: int


class ClassFolderDataset(Dataset):
    """Images of class folders as ``(uint8 tensor (3, crop, crop), int label)`` items.

    Attributes:
        images: the :class:`ClassImage` list; ``labels``: int64 numpy array (N,);
        ``classes``: the class names (label = position); ``names``; ``description``.

    Raises (when an item is read):
        UserInputError: a truncated or unreadable file.
    """

    def __init__(
        self,
        images: Sequence[ClassImage],
        classes: Sequence[str],
        crop: int,
        fit: str,
        description: str,
    ) -> None:
        self.images = list(images)
        self.classes = tuple(classes)
        self.crop = int(crop)
        self.fit = fit
        self.labels = np.asarray([im.label for im in self.images], dtype=np.int64)
        self.description = description

    @property
    def names(self) -> list[str]:
        return [im.name for im in self.images]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        entry = self.images[index]
        tile = fit_to_crop(read_image(entry.path), self.crop, self.fit)
        return torch.from_numpy(np.ascontiguousarray(tile.transpose(2, 0, 1))), entry.label


@dataclass
class ClassificationSource:
    """The labelled splits of a classification source.

    Attributes:
        kind: ``"pcam"`` or ``"folder"``.
        root: the source folder.
        train, val, test: datasets of ``(uint8 tensor (3, S, S), int label)`` items with a
            ``labels`` int64 array; ``val`` may be ``None``.
        classes: class names, label = position (sorted folder names; PCam: normal, tumour).
        description: one line.
        seed: the split seed the splits were drawn with (unused by PCam).
    """

    kind: str
    root: Path
    train: Any
    val: Any | None
    test: Any
    classes: tuple[str, ...]
    description: str
    seed: int = 0

    def split_lists(self) -> dict[str, list[str]]:
        """``{split: names}``: relative paths for folders, ``<split>_<index>`` for PCam."""
        out = {}
        for split, dataset in (("train", self.train), ("val", self.val), ("test", self.test)):
            if dataset is None:
                continue
            if hasattr(dataset, "names"):
                out[split] = list(dataset.names)
            else:  # PCam: the release's split name and the patch index
                name = getattr(dataset, "split", split)
                out[split] = [f"{name}_{i}" for i in range(len(dataset))]
        return out


def _class_images(folder: Path, classes: Sequence[str] | None) -> tuple[list[str], dict]:
    """``(class names, {class: [paths]})`` of the class folders of ``folder``."""
    subdirs = sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )
    if not subdirs:
        loose = any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir())
        hint = " (images found directly in it)" if loose else ""
        raise UserInputError(
            f"{folder}: no class folders{hint} (expected {folder}/<class>/*.png|jpg|tif)"
        )
    found: dict[str, list[Path]] = {}
    for sub in subdirs:
        paths = []
        for dirpath, dirnames, filenames in os.walk(sub):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            paths += [
                Path(dirpath) / n
                for n in filenames
                if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_EXTENSIONS
            ]
        if not paths:
            raise UserInputError(
                f"{sub}: empty class folder (expected images ending in "
                f"{', '.join(IMAGE_EXTENSIONS)})"
            )
        found[sub.name] = sorted(paths, key=lambda p: natural_key(p.relative_to(folder).as_posix()))
    names = sorted(found)
    if classes is None:
        if len(names) < 2:
            raise UserInputError(
                f"{folder}: one class folder ({names[0]}/); expected at least two classes"
            )
    else:
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise UserInputError(
                f"{folder / unknown[0]}: class {unknown[0]!r} has no training folder "
                f"(training classes: {', '.join(classes)})"
            )
    return names, found


def _index_images(
    folder: Path, found: dict[str, list[Path]], classes: Sequence[str], crop: int, fit: str
) -> list[ClassImage]:
    images = []
    for cls, paths in found.items():
        label = list(classes).index(cls)
        for path in paths:
            width, height, _ = image_header(path)
            if fit == "center_crop" and (width < crop or height < crop):
                raise UserInputError(
                    f"{path}: image is {width}x{height}, smaller than the crop {crop}x{crop}"
                )
            images.append(
                ClassImage(path.relative_to(folder).as_posix(), path, label, width, height)
            )
    return images


def folder_classification(
    root: str | os.PathLike[str],
    seed: int = 0,
    val_fraction: float = DEFAULT_CLASSIFY_VAL_FRACTION,
    test_fraction: float = DEFAULT_CLASSIFY_TEST_FRACTION,
    crop: int = DEFAULT_CROP,
    fit: str = "resize",
) -> ClassificationSource:
    """The splits of ``folder:DIR`` with class subfolders (module docstring).

    Raises:
        UserInputError: no class folder, an empty class folder, a single class, a class of a
            ``val/`` or ``test/`` folder missing from ``train/``, too few images of a class to
            split, an unreadable image, or (center_crop) an image smaller than the crop.
        ValueError: ``crop`` below 1 or an unknown ``fit``.
    """
    if crop < 1:
        raise ValueError(f"crop={crop}: expected a positive crop size")
    if fit not in FITS:
        raise ValueError(f"fit={fit!r}: expected one of {', '.join(FITS)}")
    check_fractions(test_fraction, val_fraction)
    root = Path(root)
    if not root.is_dir():
        raise UserInputError(f"{root}: expected a folder of class folders")
    split_dirs = {s: root / s for s in ("train", "val", "test") if (root / s).is_dir()}
    if split_dirs and "train" not in split_dirs:
        raise UserInputError(
            f"{root}: has {', '.join(s + '/' for s in split_dirs)} but no train/ folder"
        )
    if split_dirs:
        others = [
            p.name
            for p in root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and p.name not in split_dirs
        ]
        if others:
            raise UserInputError(
                f"{root / others[0]}: a class folder beside train/ (expected only train/, "
                "val/ and test/ folders, each holding class folders)"
            )
        classes, train_found = _class_images(split_dirs["train"], None)
        given = {"train": _index_images(split_dirs["train"], train_found, classes, crop, fit)}
        for split in ("val", "test"):
            if split in split_dirs:
                _, split_found = _class_images(split_dirs[split], classes)
                given[split] = _index_images(split_dirs[split], split_found, classes, crop, fit)
        base = split_dirs["train"]
    else:
        classes, found = _class_images(root, None)
        given = {"train": _index_images(root, found, classes, crop, fit)}
        base = root
    pool = given["train"]
    drawn = seeded_split(
        [im.name for im in pool],
        seed,
        0.0 if "test" in given else test_fraction,
        0.0 if "val" in given else val_fraction,
        labels=[classes[im.label] for im in pool],
        what=f"images in {base}",
    )
    by_name = {im.name: im for im in pool}
    splits: dict[str, list[ClassImage]] = {"train": [by_name[n] for n in drawn["train"]]}
    for split in ("val", "test"):
        if split in given:
            splits[split] = given[split]
        elif drawn[split]:
            splits[split] = [by_name[n] for n in drawn[split]]
    if "test" not in splits:
        raise UserInputError(f"{root}: no test split (expected test/ or a test fraction above 0)")
    how = f"{fit} to {crop}x{crop}"
    datasets = {
        split: ClassFolderDataset(
            images, classes, crop, fit, f"folder:{root} {split} ({len(images)} images, {how})"
        )
        for split, images in splits.items()
    }
    counts = ", ".join(f"{len(d)} {s}" for s, d in datasets.items())
    return ClassificationSource(
        kind="folder",
        root=root,
        train=datasets["train"],
        val=datasets.get("val"),
        test=datasets["test"],
        classes=tuple(classes),
        description=f"folder:{root} ({len(classes)} classes {', '.join(classes)}; {counts}; {how})",
        seed=seed,
    )


def classification_source(
    spec: str,
    seed: int = 0,
    val_fraction: float = DEFAULT_CLASSIFY_VAL_FRACTION,
    test_fraction: float = DEFAULT_CLASSIFY_TEST_FRACTION,
    *,
    crop: int = DEFAULT_CROP,
    fit: str = "resize",
    cache_ram: bool = False,
) -> ClassificationSource:
    """The labelled splits of a ``pcam:`` or ``folder:`` source.

    Args:
        spec: ``KIND:DIR``.
        seed: split seed (folder; module docstring).
        val_fraction, test_fraction: folder only: shares drawn from the training images for the
            splits that have no folder (PCam has its official train / valid / test).
        crop, fit: folder only: item side and how tiles are brought to it.
        cache_ram: pcam only (:class:`~histodrl.data.pcam.PCamDataset`).

    Raises:
        UserInputError: a bad spec or a source of another kind, and as each reader (PCam: a
            training split with one class).
    """
    kind, path = _parse(spec, CLASSIFICATION_KINDS, "classification")
    root = Path(path)
    if kind == "folder":
        return folder_classification(root, seed, val_fraction, test_fraction, crop, fit)
    from histodrl.data.pcam import PCamDataset

    splits = {s: PCamDataset(root, s, cache_ram=cache_ram) for s in ("train", "valid", "test")}
    if len(np.unique(splits["train"].labels)) < 2:
        raise UserInputError(
            f"{splits['train'].y_path}: all labels are equal (expected both classes 0 and 1)"
        )
    counts = ", ".join(f"{len(d)} {s}" for s, d in splits.items())
    return ClassificationSource(
        kind="pcam",
        root=root,
        train=splits["train"],
        val=splits["valid"],
        test=splits["test"],
        classes=PCAM_CLASSES,
        description=f"pcam:{root} ({counts} patches 96x96)",
        seed=seed,
    )


__all__ = [
    "GLAS_MIN_OBJECT_AREA",
    "ClassFolderDataset",
    "ClassificationSource",
    "RecordSubset",
    "SegmentationSource",
    "classification_source",
    "fit_to_crop",
    "folder_classification",
    "segmentation_source",
]
