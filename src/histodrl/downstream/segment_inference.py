"""Inference and scoring of ``histodrl segment``: whole test images to gland instances to GLaS metrics.

:func:`predict_probabilities` segments a whole image of any size with overlapping ``crop`` tiles
blended with a Gaussian weight (:func:`~histodrl.downstream.sliding.sliding_window_logits`), then a
sigmoid. :func:`evaluate_glas_tests` turns the probabilities into instances
(:func:`~histodrl.downstream.glands.instances_from_probabilities`: gland > threshold (and, with a
contour channel, contour <= threshold before the connected components, the contour band then given
back to the nearest gland), holes filled, 8-connected components, objects under
``--min-object-area`` px removed), writes them with :func:`write_label_png` to
``RUN/predictions/<name>.png`` and scores them with the GLaS object metrics, pooled (challenge
definition) and per-image mean, for test A and test B separately.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from histodrl.commands.segment import DEFAULT_MIN_OBJECT_AREA, SegmentOptions
from histodrl.data.augment import normalize, to_float
from histodrl.downstream.glands import instances_from_probabilities
from histodrl.downstream.segment_data import TEST_PARTS
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
        float32 probabilities. Shape: (K, H, W), channel 0 gland (1 contour).
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


def figure_names(names: Sequence[str], count: int) -> list[str]:
    """The test images shown in the report: the first ones of each part, alternating A and B.

    Returns up to ``count`` names, taken in turn from test A and test B (natural order within a
    part), the other part filling in when one runs out.
    """
    by_part = [[n for n in names if n.startswith(f"{part}_")] for part in TEST_PARTS]
    chosen: list[str] = []
    for k in range(max((len(p) for p in by_part), default=0)):
        for part in by_part:
            if k < len(part) and len(chosen) < count:
                chosen.append(part[k])
    return chosen


def evaluate_glas_tests(
    model: nn.Module,
    root: str | Path,
    options: SegmentOptions,
    predictions_dir: Path | None = None,
    keep: int = 0,
) -> tuple[dict[str, dict[str, Any]], list[TestImage]]:
    """Segment every test A / test B image of a GLaS folder and score the instances per part.

    Args:
        model: the U-Net in eval mode on its device.
        root: the GLaS folder.
        options: the run's options; used: ``crop``, ``overlap``, ``tile_batch``, ``precision``,
            ``threshold``, ``min_object_area`` (``None``: GLaS's 100), ``contour``,
            ``contour_width``.
        predictions_dir: where to write ``<name>.png`` instance maps (``None``: not written).
        keep: how many images to return for figures (:func:`figure_names`).

    Returns:
        ``(metrics, kept)``: ``metrics[part]`` is ``{"pooled": {"f1", "dice", "hausdorff"},
        "mean": {...}, "n_images", "n_empty_pred", "n_empty_gt"}`` for each part present;
        ``kept`` the images chosen for figures.

    Raises:
        UserInputError: the folder has no test A or test B images (or a bad file).
    """
    from histodrl.data.glas import GlasDataset
    from histodrl.metrics.glas import aggregate_terms, image_terms

    min_area = options.min_object_area
    if min_area is None:
        min_area = DEFAULT_MIN_OBJECT_AREA["glas"]
    tests = GlasDataset(root, parts=TEST_PARTS)
    shown = set(figure_names([r.name for r in tests.records], keep))
    terms: dict[str, list[Any]] = {part: [] for part in TEST_PARTS}
    empty: dict[str, list[int]] = {part: [0, 0] for part in TEST_PARTS}
    kept: list[TestImage] = []
    for index in range(len(tests)):
        item = tests[index]
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
            min_area=min_area,
            contour_width=options.contour_width,
        )
        if predictions_dir is not None:
            write_label_png(predictions_dir / f"{item['name']}.png", labels)
        part = item["part"]
        terms[part].append(image_terms(labels, item["label"]))
        empty[part][0] += not labels.any()
        empty[part][1] += not item["label"].any()
        if item["name"] in shown:
            kept.append(TestImage(item["name"], item["image"], item["label"], labels))
    metrics: dict[str, dict[str, Any]] = {}
    for part in TEST_PARTS:
        if not terms[part]:
            continue
        scores = {}
        for aggregate in ("pooled", "mean"):
            values = aggregate_terms(terms[part], aggregate=aggregate)
            scores[aggregate] = {k: float(values[k]) for k in ("f1", "dice", "hausdorff")}
        metrics[part] = {
            **scores,
            "n_images": len(terms[part]),
            "n_empty_pred": empty[part][0],
            "n_empty_gt": empty[part][1],
        }
    return metrics, kept
