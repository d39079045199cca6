"""The local (per-location) discriminator and the prior discriminator of DRL.

METHOD.md (c) "Local discriminator D" and (b) "Prior matching term"; both follow DIM
(Hjelm et al., ICLR 2019): the concat-and-convolve critic of its first commit and the 1000-200-1
prior MLP of ``cortex_DIM/models/prior_matching.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from histodrl.nn.init import pytorch_default_init_


def _check_positive_ints(name: str, values: Sequence[int]) -> tuple[int, ...]:
    values = tuple(values)
    if len(values) == 0 or any(
        isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values
    ):
        raise ValueError(f"{name}={values!r}: expected a non-empty sequence of positive ints")
    return values


class LocalDiscriminator(nn.Module):
    """Concat-and-convolve local discriminator D: one logit per spatial location.

    METHOD.md (c) and E6: ``Conv(Cin -> 512) + ReLU -> Conv(512 -> 256) + ReLU ->
    Conv(256 -> 256) + ReLU -> Conv(256 -> 1)``, all with bias, no BatchNorm and no sigmoid: the
    output is the raw logit T used by the JSD estimator (eq. 4, METHOD.md (b)).

    The input may be given in parts that are conceptually concatenated along channels, e.g.
    ``D(e, f)`` for ``D(cat([e, f], 1))``. The first conv is then evaluated as a sum of convs on the
    parts, using the matching channel slices of its single weight, which is mathematically the same
    as convolving the concatenation but never materialises it (the concatenation would be
    (N, C1 + C2, M, M) twice per step). A part may also be spatially (N, C, 1, 1): with 1x1
    kernels its first-layer contribution is computed once per image and broadcast over M x M,
    which is identical to tiling the vector over the map (the no-FEM ablation E9, and the DIM
    baseline's tiled global vector).

    Args:
        in_channels: total input channels Cin (C1 + C2 for DRL).
        widths: output channels of the hidden conv blocks; the paper's (512, 256, 256).
        kernel_size: odd kernel size of the hidden blocks (padding ``kernel_size // 2``); the final
            projection to one channel is always 1x1. METHOD.md keeps 1 as the default; 3 is the
            "fully convolutional" option. With kernel_size > 1, a (N, C, 1, 1) part is expanded to
            the full map before the first conv, because zero padding makes a tiled map's
            convolution differ from the broadcast one at the border.
        generator: random source for the initial weights (PyTorch's default scheme); ``None``
            uses the global RNG.

    Shape:
        - Parts: (N, C_j, H, W) or (N, C_j, 1, 1), with ``sum_j C_j == in_channels``.
        - Output: (N, 1, H, W) logits.

    Raises:
        ValueError: at construction for non-positive sizes or an even kernel size; in ``forward``
            if the parts' channels do not add up to ``in_channels`` or their sizes do not broadcast.
    """

    def __init__(
        self,
        in_channels: int,
        widths: Sequence[int] = (512, 256, 256),
        kernel_size: int = 1,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        (in_channels,) = _check_positive_ints("in_channels", [in_channels])
        widths = _check_positive_ints("widths", widths)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
            raise ValueError(f"kernel_size={kernel_size!r}: expected a positive odd int")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={kernel_size}: expected an odd int (same-size output)")
        self.in_channels = in_channels
        self.kernel_size = kernel_size
        layers: list[nn.Module] = []
        channels = in_channels
        for width in widths:
            layers.append(nn.Conv2d(channels, width, kernel_size, padding=kernel_size // 2))
            layers.append(nn.ReLU(inplace=True))
            channels = width
        layers.append(nn.Conv2d(channels, 1, kernel_size=1))
        self.layers = nn.Sequential(*layers)
        if generator is not None:
            pytorch_default_init_(self, generator)

    def forward(self, *parts: torch.Tensor) -> torch.Tensor:
        """D(cat(parts, dim=1)) without building the concatenation; see the class docstring."""
        if len(parts) == 0:
            raise ValueError("LocalDiscriminator: expected at least one input tensor")
        channels = [p.shape[1] for p in parts]
        if sum(channels) != self.in_channels:
            raise ValueError(
                f"input channels {channels} add up to {sum(channels)}: expected {self.in_channels}"
            )
        if len(parts) == 1:
            return self.layers(parts[0])
        try:
            # Channels are concatenated, not broadcast: only batch and spatial sizes must agree.
            size = torch.broadcast_shapes(*((p.shape[0], 1, *p.shape[2:]) for p in parts))
        except RuntimeError as exc:
            shapes = [tuple(p.shape) for p in parts]
            raise ValueError(f"input shapes {shapes}: expected broadcastable shapes") from exc
        first: nn.Conv2d = self.layers[0]  # type: ignore[assignment]
        if self.kernel_size > 1:
            parts = tuple(p.expand(p.shape[0], p.shape[1], *size[-2:]) for p in parts)
        offsets = [sum(channels[:j]) for j in range(len(parts))]
        # Full-size parts first, so that broadcast (N, C, 1, 1) terms are added in place onto them.
        order = sorted(range(len(parts)), key=lambda j: parts[j].shape[-2:] != size[-2:])
        out: torch.Tensor | None = None
        for j in order:
            weight = first.weight[:, offsets[j] : offsets[j] + channels[j]]
            if out is None:
                out = F.conv2d(parts[j], weight, first.bias, 1, first.padding)
                continue
            term = F.conv2d(parts[j], weight, None, 1, first.padding)
            if out.shape == torch.broadcast_shapes(out.shape, term.shape):
                out.add_(term)  # conv2d does not need its output for backward, so in place is safe
            else:
                out = out + term
        return self.layers[2:](F.relu(out, inplace=True))

    def forward_shared(self, local: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        """D on ``k`` groups of pairs that share their second part: ``D(local, shared.repeat(k))``.

        DRL scores (e, f) and (ê, f), DIM (e_i, g_i) and (e_(i+1), g_i): the positives and the
        negatives share F(x) (or the global vector). Its first-layer term is computed once and added
        to every group, instead of once per group; the result is identical.

        Shape:
            - local: (k·N, C1, H, W), the groups stacked along the batch.
            - shared: (N, C2, H, W) or (N, C2, 1, 1), with ``C1 + C2 == in_channels``.
            - Output: (k·N, 1, H, W) logits.
        """
        n = shared.shape[0]
        if n == 0 or local.shape[0] % n != 0:
            raise ValueError(
                f"local batch {local.shape[0]} is not a whole number of groups of {n} (shared)"
            )
        c1 = local.shape[1]
        if c1 + shared.shape[1] != self.in_channels:
            raise ValueError(
                f"input channels {[c1, shared.shape[1]]} add up to {c1 + shared.shape[1]}: "
                f"expected {self.in_channels}"
            )
        first: nn.Conv2d = self.layers[0]  # type: ignore[assignment]
        if self.kernel_size > 1:
            shared = shared.expand(n, shared.shape[1], *local.shape[-2:])
        own = F.conv2d(local, first.weight[:, :c1], first.bias, 1, first.padding)
        common = F.conv2d(shared, first.weight[:, c1:], None, 1, first.padding)
        groups = own.reshape(-1, n, *own.shape[1:]) + common.unsqueeze(0)
        out = groups.reshape(own.shape).contiguous(memory_format=_memory_format(own))
        return self.layers[2:](F.relu(out, inplace=True))


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class PriorDiscriminator(nn.Module):
    """Prior discriminator Dp: MLP ``in -> 1000 -> ReLU -> 200 -> ReLU -> 1``, no BatchNorm.

    METHOD.md (b) "Prior matching term" and E15, after DIM's ``prior_matching.py``. It scores
    whether a vector is a sample of the uniform prior U[0, 1]^C (real) or the encoder's
    ``sigmoid(h)`` (fake), h a global vector that can be negative (METHOD.md (b), corrected);
    the output is a raw logit.

    Args:
        in_features: C, the length of the matched vector (C2 for DRL).
        hidden: widths of the hidden layers; DIM's (1000, 200).
        generator: random source for the initial weights (PyTorch's default scheme); ``None``
            uses the global RNG.

    Shape:
        - Input: (N, C).
        - Output: (N,) logits.

    Raises:
        ValueError: at construction for non-positive sizes; in ``forward`` if the input is not
            (N, in_features).
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (1000, 200),
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        (in_features,) = _check_positive_ints("in_features", [in_features])
        hidden = _check_positive_ints("hidden", hidden)
        self.in_features = in_features
        layers: list[nn.Module] = []
        features = in_features
        for width in hidden:
            layers += [nn.Linear(features, width), nn.ReLU(inplace=True)]
            features = width
        layers.append(nn.Linear(features, 1))
        self.layers = nn.Sequential(*layers)
        if generator is not None:
            pytorch_default_init_(self, generator)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(N, C) -> (N,) logits."""
        if z.ndim != 2 or z.shape[1] != self.in_features:
            raise ValueError(f"input shape {tuple(z.shape)}: expected (N, {self.in_features})")
        return self.layers(z).squeeze(1)
