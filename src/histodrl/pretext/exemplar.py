"""Exemplar CNN: each seed patch and its random transformations form one surrogate class.

Dosovitskiy, Fischer, Springenberg, Riedmiller and Brox, "Discriminative unsupervised feature learning
with exemplar convolutional neural networks", TPAMI 2016, https://arxiv.org/abs/1406.6909.

- Surrogate classes: K seed items (``--exemplar-classes``, default 4000; the paper uses a few
  thousand and finds little gain beyond 8000) drawn once from the dataset by the run's seed.
  The loader samples only those items (:meth:`Exemplar.training_dataset`), each with its class
  index, so every step shows N seeds, each under a fresh random transformation; the step budget
  stays the same as every other method's.
- Transformations, drawn per image from the step's generator: the paper's translation (up to 0.2
  of the side), scaling (factor 0.7 to 1.4) and rotation (up to 20°) as one affine warp with
  reflection at the border, after the base's flip/rot90; its colour transformations ("contrast 1",
  "contrast 2" and hue shifts of up to 0.1) as a colour jitter of brightness, contrast and
  saturation by up to 40 % and hue by up to 0.1.
- Loss: cross-entropy over the K classes of a classifier on the trunk's pool5.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from histodrl.data.augment import color_jitter
from histodrl.errors import UserInputError
from histodrl.pretext.base import PretextModule
from histodrl.pretext.decoders import pooled_classifier
from histodrl.runs.sampling import derive_seed

MAX_ROTATION_DEGREES = 20.0
SCALE_RANGE = (0.7, 1.4)
MAX_TRANSLATION = 0.2  # of the side


class SeedItems(Dataset):
    """The exemplar training set: K seed items of ``dataset``, item c returned with its class c.

    The seeds are the sorted first K entries of a permutation of the dataset drawn from ``seed``.

    Args:
        dataset: the pretraining dataset (items are uint8 (3, S, S) tensors).
        num_classes: K, at most ``len(dataset)``.
        seed: the run's seed.

    Raises:
        UserInputError: if the dataset has fewer than K items.
    """

    def __init__(self, dataset: Any, num_classes: int, seed: int) -> None:
        n = len(dataset)
        if num_classes > n:
            raise UserInputError(
                f"--exemplar-classes {num_classes}: the data has only {n} items "
                f"(expected at most {n} classes)"
            )
        gen = torch.Generator().manual_seed(derive_seed(seed, "exemplar seeds"))
        self.dataset = dataset
        self.indices = torch.randperm(n, generator=gen)[:num_classes].sort().values.tolist()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, c: int) -> dict[str, Any]:
        return {"image": self.dataset[self.indices[c]], "index": c}


def affine_warp(
    x: torch.Tensor, angle: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor
) -> torch.Tensor:
    """Rotate, scale and shift each image about its centre (bilinear, reflection at the border).

    Output pixel p samples the input at ``R(angle)·p / scale + shift`` in ``grid_sample``'s
    normalised coordinates (x right, y down, −1 and 1 at the outer pixel edges): a scale above 1
    enlarges the content, and a shift of ``2k/W`` along x moves the content k pixels left.

    Args:
        x: images. Shape: (N, C, H, W).
        angle: rotation in radians. Shape: (N,).
        scale: zoom factors, > 0. Shape: (N,).
        shift: (x, y) shifts in normalised coordinates. Shape: (N, 2).

    Returns:
        The warped images. Shape: (N, C, H, W).
    """
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    theta = torch.cat([theta, shift[:, :, None]], dim=2).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_affine(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """The paper's geometric transformations, drawn per image: :func:`affine_warp` with angle
    ~ U[−20°, 20°], scale ~ U[0.7, 1.4] and a shift ~ U[−0.2, 0.2] of the side along each axis.

    Shape: (N, C, H, W) -> (N, C, H, W).
    """
    n = x.shape[0]

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, *shape, generator=generator, device=x.device)

    angle = uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES) * (math.pi / 180)
    scale = uniform(*SCALE_RANGE)
    # Normalised coordinates span 2, so a shift of 0.2 of the side is 0.4.
    shift = uniform(-2 * MAX_TRANSLATION, 2 * MAX_TRANSLATION, 2)
    return affine_warp(x, angle, scale, shift)


class Exemplar(PretextModule):
    """Exemplar CNN (Dosovitskiy et al. 2016): classify surrogate classes of transformed seed patches."""

    trained_tap = "pool5"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.num_classes = self.options.exemplar_classes
        if self.num_classes < 2:
            raise UserInputError(f"--exemplar-classes {self.num_classes}: expected at least 2")
        channels = self.encoder.tap_channels(self.tap)
        self.classifier = pooled_classifier(channels, self.width(512), self.num_classes)
        self.batch_labels: torch.Tensor | None = None

    def training_dataset(self, dataset: Any) -> Any:
        return SeedItems(dataset, self.num_classes, self.seed)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> torch.Tensor:
        """Keep the batch's surrogate classes for :meth:`pretext_step`; return its images."""
        self.batch_labels = batch["index"].long()
        return super().on_after_batch_transfer(batch, dataloader_idx)

    def pretext_step(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels, self.batch_labels = self.batch_labels, None  # one batch's classes serve one step
        if labels is None or labels.shape != (x.shape[0],):
            raise RuntimeError(
                "Exemplar.pretext_step: call on_after_batch_transfer with the batch's classes first"
            )
        views = random_affine(x, self.generator)
        views = color_jitter(
            views, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, generator=self.generator
        ).clamp(0, 1)
        logits = self.classifier(self.encode(self.prepare(views), [self.tap])[self.tap])
        loss = F.cross_entropy(logits.float(), labels)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return loss, {"accuracy": accuracy}
