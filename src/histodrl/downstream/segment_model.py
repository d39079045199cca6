"""The network of ``histodrl segment`` and its LightningModule (training step, optimizer, schedule).

:func:`build_unet`: :class:`histodrl.nn.UNet` on the ``--arch`` trunk (``vgg19_bn`` by default;
skips at conv1_2, conv2_2, conv3_4, conv4_4, conv5_4, centre at pool5; decoder blocks of x2
bilinear upsampling, concatenation and two 3x3 conv-BN-ReLU), one output channel (gland) or two
(gland, contour). :class:`SegmentationModule` fine-tunes all of it with SGD (paper IV-A.2: lr
0.005, batch 2; momentum 0.9 and weight decay 5e-4 are METHOD.md's assumptions), the learning rate
following the "poly" decay ``lr (1 - t/T)^0.9`` by default (``--schedule constant`` keeps it
fixed), with the augmentation of :func:`~histodrl.downstream.segment_data.augment_batch` run on
the device after each batch is transferred.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from histodrl.commands.options import to_config
from histodrl.commands.segment import SegmentOptions
from histodrl.downstream.segment_data import augment_batch
from histodrl.downstream.segment_loss import segmentation_loss
from histodrl.runs.lifecycle import LoaderFromTask
from histodrl.runs.sampling import derive_seed, step_generator

POLY_POWER = 0.9

MIN_DECODER_WIDTH = 8
"""Fewest channels of a decoder block: at width 1/8 the default widths would end in a 2-channel
block, whose ReLUs all die within a few dozen SGD steps (the output then becomes constant)."""


def build_unet(arch: str, width: float, contour: bool, seed: int) -> nn.Module:
    """The U-Net on an ``arch`` trunk (:func:`histodrl.nn.build_encoder`), random from ``seed``.

    One output channel (gland) or two (gland, contour). Decoder widths are METHOD.md's
    (256, 128, 64, 32, 16) times ``width``, at least :data:`MIN_DECODER_WIDTH` (so width 1 is
    exactly METHOD.md's).
    """
    from histodrl.nn import UNet, build_encoder
    from histodrl.nn.unet import DEFAULT_DECODER_WIDTHS

    encoder = build_encoder(
        arch, width=width, generator=torch.Generator().manual_seed(derive_seed(seed, "enc"))
    )
    widths = [max(MIN_DECODER_WIDTH, round(c * width)) for c in DEFAULT_DECODER_WIDTHS]
    decoder_gen = torch.Generator().manual_seed(derive_seed(seed, "decoder"))
    return UNet(
        encoder, out_channels=2 if contour else 1, decoder_widths=widths, generator=decoder_gen
    )


class SegmentationModule(LoaderFromTask, L.LightningModule):
    """The U-Net with its training step, optimizer and device-side augmentation.

    Args:
        options: the run's resolved options (saved in checkpoints as ``config.yaml`` values).
        total_steps: the run's length in optimizer steps (the poly schedule's ``T``).
    """

    def __init__(self, options: SegmentOptions, total_steps: int) -> None:
        super().__init__()
        self.save_hyperparameters(to_config(options, {"total_steps": int(total_steps)}))
        self.options = options
        self.total_steps = int(total_steps)
        self.model = build_unet(options.arch, options.width, options.contour, options.seed)
        self.model.to(memory_format=torch.channels_last)
        self._compiled: Any = None

    def configure_model(self) -> None:
        if self.options.compile and self._compiled is None:
            # Compiled separately so that the state dict keeps the plain model's key names.
            self._compiled = torch.compile(self.model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self._compiled or self.model)(x)

    def on_after_batch_transfer(
        self, batch: dict[str, torch.Tensor], dataloader_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        generator = step_generator(
            self.options.seed, self.global_step, self.global_rank, self.device
        )
        return augment_batch(batch["image"], batch["target"], self.options.crop, generator)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, target = batch
        loss, logs = segmentation_loss(self(x), target, self.options.dice_weight)
        self.log_dict(
            {"train/loss": loss.detach(), **{f"train/{k}": v.detach() for k, v in logs.items()}},
            on_step=True,
            on_epoch=False,
            batch_size=x.shape[0],
        )
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, logger=False)
        # The run's FiniteWatch checks the loss and its terms on the device.
        return {"loss": loss, "terms": {k: v.detach() for k, v in logs.items()}}

    def configure_optimizers(self) -> Any:
        o = self.options
        optimizer = torch.optim.SGD(
            self.model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
        )
        if o.schedule == "constant":
            return optimizer
        total = max(1, self.total_steps)
        # DeepLab's "poly" decay: lr (1 - t / T)^0.9, stepped every optimizer step.
        poly = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: max(0.0, 1 - step / total) ** POLY_POWER
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": poly, "interval": "step"}}
