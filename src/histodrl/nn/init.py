"""Weight initialisation shared by the network blocks, with an optional explicit ``torch.Generator``.

Two schemes are used:

- :func:`torchvision_init_`: torchvision's VGG initialisation (``torchvision/models/vgg.py``): conv
  weights ``kaiming_normal_(mode="fan_out", nonlinearity="relu")`` with zero bias, BatchNorm weight 1
  and bias 0, Linear weights ``N(0, 0.01)`` with zero bias. Used for the VGG trunk and for layers
  that sit in the same conv-BN-ReLU position (U-Net decoder, classifier head).
- :func:`pytorch_default_init_`: what ``nn.Conv2d`` / ``nn.Linear`` do in ``reset_parameters``
  (``kaiming_uniform_(a=sqrt(5))`` and a bias uniform in ``±1/sqrt(fan_in)``), but drawn from
  ``generator``. Used for the FEM and the discriminators, which have no torchvision counterpart.

With ``generator=None`` both draw from the global RNG, so ``torch.manual_seed`` (or Lightning's
``seed_everything``) makes them reproducible; with a generator they do not touch the global RNG.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_CONV_OR_LINEAR = (nn.Conv2d, nn.Linear)


def torchvision_init_(module: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Initialise every Conv2d, BatchNorm2d and Linear inside ``module`` like torchvision's VGG.

    Args:
        module: the module whose submodules (and itself) are re-initialised in place.
        generator: random source for the conv and linear weights; ``None`` uses the global RNG.

    Returns:
        ``module``, for chaining.
    """
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(
                    m.weight, mode="fan_out", nonlinearity="relu", generator=generator
                )
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01, generator=generator)
                if m.bias is not None:
                    m.bias.zero_()
    return module


def pytorch_default_init_(module: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Re-draw every Conv2d and Linear inside ``module`` with PyTorch's default scheme.

    Identical in distribution to ``reset_parameters`` of ``nn.Conv2d`` and ``nn.Linear``; BatchNorm
    layers are reset to weight 1, bias 0 and fresh running statistics.

    Args:
        module: the module whose submodules (and itself) are re-initialised in place.
        generator: random source; ``None`` uses the global RNG.

    Returns:
        ``module``, for chaining.
    """
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, _CONV_OR_LINEAR):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                if m.bias is not None:
                    fan_in = m.weight[0].numel()
                    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                    nn.init.uniform_(m.bias, -bound, bound, generator=generator)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
    return module
