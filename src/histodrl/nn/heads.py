"""Classification heads on a VGG trunk: the PCam patch classifier and pooled features for probes.

METHOD.md (c) "Downstream models": PCam uses trunk -> global average pooling of pool5 -> dropout ->
Linear(512 -> 2); linear probes apply global average pooling to frozen intermediate taps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from histodrl.nn.init import torchvision_init_
from histodrl.nn.vgg import VGG


def pooled_taps(encoder: VGG, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Globally average-pooled feature maps of the named taps, for linear probes.

    The trunk runs once, only as far as the deepest requested tap. Gradients are kept: wrap the
    call in ``torch.no_grad()`` and put the encoder in ``eval()`` mode to probe a frozen trunk.

    Args:
        encoder: the VGG trunk.
        x: input images.
        names: tap names from :data:`histodrl.nn.vgg.TAP_NAMES`.

    Returns:
        A dict from each name to its pooled features, in the order of ``names``.

    Shape:
        - x: (N, 3, H, W)
        - output[name]: (N, encoder.tap_channels(name))

    Raises:
        ValueError: if ``names`` is empty or holds an unknown tap name.
    """
    taps = encoder.forward_taps(x, names)
    return {name: fmap.mean(dim=(2, 3)) for name, fmap in taps.items()}


class PatchClassifier(nn.Module):
    """Patch classifier: VGG trunk -> global average pool of pool5 -> dropout -> Linear.

    METHOD.md (c), PCam: on 96 x 96 patches pool5 is 3 x 3 x 512, pooled to 512 features. The
    Linear layer starts like torchvision's VGG classifier (weights N(0, 0.01), zero bias).

    Args:
        encoder: the VGG trunk (shared, not copied); ``classifier.encoder`` keys are
            ``encoder.features.N...``.
        num_classes: number of output logits.
        dropout: dropout probability before the Linear layer, in [0, 1).
        generator: random source for the Linear layer's initial weights; ``None`` uses the
            global RNG.

    Shape:
        - Input: (N, 3, H, W), H and W at least 32.
        - Output: (N, num_classes) logits.

    Raises:
        ValueError: if ``num_classes`` < 1 or ``dropout`` is outside [0, 1).
    """

    def __init__(
        self,
        encoder: VGG,
        num_classes: int = 2,
        dropout: float = 0.5,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(encoder, VGG):
            raise ValueError(f"encoder={type(encoder).__name__}: expected a histodrl.nn.VGG")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes={num_classes!r}: expected a positive int")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout!r}: expected a probability in [0, 1)")
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(encoder.tap_channels("pool5"), num_classes)
        torchvision_init_(self.fc, generator)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled pool5 features. Shape: (N, 3, H, W) -> (N, C)."""
        return self.encoder(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, num_classes) logits."""
        return self.fc(self.dropout(self.features(x)))
