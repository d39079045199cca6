"""histodrl.downstream.segment_model: the U-Net on the --arch trunk and its LightningModule."""

import pytest
import torch
from torch import nn

from histodrl.commands.options import to_config
from histodrl.commands.segment import SegmentOptions
from histodrl.downstream.segment_model import (
    MIN_DECODER_WIDTH,
    POLY_POWER,
    SegmentationModule,
    build_unet,
)
from histodrl.nn import vgg19_bn
from histodrl.nn.unet import DEFAULT_DECODER_WIDTHS
from histodrl.runs.sampling import derive_seed

pytestmark = pytest.mark.usefixtures("one_thread")


def _options(**changes) -> SegmentOptions:
    return SegmentOptions(data="glas:unused", out="unused", width=0.125, crop=64, **changes)


def test_the_encoder_is_the_seeded_vgg19_bn_trunk():
    unet = build_unet("vgg19_bn", 0.125, contour=False, seed=3)
    trunk = vgg19_bn(width=0.125, generator=torch.Generator().manual_seed(derive_seed(3, "enc")))
    for key, value in trunk.state_dict().items():
        torch.testing.assert_close(unet.encoder.state_dict()[key], value)


def test_arch_vgg19_builds_a_trunk_without_batch_norm():
    unet = build_unet("vgg19", 0.125, contour=True, seed=0).eval()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in unet.encoder.modules())
    assert unet(torch.zeros(1, 3, 64, 64)).shape == (1, 2, 64, 64)


def test_decoder_blocks_keep_a_minimum_width():
    unet = build_unet("vgg19_bn", 0.125, contour=False, seed=0)
    assert min(unet.decoder_widths) == MIN_DECODER_WIDTH
    full = build_unet("vgg19_bn", 1.0, contour=False, seed=0)
    assert full.decoder_widths == DEFAULT_DECODER_WIDTHS  # METHOD.md's (256, 128, 64, 32, 16)


def test_module_saves_the_options_and_the_run_length():
    options = _options(lr=0.01)
    module = SegmentationModule(options, total_steps=40)
    assert dict(module.hparams) == to_config(options, {"total_steps": 40})


def test_poly_schedule_decays_to_zero_at_the_last_step():
    module = SegmentationModule(_options(lr=0.01), total_steps=10)
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    for step in (0, 4, 10):
        assert scheduler.lr_lambdas[0](step) == pytest.approx((1 - step / 10) ** POLY_POWER)
    constant = SegmentationModule(_options(schedule="constant"), total_steps=10)
    assert isinstance(constant.configure_optimizers(), torch.optim.SGD)
