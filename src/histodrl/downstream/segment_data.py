"""The training data of ``histodrl segment``: which images, their random windows, the augmentation.

* :data:`TRAIN_IMAGES_FILE`, :data:`SPLITS_FILE`: the run's lists of the images trained on (the
  label-fraction subset) and of every split of the source
  (:meth:`histodrl.data.labelled.SegmentationSource.split_lists`).
* :func:`training_images`: the seeded ``--label-fraction`` (or ``--label-count``) subset of the
  training split (stratified by benign / malignant grade when the records have grades, as GLaS's
  ``Grade.csv`` gives), listed in ``RUN/train_images.txt``.
* :class:`SegmentationCrops`: each item a random ``1.25 crop`` square window of one image with its
  object (and DCAN contour) targets, a function of ``(seed, epoch, item)`` only.
* :func:`augment_batch`: on the device, a random flip / 90° turn, a random resized crop (area 50-100 %
  of the window, aspect 3/4-4/3, resized to ``crop``: a scale jitter of about 0.8-1.1x around the
  native resolution, which inference uses) and colour jitter (image only). Labels go through the
  same geometry with nearest sampling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from histodrl.data.augment import (
    adjust_colors,
    draw_color_jitter,
    draw_crop_boxes,
    draw_flip_rot90,
    flip_rot90,
    normalize,
    resized_crop,
    to_float,
)
from histodrl.data.crops import item_rng, random_crop_box
from histodrl.downstream.glands import contour_target

TRAIN_IMAGES_FILE = "train_images.txt"
SPLITS_FILE = "splits.json"

WINDOW_FACTOR = 1.25
"""Side of the window cut from an image, as a multiple of ``--crop``, before the resized crop."""
CROP_SCALE = (0.5, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
# Mild, as H&E stain variation (the paper says "color jittering" only).
JITTER = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.04}


def training_images(train: Any, fraction: float, seed: int, count: int | None = None) -> np.ndarray:
    """Indices of the label-fraction subset of the training images (stratified by grade if known).

    Args:
        train: the training split, a dataset with ``records`` (``record.grade``: GLaS's benign /
            malignant, ``None`` when unknown; then the subset is not stratified).
        fraction: ``--label-fraction``.
        seed: the training ``--seed``.
        count: ``--label-count``: exactly this many images instead of ``fraction``
            (:func:`histodrl.downstream.evaluation.count_subset_indices`; without grades, the
            same images as the fraction ``count / n``; a count below the number of grades
            present is drawn without stratification), or ``None``.

    Raises:
        UserInputError: a bad fraction, or a count above the number of training images.
    """
    from histodrl.downstream.subsets import subset_indices

    grades = [r.grade for r in train.records]
    labels = (
        None if any(g is None for g in grades) else np.array([g == "malignant" for g in grades])
    )
    if count is not None:
        from histodrl.downstream.evaluation import count_subset_indices

        if labels is not None and count < len(np.unique(labels)):
            labels = None  # one image cannot show both grades
        return count_subset_indices(len(train), count, seed, labels=labels, what="training images")
    return subset_indices(len(train), fraction, seed, labels=labels)


def window_side(crop: int) -> int:
    """Side of the square window cut from a training image: ``round(1.25 crop)``."""
    return round(WINDOW_FACTOR * crop)


class SegmentationCrops(Dataset):
    """Random square windows of training images with their object (and contour) targets.

    Item ``k`` may carry its epoch (``k = epoch * len(self) + i``, as
    :class:`~histodrl.runs.sampling.StepBatchSampler` emits with ``epoch_indices=True``):
    the window of item ``i`` in epoch ``e`` is drawn from :func:`histodrl.data.crops.item_rng`
    ``(seed, e, i)``, so it depends on nothing else (not on workers or read order). Item ``i`` shows
    image ``images[i % len(images)]``; with ``min_length`` larger than the number of images, each
    image appears several times per epoch (so that a batch of 2 can be drawn from one image).

    Args:
        glas: the training split (items with ``image`` and ``label``, as
            :class:`histodrl.data.glas.GlasDataset`'s).
        images: indices into ``glas`` of the images to use (the label-fraction subset).
        window: side of the square window (images smaller than it are reflect-padded, labels too).
        seed: seed of the window positions.
        contour_width: depth of the contour target in pixels, or ``None`` for no contour channel.
        min_length: the dataset has at least this many items.

    Shape:
        item ``"image"``: uint8 (3, window, window); ``"target"``: uint8 (K, window, window), K = 1
        (object) or 2 (object, contour), values 0/1.
    """

    def __init__(
        self,
        glas: Any,
        images: Sequence[int],
        window: int,
        seed: int,
        contour_width: int | None = None,
        min_length: int = 1,
    ) -> None:
        if len(images) == 0:
            raise ValueError("images: expected at least one training image")
        if window < 1:
            raise ValueError(f"window={window}: expected a positive side")
        self.glas = glas
        self.images = [int(i) for i in images]
        self.window = int(window)
        self.seed = int(seed)
        self.contour_width = contour_width
        self.repeats = max(1, math.ceil(min_length / len(self.images)))

    def __len__(self) -> int:
        return len(self.images) * self.repeats

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        epoch, i = divmod(int(index), len(self))
        item = self.glas[self.images[i % len(self.images)]]
        image, label = item["image"], item["label"]
        height, width = label.shape
        pad = ((0, max(0, self.window - height)), (0, max(0, self.window - width)))
        if pad[0][1] or pad[1][1]:
            # Mirrored objects are still objects, so the labels are padded the same way.
            image = np.pad(image, (*pad, (0, 0)), mode="reflect")
            label = np.pad(label, pad, mode="reflect")
            height, width = label.shape
        top, left = random_crop_box(height, width, self.window, item_rng(self.seed, epoch, i))
        rows, cols = slice(top, top + self.window), slice(left, left + self.window)
        targets = [label[rows, cols] > 0]
        if self.contour_width is not None:
            # The contour of the window's pixels depends on labels up to contour_width away.
            m = self.contour_width
            r0, c0 = max(0, top - m), max(0, left - m)
            region = label[r0 : top + self.window + m, c0 : left + self.window + m]
            contour = contour_target(region, m)
            targets.append(
                contour[top - r0 : top - r0 + self.window, left - c0 : left - c0 + self.window]
            )
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image[rows, cols].transpose(2, 0, 1))),
            "target": torch.from_numpy(np.stack(targets).astype(np.uint8)),
        }


def augment_batch(
    image: torch.Tensor, target: torch.Tensor, crop: int, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training augmentation of a batch of windows, on their device.

    One random flip / 90° turn and one random resized crop (area ``CROP_SCALE`` of the window,
    aspect ``CROP_RATIO``, resized to ``crop``) per image, applied to the image (bilinear) and its
    target (nearest, so values stay 0/1); then colour jitter (``JITTER``) and ImageNet
    normalisation of the image only.

    Args:
        image: uint8 windows. Shape: (B, 3, W, W).
        target: uint8 0/1 targets. Shape: (B, K, W, W).
        crop: output side.
        generator: a ``torch.Generator`` on the tensors' device (the step's generator).

    Returns:
        ``(x, y)``: normalised float32 images (B, 3, crop, crop), channels_last; float32 targets
        (B, K, crop, crop) in {0, 1}.
    """
    batch, _, height, width = image.shape
    device = image.device
    flips = draw_flip_rot90(batch, square=height == width, generator=generator, device=device)
    x = flip_rot90(to_float(image), flips)
    y = flip_rot90(target, flips)
    boxes = draw_crop_boxes(
        batch, height, width, scale=CROP_SCALE, ratio=CROP_RATIO, generator=generator, device=device
    )
    x = resized_crop(x, boxes, crop, mode="bilinear")
    y = resized_crop(y, boxes, crop, mode="nearest")
    x = adjust_colors(x, draw_color_jitter(batch, **JITTER, generator=generator, device=device))
    x = normalize(x).contiguous(memory_format=torch.channels_last)
    return x, y.float()
