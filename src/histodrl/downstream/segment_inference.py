"""Inference and scoring of ``histodrl segment``: whole test images to instances to scores.

:func:`predict_probabilities` segments a whole image of any size with overlapping ``crop`` tiles
blended with a Gaussian weight (:func:`~histodrl.downstream.sliding.sliding_window_logits`), then a
sigmoid. :func:`evaluate_source` (:func:`evaluate_parts`) turns the probabilities into instances
(:func:`~histodrl.downstream.glands.instances_from_probabilities`: object > threshold (and, with a
contour channel, contour <= threshold before the connected components, the contour band then given
back to the nearest object), holes filled, 8-connected components, objects under
``--min-object-area`` px removed), writes them with :func:`write_label_png` to
``RUN/predictions/<name>.png`` and scores each test part of the source separately (GLaS: test A
and test B) with

* the GLaS object metrics (object F1, object Dice, object Hausdorff;
  :mod:`histodrl.metrics.glas`), pooled (the challenge definition: the objects of all images of a
  part form one set) and per-image mean;
* the pixel Dice (``pixel_dice``) of foreground against background, ``2 |P & G| / (|P| + |G|)``:
  pooled over all pixels of the part, and the mean of the per-image values. An image (or a part)
  with neither predicted nor true foreground scores 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from histodrl.commands.segment import SegmentOptions
from histodrl.data.augment import normalize, to_float
from histodrl.downstream.glands import instances_from_probabilities
from histodrl.downstream.sliding import sliding_window_logits
from histodrl.io import atomic_path
from histodrl.runs.trainer import autocast_for

PREDICTIONS_DIR = "predictions"


@torch.no_grad()
def predict_probabilities(
    model: nn.Module,
    image: np.ndarray,
    *,
    crop: int,
    overlap: float = 0.5,
    tile_batch: int = 8,
    precision: str | None = None,
) -> np.ndarray:
    """Per-pixel sigmoid probabilities of ``model`` on one whole RGB image.

    The image is normalised like the training crops and segmented with overlapping blended tiles
    (:func:`histodrl.downstream.sliding.sliding_window_logits`) on the model's device. The model
    must be in eval mode.

    Args:
        model: the U-Net (its parameters' device is used).
        image: uint8 RGB. Shape: (H, W, 3).
        crop: tile side (a multiple of 32).
        overlap: tile overlap fraction in [0, 1).
        tile_batch: tiles per forward pass.
        precision: Lightning precision name, for autocast.

    Returns:
        float32 probabilities. Shape: (K, H, W), channel 0 object (1 contour).
    """
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).to(device)
    x = normalize(to_float(x)[None])[0]

    def forward(tiles: torch.Tensor) -> torch.Tensor:
        with autocast_for(device, precision):
            return model(tiles.contiguous(memory_format=torch.channels_last))

    logits = sliding_window_logits(forward, x, crop=crop, overlap=overlap, tile_batch=tile_batch)
    return torch.sigmoid(logits).cpu().numpy()


def write_label_png(path: Path, labels: np.ndarray) -> None:
    """Write an instance label map as a PNG, atomically: 8-bit when labels fit, else 16-bit.

    Raises:
        ValueError: labels above 65535 (a PNG holds at most 16 bits).
    """
    from PIL import Image

    top = int(labels.max()) if labels.size else 0
    if top > 65535:
        raise ValueError(f"{path}: {top} objects do not fit in a 16-bit PNG")
    array = labels.astype(np.uint8 if top <= 255 else np.uint16)
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


@dataclass
class TestImage:
    """One segmented test image, kept for the report's figures."""

    __test__ = False  # not a pytest test class

    name: str
    image: np.ndarray
    truth: np.ndarray
    prediction: np.ndarray


def figure_names(parts: Mapping[str, Sequence[str]], count: int) -> list[str]:
    """The test images shown in the report: the first ones of each part, taken in turn.

    Args:
        parts: ``{part: image names}`` in the parts' order (GLaS: test A, test B).
        count: how many names at most.

    Returns:
        up to ``count`` names, the first of each part, then the second of each, ... (the other
        parts filling in when one runs out).
    """
    by_part = [list(names) for names in parts.values()]
    chosen: list[str] = []
    for k in range(max((len(p) for p in by_part), default=0)):
        for part in by_part:
            if k < len(part) and len(chosen) < count:
                chosen.append(part[k])
    return chosen


@dataclass
class PixelTerms:
    """Foreground pixel counts of one image: predicted ∩ true, predicted, true."""

    overlap: int
    predicted: int
    true: int

    @property
    def dice(self) -> float:
        total = self.predicted + self.true
        return 1.0 if total == 0 else 2.0 * self.overlap / total


def pixel_terms(prediction: np.ndarray, truth: np.ndarray) -> PixelTerms:
    """Foreground (label > 0) pixel counts of a predicted and a true label map of one image."""
    p, g = prediction > 0, truth > 0
    return PixelTerms(
        int(np.count_nonzero(p & g)), int(np.count_nonzero(p)), int(np.count_nonzero(g))
    )


def pixel_dice(terms: Sequence[PixelTerms], aggregate: str) -> float:
    """Pixel Dice of a part: ``"pooled"`` over all its pixels, or the ``"mean"`` of its images'."""
    if aggregate == "mean":
        return float(np.mean([t.dice for t in terms]))
    pooled = PixelTerms(
        sum(t.overlap for t in terms), sum(t.predicted for t in terms), sum(t.true for t in terms)
    )
    return pooled.dice


def evaluate_parts(
    model: nn.Module,
    tests: Mapping[str, Any],
    options: SegmentOptions,
    min_object_area: int,
    predictions_dir: Path | None = None,
    keep: int = 0,
) -> tuple[dict[str, dict[str, Any]], list[TestImage]]:
    """Segment every image of each test part and score its instances, part by part.

    Args:
        model: the U-Net in eval mode on its device.
        tests: ``{part: dataset}`` (items with ``image``, ``label``, ``name``; datasets with
            ``records``), e.g. :attr:`histodrl.data.labelled.SegmentationSource.tests`.
        options: the run's options; used: ``crop``, ``overlap``, ``tile_batch``, ``precision``,
            ``threshold``, ``contour``, ``contour_width``.
        min_object_area: objects under this many pixels are removed.
        predictions_dir: where to write ``<name>.png`` instance maps (``None``: not written).
        keep: how many images to return for figures (:func:`figure_names`).

    Returns:
        ``(metrics, kept)``: ``metrics[part]`` is ``{"pooled": {"f1", "dice", "hausdorff",
        "pixel_dice"}, "mean": {...}, "n_images", "n_empty_pred", "n_empty_gt"}`` for each part
        (``hausdorff`` ``None`` with ``--skip-hausdorff``)
        with images; ``kept`` the images chosen for figures, in the order they were segmented.
    """
    from histodrl.metrics.glas import aggregate_terms, image_terms

    names = {part: [r.name for r in dataset.records] for part, dataset in tests.items()}
    shown = set(figure_names(names, keep))
    kept: list[TestImage] = []
    metrics: dict[str, dict[str, Any]] = {}
    for part, dataset in tests.items():
        terms: list[Any] = []
        pixels: list[PixelTerms] = []
        empty_pred = empty_gt = 0
        for index in range(len(dataset)):
            item = dataset[index]
            prob = predict_probabilities(
                model,
                item["image"],
                crop=options.crop,
                overlap=options.overlap,
                tile_batch=options.tile_batch,
                precision=options.precision,
            )
            labels = instances_from_probabilities(
                prob[0],
                prob[1] if options.contour else None,
                threshold=options.threshold,
                min_area=min_object_area,
                contour_width=options.contour_width,
            )
            if predictions_dir is not None:
                write_label_png(predictions_dir / f"{item['name']}.png", labels)
            terms.append(image_terms(labels, item["label"], hausdorff=not options.skip_hausdorff))
            pixels.append(pixel_terms(labels, item["label"]))
            empty_pred += not labels.any()
            empty_gt += not item["label"].any()
            if item["name"] in shown:
                kept.append(TestImage(item["name"], item["image"], item["label"], labels))
        if not terms:
            continue
        scores = {}
        for aggregate in ("pooled", "mean"):
            values = aggregate_terms(terms, aggregate=aggregate)
            scores[aggregate] = {k: float(values[k]) for k in ("f1", "dice", "hausdorff")}
            if options.skip_hausdorff:
                scores[aggregate]["hausdorff"] = None  # not computed (--skip-hausdorff)
            scores[aggregate]["pixel_dice"] = pixel_dice(pixels, aggregate)
        metrics[part] = {
            **scores,
            "n_images": len(terms),
            "n_empty_pred": empty_pred,
            "n_empty_gt": empty_gt,
        }
    return metrics, kept


def evaluate_source(
    model: nn.Module,
    source: Any,
    options: SegmentOptions,
    predictions_dir: Path | None = None,
    keep: int = 0,
) -> tuple[dict[str, dict[str, Any]], list[TestImage]]:
    """:func:`evaluate_parts` on the test parts of a
    :class:`~histodrl.data.labelled.SegmentationSource`, removing objects under
    ``options.min_object_area`` px (``None``: the source's default).
    """
    min_area = options.min_object_area
    if min_area is None:
        min_area = source.min_object_area
    return evaluate_parts(model, source.tests, options, min_area, predictions_dir, keep)
