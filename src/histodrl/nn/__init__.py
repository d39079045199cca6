"""Network building blocks: VGG-19(-BN) trunk with taps, FEM, discriminators, U-Net, heads, export.

Plain ``torch.nn`` modules and functions with no knowledge of Lightning or the command line.
"""

from histodrl.nn.discriminators import LocalDiscriminator, PriorDiscriminator
from histodrl.nn.encoder_weights import encoder_state_dict, load_encoder, save_encoder
from histodrl.nn.fem import FeatureEnhanceModule, fem_dilations
from histodrl.nn.heads import PatchClassifier, pooled_taps
from histodrl.nn.unet import UNet
from histodrl.nn.vgg import (
    TAP_NAMES,
    VGG,
    build_encoder,
    load_torchvision_weights,
    vgg19,
    vgg19_bn,
)

__all__ = [
    "TAP_NAMES",
    "VGG",
    "FeatureEnhanceModule",
    "LocalDiscriminator",
    "PatchClassifier",
    "PriorDiscriminator",
    "UNet",
    "build_encoder",
    "encoder_state_dict",
    "fem_dilations",
    "load_encoder",
    "load_torchvision_weights",
    "pooled_taps",
    "save_encoder",
    "vgg19",
    "vgg19_bn",
]
