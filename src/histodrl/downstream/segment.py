"""``histodrl segment``: fine-tune a U-Net on GLaS and score its gland instances on test A and B.

The network is :class:`histodrl.nn.UNet` on a ``vgg19_bn`` encoder (skips at conv1_2, conv2_2,
conv3_4, conv4_4, conv5_4, centre at pool5; decoder blocks of x2 bilinear upsampling, concatenation
and two 3x3 conv-BN-ReLU). The encoder starts from ``--init`` (random, a pretraining run, an
encoder file, or torchvision's ImageNet file, :func:`histodrl.downstream.init.load_init`; FEM and
discriminators are never transferred), the decoder from random weights, and everything is
fine-tuned with SGD, lr 0.005, batch 2 (paper IV-A.2; momentum 0.9 and weight decay 5e-4 are
METHOD.md's assumptions). The learning rate follows the "poly" decay ``lr (1 - t/T)^0.9`` by
default (``--schedule constant`` keeps it fixed; the paper gives only the initial value).

Training (choices the paper leaves open, also in the README):

* **Data**: a seeded ``--label-fraction`` of the GLaS training images (stratified by benign /
  malignant grade when ``Grade.csv`` is present, :func:`~histodrl.downstream.subsets.subset_indices`),
  listed in ``RUN/train_images.txt``. Test A and test B are never trained on.
* **Length**: ``--epochs`` counts passes over the *full* training set's image count, one random
  crop per image: ``floor(epochs x (85 // batch))`` steps, whatever the label fraction, so runs with
  different fractions get the same number of updates. Default 100 epochs = 4200 steps at batch 2.
* **Crops**: each item is a random ``1.25 crop`` square window of one image (images smaller than
  that are reflect-padded, labels too); on the device, a random flip / 90° turn, a random resized
  crop (area 50-100 % of the window, aspect 3/4-4/3, resized to ``crop``: a scale jitter of about
  0.8-1.1x around the native resolution, which inference uses) and colour jitter (brightness,
  contrast, saturation 0.2, hue 0.04, on the image only). Labels go through the same geometry with
  nearest sampling.
* **Targets and loss**: channel 0 is "gland" (any instance label); with ``--contour`` channel 1 is
  the DCAN contour (:func:`~histodrl.downstream.glands.contour_target`, ``--contour-width`` px deep
  inside each gland, computed from the instance labels before resizing). The loss is the mean
  binary cross-entropy with logits over all channels and pixels, plus ``--dice-weight`` x the soft
  Dice loss of the gland channel.

Inference on whole test images of any size: overlapping ``crop`` tiles blended with a Gaussian
weight (:func:`~histodrl.downstream.sliding.sliding_window_logits`), sigmoid, then
:func:`~histodrl.downstream.glands.instances_from_probabilities`: gland > threshold (and, with a
contour channel, contour <= threshold before the connected components, the contour band then
given back to the nearest gland), holes filled, 8-connected components, objects under
``--min-object-area`` px removed. The instance maps are written to
``RUN/predictions/<name>.png`` and scored with the GLaS object metrics, pooled (challenge
definition) and per-image mean, for test A and test B separately (``RUN/metrics.json``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

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
from histodrl.downstream.glands import contour_target, instances_from_probabilities
from histodrl.downstream.sliding import sliding_window_logits
from histodrl.errors import UserInputError
from histodrl.io import atomic_path, atomic_write_text
from histodrl.training import (
    autocast_for,
    check_finite,
    derive_seed,
    resolve_device,
    step_generator,
    step_loader,
)

TRAIN_IMAGES_FILE = "train_images.txt"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
PREDICTIONS_DIR = "predictions"
TEST_PARTS = ("testA", "testB")

WINDOW_FACTOR = 1.25
"""Side of the window cut from an image, as a multiple of ``--crop``, before the resized crop."""
POLY_POWER = 0.9
CROP_SCALE = (0.5, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
# Mild, as H&E stain variation (the paper says "color jittering" only).
JITTER = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.04}

# ------------------------------------------------------------------------------------------------
# Training data
# ------------------------------------------------------------------------------------------------


def window_side(crop: int) -> int:
    """Side of the square window cut from a training image: ``round(1.25 crop)``."""
    return round(WINDOW_FACTOR * crop)


class SegmentationCrops(Dataset):
    """Random square windows of GLaS training images with their gland (and contour) targets.

    Item ``k`` may carry its epoch (``k = epoch * len(self) + i``, as
    :class:`~histodrl.training.StepBatchSampler` emits with ``epoch_indices=True``):
    the window of item ``i`` in epoch ``e`` is drawn from :func:`histodrl.data.crops.item_rng`
    ``(seed, e, i)``, so it depends on nothing else (not on workers or read order). Item ``i`` shows
    image ``images[i % len(images)]``; with ``min_length`` larger than the number of images, each
    image appears several times per epoch (so that a batch of 2 can be drawn from one image).

    Args:
        glas: a :class:`histodrl.data.glas.GlasDataset` (items with ``image`` and ``label``).
        images: indices into ``glas`` of the images to use (the label-fraction subset).
        window: side of the square window (images smaller than it are reflect-padded, labels too).
        seed: seed of the window positions.
        contour_width: depth of the contour target in pixels, or ``None`` for no contour channel.
        min_length: the dataset has at least this many items.

    Shape:
        item ``"image"``: uint8 (3, window, window); ``"target"``: uint8 (K, window, window), K = 1
        (gland) or 2 (gland, contour), values 0/1.
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
            # Mirrored glands are still glands, so the labels are padded the same way.
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


# ------------------------------------------------------------------------------------------------
# Loss and model
# ------------------------------------------------------------------------------------------------


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss over a whole batch: ``1 - (2 sum p t + eps) / (sum p + sum t + eps)``.

    Milletari et al., "V-Net", 3DV 2016 (https://arxiv.org/abs/1606.04797), eq. 1, with ``p =
    sigmoid(logits)`` and the sums taken over every pixel of every image (a batch-level Dice, so
    an image without glands does not make the loss undefined). ``eps`` smooths it: an empty
    target and an empty prediction give 0.

    Shape:
        logits, target: (B, H, W) or any equal shapes. Output: scalar.
    """
    p = torch.sigmoid(logits.float())
    t = target.float()
    return 1 - (2 * (p * t).sum() + eps) / (p.sum() + t.sum() + eps)


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 0.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """BCE with logits averaged over all channels and pixels, plus ``dice_weight`` x soft Dice.

    The Dice term uses the gland channel (0) only: the thin contour band would make a Dice loss
    on it noisy.

    Args:
        logits: network output. Shape: (B, K, H, W).
        target: 0/1 targets. Shape: (B, K, H, W).
        dice_weight: weight of :func:`soft_dice_loss` (>= 0).

    Returns:
        ``(loss, logs)`` with logs ``bce`` (and ``dice`` when ``dice_weight > 0``).
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
    logs = {"bce": bce}
    loss = bce
    if dice_weight > 0:
        dice = soft_dice_loss(logits[:, 0], target[:, 0])
        logs["dice"] = dice
        loss = loss + dice_weight * dice
    return loss, logs


MIN_DECODER_WIDTH = 8
"""Fewest channels of a decoder block: at width 1/8 the default widths would end in a 2-channel
block, whose ReLUs all die within a few dozen SGD steps (the output then becomes constant)."""


def build_unet(width: float, contour: bool, seed: int) -> nn.Module:
    """The U-Net on a ``vgg19_bn`` trunk, randomly initialised from ``seed``.

    One output channel (gland) or two (gland, contour). Decoder widths are METHOD.md's
    (256, 128, 64, 32, 16) times ``width``, at least :data:`MIN_DECODER_WIDTH` (so width 1 is
    exactly METHOD.md's).
    """
    from histodrl.nn import UNet, vgg19_bn
    from histodrl.nn.unet import DEFAULT_DECODER_WIDTHS

    encoder = vgg19_bn(
        width=width, generator=torch.Generator().manual_seed(derive_seed(seed, "enc"))
    )
    widths = [max(MIN_DECODER_WIDTH, round(c * width)) for c in DEFAULT_DECODER_WIDTHS]
    decoder_gen = torch.Generator().manual_seed(derive_seed(seed, "decoder"))
    return UNet(
        encoder, out_channels=2 if contour else 1, decoder_widths=widths, generator=decoder_gen
    )


class SegmentationModule(L.LightningModule):
    """The U-Net with its training step, optimizer and device-side augmentation.

    Args:
        config: the resolved options of ``histodrl segment`` (saved in checkpoints).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters(config)
        self.config = config
        self.seed = int(config["seed"])
        self.crop = int(config["crop"])
        self.model = build_unet(float(config["width"]), bool(config["contour"]), self.seed)
        self.model.to(memory_format=torch.channels_last)
        self._compiled: Any = None
        self.loader_factory: Callable[[SegmentationModule], DataLoader] | None = None

    def configure_model(self) -> None:
        if self.config.get("compile") and self._compiled is None:
            # Compiled separately so that the state dict keeps the plain model's key names.
            self._compiled = torch.compile(self.model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self._compiled or self.model)(x)

    def on_after_batch_transfer(
        self, batch: dict[str, torch.Tensor], dataloader_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        generator = step_generator(self.seed, self.global_step, self.global_rank, self.device)
        return augment_batch(batch["image"], batch["target"], self.crop, generator)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, target = batch
        loss, logs = segmentation_loss(self(x), target, float(self.config["dice_weight"]))
        if self.global_step % max(1, int(self.config.get("log_every", 10))) == 0:
            check_finite(loss.detach(), "loss", self.global_step)
        self.log_dict(
            {"train/loss": loss.detach(), **{f"train/{k}": v.detach() for k, v in logs.items()}},
            on_step=True,
            on_epoch=False,
            batch_size=x.shape[0],
        )
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, logger=False)
        return loss

    def train_dataloader(self) -> DataLoader:
        if self.loader_factory is None:
            raise RuntimeError("set module.loader_factory before trainer.fit")
        return self.loader_factory(self)

    def configure_optimizers(self) -> Any:
        c = self.config
        optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=float(c["lr"]),
            momentum=float(c["momentum"]),
            weight_decay=float(c["weight_decay"]),
        )
        if c.get("schedule", "poly") == "constant":
            return optimizer
        total = max(1, int(c["total_steps"]))
        # DeepLab's "poly" decay: lr (1 - t / T)^0.9, stepped every optimizer step.
        poly = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: max(0.0, 1 - step / total) ** POLY_POWER
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": poly, "interval": "step"}}


# ------------------------------------------------------------------------------------------------
# Inference and evaluation
# ------------------------------------------------------------------------------------------------


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
    config: dict[str, Any],
    predictions_dir: Path | None = None,
    keep: int = 0,
) -> tuple[dict[str, dict[str, Any]], list[TestImage]]:
    """Segment every test A / test B image of a GLaS folder and score the instances per part.

    Args:
        model: the U-Net in eval mode on its device.
        root: the GLaS folder.
        config: options ``crop``, ``overlap``, ``tile_batch``, ``precision``, ``threshold``,
            ``min_object_area``, ``contour``, ``contour_width``.
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
            crop=int(config["crop"]),
            overlap=float(config["overlap"]),
            tile_batch=int(config["tile_batch"]),
            precision=config.get("precision"),
        )
        labels = instances_from_probabilities(
            prob[0],
            prob[1] if config["contour"] else None,
            threshold=float(config["threshold"]),
            min_area=int(config["min_object_area"]),
            contour_width=int(config["contour_width"]),
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


# ------------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------------


def check_options(c: dict[str, Any]) -> None:
    """One-line errors for option values that cannot work (names the option and the value)."""
    crop = int(c["crop"])
    if crop < 32 or crop % 32:
        raise UserInputError(
            f"--crop {crop}: expected a multiple of 32 (the U-Net halves it 5 times)"
        )
    checks = [
        ("--label-fraction", c["label_fraction"], 0 < float(c["label_fraction"]) <= 1, "in (0, 1]"),
        ("--batch-size", c["batch_size"], int(c["batch_size"]) >= 1, "at least 1"),
        ("--epochs", c["epochs"], float(c["epochs"]) > 0, "> 0"),
        ("--lr", c["lr"], float(c["lr"]) > 0, "> 0"),
        ("--width", c["width"], float(c["width"]) > 0, "> 0"),
        ("--contour-width", c["contour_width"], int(c["contour_width"]) >= 1, "at least 1"),
        ("--dice-weight", c["dice_weight"], float(c["dice_weight"]) >= 0, ">= 0"),
        ("--threshold", c["threshold"], 0 <= float(c["threshold"]) < 1, "in [0, 1)"),
        ("--min-object-area", c["min_object_area"], int(c["min_object_area"]) >= 0, ">= 0"),
        ("--overlap", c["overlap"], 0 <= float(c["overlap"]) < 1, "in [0, 1)"),
        ("--tile-batch", c["tile_batch"], int(c["tile_batch"]) >= 1, "at least 1"),
        ("--figures", c["figures"], int(c["figures"]) >= 0, ">= 0"),
    ]
    if c.get("max_steps") is not None:
        checks.append(("--max-steps", c["max_steps"], int(c["max_steps"]) >= 1, "at least 1"))
    for option, value, ok, expected in checks:
        if not ok:
            raise UserInputError(f"{option} {value}: expected a value {expected}")


def resolve_config(options: dict[str, Any]) -> dict[str, Any]:
    """Options with every default filled in (:func:`segment_defaults`) and checked."""
    from histodrl.downstream.segment_options import DEFAULT_EPOCHS, segment_defaults

    # How the command was started (resume, overwrite, ...) is not part of the run's config.
    started = {"resume", "overwrite", "explicit", "config", "debug", "command"}
    given = {k: v for k, v in options.items() if v is not None}
    c = {k: v for k, v in {**segment_defaults(), **given}.items() if k not in started}
    if c.get("epochs") is None:
        c["epochs"] = DEFAULT_EPOCHS
    for key in ("data", "out"):
        if not c.get(key):
            raise UserInputError(f"--{key}: required")
    if c.get("num_workers") is None:
        c["num_workers"] = min(4, os.cpu_count() or 1)
    check_options(c)
    return c


def glas_root(data: str) -> str:
    """The folder of a ``glas:DIR`` source (other kinds are an error)."""
    from histodrl.data.sources import parse_source

    kind, path = parse_source(data)
    if kind != "glas":
        raise UserInputError(
            f"{data}: expected a glas:DIR source (histodrl segment trains on GLaS)"
        )
    return path


def training_images(glas: Any, fraction: float, seed: int) -> np.ndarray:
    """Indices of the label-fraction subset of the training images (stratified by grade if known)."""
    from histodrl.downstream.subsets import subset_indices

    grades = [r.grade for r in glas.records]
    labels = (
        None if any(g is None for g in grades) else np.array([g == "malignant" for g in grades])
    )
    return subset_indices(len(glas), fraction, seed, labels=labels)


def _loader(module: SegmentationModule, dataset: SegmentationCrops, config: dict, total: int):
    return step_loader(
        module.trainer,
        dataset,
        batch_size=int(config["batch_size"]),
        total_steps=total,
        seed=int(config["seed"]),
        num_workers=int(config["num_workers"]),
        epoch_indices=True,
    )


def run_segment(options: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune, segment the test images and write the run folder; returns ``metrics.json``.

    Writes ``RUN/config.yaml``, ``RUN/train_images.txt``, ``RUN/checkpoints/last.ckpt``,
    ``RUN/metrics.csv``, ``RUN/predictions/*.png``, ``RUN/metrics.json``, ``RUN/figures/*.png``
    and ``RUN/report.md``. With ``resume``, training continues from the last checkpoint and the
    evaluation is redone.

    Args:
        options: the command's options (``config_dict`` of the parsed arguments, or a dict from
            :func:`histodrl.downstream.segment_options.segment_defaults` with ``data`` and ``out``
            set), plus ``resume`` / ``overwrite``.

    Returns:
        The metrics written to ``RUN/metrics.json`` (``{}`` in the extra processes of a
        multi-process run, which do not evaluate).
    """
    from histodrl.data.glas import GlasDataset, find_glas_records
    from histodrl.downstream.init import describe_init, load_init
    from histodrl.downstream.segment_report import report_markdown, write_figures
    from histodrl.pretext.train import is_launcher_process
    from histodrl.training import (
        checkpoint_step,
        prepare_run_dir,
        resumed_config,
        total_steps_for,
        trainer_from_config,
        trim_metrics,
        write_config,
    )

    run = Path(options["out"])
    resume = bool(options.get("resume"))
    launcher = is_launcher_process()
    if resume:
        config = resumed_config(run, options, launcher=launcher)
    else:
        config = resolve_config(options)
    root = glas_root(config["data"])
    train = GlasDataset(root, parts=("train",))
    find_glas_records(root, TEST_PARTS)  # no test images: say so now, not after training
    chosen = training_images(train, float(config["label_fraction"]), int(config["seed"]))
    if launcher:
        prepare_run_dir(run, overwrite=bool(options.get("overwrite")), resume=resume)
        if resume:
            trim_metrics(run, checkpoint_step(run / "checkpoints" / "last.ckpt"))

    trainer = trainer_from_config(run, config)
    batch = int(config["batch_size"])
    if resume:
        total = int(config["total_steps"])
    else:
        total = total_steps_for(len(train), batch, trainer.world_size, float(config["epochs"]))
        if config.get("max_steps"):
            # --max-steps alone sets the length; with an explicit --epochs it caps it.
            cap = int(config["max_steps"])
            total = cap if options.get("epochs") is None else min(total, cap)
        config["total_steps"] = total
        config["data_description"] = (
            f"{train.description}, {len(chosen)} used for training "
            f"(label fraction {config['label_fraction']})"
        )
    trainer.fit_loop.epoch_loop.max_steps = total
    if launcher and not resume:
        write_config(run, config)
        names = "".join(f"{train.records[i].name}\n" for i in chosen)
        atomic_write_text(run / TRAIN_IMAGES_FILE, names)

    L.seed_everything(int(config["seed"]), workers=True, verbose=False)
    torch.use_deterministic_algorithms(bool(config.get("deterministic")), warn_only=True)
    module = SegmentationModule(config)
    if not resume:
        load_init(module.model.encoder, str(config["init"]))
    dataset = SegmentationCrops(
        train,
        chosen,
        window_side(int(config["crop"])),
        seed=int(config["seed"]),
        contour_width=int(config["contour_width"]) if config["contour"] else None,
        min_length=batch * trainer.world_size,
    )
    module.loader_factory = lambda m: _loader(m, dataset, config, total)
    ckpt = str(run / "checkpoints" / "last.ckpt") if resume else None
    trainer.fit(module, ckpt_path=ckpt)
    # Lightning checkpoints every N steps; the last step must be saved whatever N is.
    trainer.save_checkpoint(run / "checkpoints" / "last.ckpt", weights_only=False)
    if not trainer.is_global_zero:
        return {}

    model = module.model.to(resolve_device(str(config.get("accelerator", "auto")))).eval()
    metrics, kept = evaluate_glas_tests(
        model, root, config, predictions_dir=run / PREDICTIONS_DIR, keep=int(config["figures"])
    )
    atomic_write_text(run / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    figures = write_figures(run, kept)
    atomic_write_text(
        run / REPORT_FILE,
        report_markdown(
            config,
            metrics,
            figures=figures,
            init_description=describe_init(str(config["init"])),
            n_train=len(train),
            n_used=len(chosen),
            steps=int(trainer.global_step),
        ),
    )
    return metrics
