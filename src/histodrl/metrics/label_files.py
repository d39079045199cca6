"""Score a folder of predicted instance label images against a folder of GLaS annotations.

This is the file-facing side of :mod:`histodrl.metrics.glas` (used by ``histodrl glas-metrics``):
it reads label images as one-channel int32, pairs predictions with annotations by file stem and
streams the per-image sums into per-part scores. Bad files raise
:class:`histodrl.errors.UserInputError` naming the file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from histodrl.errors import UserInputError
from histodrl.metrics.glas import (
    AGGREGATES,
    PARTS,
    ImageTerms,
    aggregate_terms,
    glas_part,
    image_terms,
)

IMAGE_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")
_ANNOTATION_SUFFIX = "_anno"


def _natural_key(path: Path) -> list[object]:
    # testA_2 before testA_10: GLaS numbers are not zero-padded.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UserInputError(f"{folder}: not a folder")
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise UserInputError(f"{folder}: no label images ({', '.join(IMAGE_SUFFIXES)})")
    return sorted(files, key=_natural_key)


def read_label_image(path: str | Path) -> np.ndarray:
    """Read an instance label image as one channel of int32 labels (0 = background).

    PNG (8- or 16-bit, grey or palette), BMP and TIFF are read. A file with colour channels is
    accepted only when all colour channels are equal (an alpha channel is ignored); a float TIFF only
    when all values are whole numbers.

    Args:
        path: The image file.

    Returns:
        Labels, int32. Shape: (H, W).

    Raises:
        UserInputError: naming the file, when it cannot be read or is not a label image.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            array = np.asarray(tifffile.imread(path))
        else:
            from PIL import Image

            with Image.open(path) as image:
                array = np.asarray(image)
    except FileNotFoundError as exc:
        raise UserInputError(f"{path}: file not found") from exc
    except Exception as exc:  # Pillow and tifffile raise many types for corrupt files
        raise UserInputError(f"{path}: cannot read image ({exc})") from exc
    return _to_label_map(path, array)


def _to_label_map(path: Path, array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] in (2, 4):
        array = array[:, :, :-1]  # drop alpha
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3 and array.shape[2] == 3:
        if not (
            np.array_equal(array[:, :, 0], array[:, :, 1])
            and np.array_equal(array[:, :, 0], array[:, :, 2])
        ):
            raise UserInputError(
                f"{path}: expected a one-channel label image, got 3 channels that differ"
            )
        array = array[:, :, 0]
    if array.ndim != 2:
        raise UserInputError(f"{path}: expected a 2-D label image, got shape {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not (np.isfinite(array).all() and np.array_equal(array, np.round(array))):
            raise UserInputError(f"{path}: expected integer labels, got fractional {array.dtype}")
    elif not np.issubdtype(array.dtype, np.integer):
        raise UserInputError(f"{path}: expected integer labels, got {array.dtype}")
    if array.size and array.min() < 0:
        raise UserInputError(f"{path}: expected labels >= 0, found {array.min()}")
    if array.size and array.max() > np.iinfo(np.int32).max:
        raise UserInputError(f"{path}: label {array.max()} does not fit in int32")
    return array.astype(np.int32)


def _prediction_matches(stem: str, base: str) -> bool:
    # testA_1 matches testA_1.png and testA_1_seg.png but not testA_10.png.
    return stem == base or stem.startswith(base + "_")


def pair_glas_files(pred_dir: str | Path, gt_dir: str | Path) -> list[tuple[str, Path, Path]]:
    """Pair every annotation in ``gt_dir`` with its prediction in ``pred_dir``.

    Annotations are the ``*_anno.{png,bmp,tif,tiff}`` files of ``gt_dir`` (every image there when it
    has none), named by their stem without ``_anno``: ``testA_1_anno.bmp`` is ``testA_1``. Its
    prediction is the one image in ``pred_dir`` whose stem is ``testA_1`` or starts with ``testA_1_``
    (``testA_1.png``, ``testA_1_seg.png``, ``testA_1_pred.tif``; never ``testA_10.png``).
    Predictions without an annotation are ignored.

    Args:
        pred_dir: Folder of predicted label images.
        gt_dir: Folder of annotations (a GLaS release folder works: its H&E images are skipped).

    Returns:
        ``(name, prediction path, annotation path)`` in natural name order.

    Raises:
        UserInputError: when a folder is missing or has no images, or an annotation has no
            prediction or more than one.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    gt_files = _image_files(gt_dir)
    annotations = [p for p in gt_files if p.stem.endswith(_ANNOTATION_SUFFIX)]
    if annotations:
        gt_files = annotations
    pred_files = _image_files(pred_dir)
    pairs = []
    for gt_path in gt_files:
        name = gt_path.stem.removesuffix(_ANNOTATION_SUFFIX)
        matches = [p for p in pred_files if _prediction_matches(p.stem, name)]
        if not matches:
            raise UserInputError(f"{gt_path}: no prediction {name}[_*].png|bmp|tif in {pred_dir}")
        if len(matches) > 1:
            names = ", ".join(p.name for p in matches)
            raise UserInputError(f"{gt_path}: several predictions match in {pred_dir}: {names}")
        pairs.append((name, matches[0], gt_path))
    return pairs


def _read_pairs(
    pairs: list[tuple[str, Path, Path]],
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    for name, pred_path, gt_path in pairs:
        pred, gt = read_label_image(pred_path), read_label_image(gt_path)
        if pred.shape != gt.shape:
            raise UserInputError(
                f"{pred_path}: size {pred.shape[1]}x{pred.shape[0]} does not match "
                f"{gt_path} ({gt.shape[1]}x{gt.shape[0]})"
            )
        yield name, pred, gt


def evaluate_glas_folders(
    pred_dir: str | Path, gt_dir: str | Path, *, aggregate: str = "pooled"
) -> dict[str, dict[str, float | int]]:
    """GLaS object metrics of a folder of predictions, separately for each test part.

    Pairs files with :func:`pair_glas_files`, reads them with :func:`read_label_image` one pair at a
    time, and scores each part (testA, testB, other, by :func:`~histodrl.metrics.glas.glas_part`)
    with the defaults of :func:`~histodrl.metrics.glas.glas_metrics`.

    Args:
        pred_dir: Folder of predicted instance label images.
        gt_dir: Folder of annotations.
        aggregate: ``"pooled"`` (challenge definition) or ``"mean"`` (mean of per-image scores).

    Returns:
        ``{part: {"f1", "dice", "hausdorff", "n_images", "n_empty_pred", "n_empty_gt"}}`` for the
        parts present, where ``n_empty_*`` count images whose prediction or annotation has no object
        (their objects are scored with the empty-side penalties).
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate={aggregate!r}: expected one of {AGGREGATES}")
    pairs = pair_glas_files(pred_dir, gt_dir)
    terms: dict[str, list[ImageTerms]] = {part: [] for part in PARTS}
    empty: dict[str, list[int]] = {part: [0, 0] for part in PARTS}
    for name, pred, gt in _read_pairs(pairs):
        part = glas_part(name)
        terms[part].append(image_terms(pred, gt))
        empty[part][0] += not pred.any()
        empty[part][1] += not gt.any()
    return {
        part: {
            **aggregate_terms(terms[part], aggregate=aggregate),
            "n_empty_pred": empty[part][0],
            "n_empty_gt": empty[part][1],
        }
        for part in PARTS
        if terms[part]
    }


def format_glas_table(results: dict[str, dict[str, float | int]], aggregate: str) -> str:
    """A plain-text table of :func:`evaluate_glas_folders` results, one row per part."""
    how = "pooled over each part" if aggregate == "pooled" else "mean of per-image scores"
    lines = [
        f"GLaS object metrics ({how})",
        f"{'part':<8}{'images':>7}{'object F1':>11}{'object Dice':>13}{'object Hausdorff':>18}",
    ]
    for part, m in results.items():
        lines.append(
            f"{part:<8}{m['n_images']:>7}{m['f1']:>11.4f}{m['dice']:>13.4f}{m['hausdorff']:>18.3f}"
        )
    for part, m in results.items():
        for key, side in (("n_empty_pred", "prediction"), ("n_empty_gt", "annotation")):
            if m.get(key):
                lines.append(
                    f"note: {part}: {m[key]} image(s) with an empty {side}; their objects get "
                    "Dice 0 and the image diagonal as Hausdorff"
                )
    return "\n".join(lines)
