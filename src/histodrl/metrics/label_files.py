"""Score a folder of predicted instance label images against a folder of GLaS annotations.

This is the file-facing side of :mod:`histodrl.metrics.glas` (used by ``histodrl glas-metrics``):
it reads label images as one-channel int32, pairs predictions with annotations by file stem and
streams the per-image sums into per-part scores. Bad files raise
:class:`histodrl.errors.UserInputError` naming the file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
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
_PART_OF_NAME = re.compile(r"^(.+)_[0-9]+$")
_GLAS_TRAIN_NAME = re.compile(r"^train_[0-9]+$")


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


def name_part(name: str) -> str:
    """The part of an image name: its text before a final ``_<number>``.

    ``"testA_12"`` is ``"testA"``, ``"train_3"`` is ``"train"``, ``"liver_img_7"`` is
    ``"liver_img"``; a name without a final number is its own part.
    """
    match = _PART_OF_NAME.match(name)
    return match.group(1) if match else name


def _is_glas_release(names: list[str]) -> bool:
    # A GLaS release folder holds the training annotations beside the test ones.
    return any(_GLAS_TRAIN_NAME.match(name) for name in names)


def pair_glas_files(
    pred_dir: str | Path, gt_dir: str | Path, parts: Sequence[str] | None = None
) -> list[tuple[str, Path, Path]]:
    """Pair the annotations of ``gt_dir`` that are scored with their predictions in ``pred_dir``.

    Annotations are the ``*_anno.{png,bmp,tif,tiff}`` files of ``gt_dir`` (every image there when it
    has none), named by their stem without ``_anno``: ``testA_1_anno.bmp`` is ``testA_1``. Its
    prediction is the one image in ``pred_dir`` whose stem is ``testA_1`` or starts with ``testA_1_``
    (``testA_1.png``, ``testA_1_seg.png``, ``testA_1_pred.tif``; never ``testA_10.png``).
    Predictions without an annotation are ignored.

    Which annotations are scored, by part (:func:`name_part`: ``testA``, ``testB``, ``train``, or
    any other prefix before ``_<number>``):

    * ``parts`` given: the annotations of those parts;
    * a GLaS release folder (it holds ``train_N`` annotations): the parts with at least one
      prediction, so that test predictions are scored without the training annotations;
    * otherwise: every annotation.

    Every annotation of a scored part needs its prediction.

    Args:
        pred_dir: Folder of predicted label images.
        gt_dir: Folder of annotations (a GLaS release folder works: its H&E images are skipped).
        parts: Parts to score, or ``None`` (see above).

    Returns:
        ``(name, prediction path, annotation path)`` in natural name order.

    Raises:
        UserInputError: when a folder is missing or has no images, a part in ``parts`` has no
            annotation, or an annotation of a scored part has no prediction or more than one.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    gt_files = _image_files(gt_dir)
    annotations = [p for p in gt_files if p.stem.endswith(_ANNOTATION_SUFFIX)]
    if annotations:
        gt_files = annotations
    pred_files = _image_files(pred_dir)
    named = [(gt_path.stem.removesuffix(_ANNOTATION_SUFFIX), gt_path) for gt_path in gt_files]
    matches = {
        name: [p for p in pred_files if _prediction_matches(p.stem, name)] for name, _ in named
    }
    present = list(dict.fromkeys(name_part(name) for name, _ in named))
    if parts is not None:
        parts = list(dict.fromkeys(parts))
        unknown = [p for p in parts if p not in present]
        if unknown:
            raise UserInputError(
                f"part {unknown[0]!r}: no annotation of that part in {gt_dir} "
                f"(parts there: {', '.join(present)})"
            )
        scored = set(parts)
    elif _is_glas_release([name for name, _ in named]):
        scored = {name_part(name) for name, _ in named if matches[name]}
        if not scored:
            scored = set(present)  # nothing matches: report the first missing prediction
    else:
        scored = set(present)
    pairs = []
    for name, gt_path in named:
        if name_part(name) not in scored:
            continue
        found = matches[name]
        if not found:
            raise UserInputError(f"{gt_path}: no prediction {name}[_*].png|bmp|tif in {pred_dir}")
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise UserInputError(f"{gt_path}: several predictions match in {pred_dir}: {names}")
        pairs.append((name, found[0], gt_path))
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
    pred_dir: str | Path,
    gt_dir: str | Path,
    *,
    aggregate: str = "pooled",
    parts: Sequence[str] | None = None,
) -> dict[str, dict[str, float | int]]:
    """GLaS object metrics of a folder of predictions, separately for each test part.

    Pairs files with :func:`pair_glas_files` (on a GLaS release folder only the parts that have
    predictions are scored; ``parts`` chooses them explicitly), reads them with :func:`read_label_image` one pair at a
    time, and scores each part (testA, testB, other, by :func:`~histodrl.metrics.glas.glas_part`)
    with the defaults of :func:`~histodrl.metrics.glas.glas_metrics`.

    Args:
        pred_dir: Folder of predicted instance label images.
        gt_dir: Folder of annotations (a GLaS release folder works).
        aggregate: ``"pooled"`` (challenge definition) or ``"mean"`` (mean of per-image scores).

    Returns:
        ``{part: {"f1", "dice", "hausdorff", "n_images", "n_empty_pred", "n_empty_gt"}}`` for the
        parts present, where ``n_empty_*`` count images whose prediction or annotation has no object
        (their objects are scored with the empty-side penalties).

    Raises:
        UserInputError: as :func:`pair_glas_files` and :func:`read_label_image`, and a prediction
            whose size differs from its annotation's.
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate={aggregate!r}: expected one of {AGGREGATES}")
    pairs = pair_glas_files(pred_dir, gt_dir, parts=parts)
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
