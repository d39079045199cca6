"""The Feature Enhance Module (FEM) of DRL: parallel dilated 3x3 convolutions, concatenated.

Paper section III-C and eq. 5; METHOD.md (c) "FEM" and E7. The FEM widens the receptive field of the
tapped encoder map so that the largest branch sees more than the whole M x M map, which is what the
global-context branch of the local discriminator needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from histodrl.nn.init import pytorch_default_init_


def fem_dilations(M: int, clamp: bool = False) -> list[int]:
    """Dilation rates of the FEM branches for an M x M map.

    There are ``k = ceil(log2 M)`` branches with rates ``r_0 = 1``, ``r_1 = 2`` and
    ``r_i = 6 * 2**(i - 2)`` for ``i >= 2`` (paper section III-C). The last branch then has an
    effective 3x3 kernel of ``2 r + 1 >= 1.5 M + 1 > M`` pixels (eq. 5).

    Examples (METHOD.md (c)): M=64 -> [1, 2, 6, 12, 24, 48]; M=32 -> [1, 2, 6, 12, 24];
    M=16 -> [1, 2, 6, 12]; M=8 -> [1, 2, 6]; M=12 -> [1, 2, 6, 12].

    Args:
        M: side of the square tapped map, an int >= 2.
        clamp: cap every rate at ``M - 1`` (METHOD.md E7). Without it, for M that is not a power
            of two the last rate can reach M (M = 12, 24, 48), and that branch degenerates to a
            1x1 conv because all its off-centre taps fall in the zero padding. Only the last rate
            can be affected, so clamping never produces duplicate rates.

    Returns:
        The k rates in branch order.

    Raises:
        ValueError: if M is not an int >= 2.
    """
    if isinstance(M, bool) or not isinstance(M, int) or M < 2:
        raise ValueError(f"M={M!r}: expected an int >= 2 (side of the tapped feature map)")
    k = (M - 1).bit_length()  # == ceil(log2 M) exactly, without floating point
    rates = [1, 2, *(6 * 2 ** (i - 2) for i in range(2, k))][:k]
    if clamp:
        rates = [min(r, M - 1) for r in rates]
    return rates


class FeatureEnhanceModule(nn.Module):
    """FEM: k parallel ``Conv3x3(dilation r) -> BN -> ReLU`` branches, concatenated (no fusion).

    Paper section III-C, eq. 5; METHOD.md (c) and E7. Branch i is
    ``Conv2d(in_channels -> branch_channels, 3x3, dilation r_i, padding r_i, bias=False)``
    followed by BatchNorm and ReLU; the outputs are concatenated along channels in branch order,
    so ``out_channels = k * branch_channels`` (C2 = 640 for M = 32 at the default 128).

    Implementation notes (the maths is exactly per-branch BN + ReLU):

    - The branch convs are concatenated once and a single ``BatchNorm2d(k * branch_channels)`` and
      one in-place ReLU are applied. BatchNorm normalises each channel independently, so this is
      identical to one BN per branch (train and eval), with one concatenation instead of k BN/ReLU
      passes followed by a concatenation. ``bn.weight[i*cb:(i+1)*cb]`` is branch i's BN weight.
    - When a rate is at least the runtime height (width), every off-centre kernel row (column) only
      ever reads zero padding, so that branch is computed with the centre row (column) of its
      kernel only. Same result, up to 9x fewer operations (M = 12 at rate 12).

    Args:
        in_channels: C1, channels of the tapped encoder map.
        M: side of the map the module is built for; sets the branch count and rates via
            :func:`fem_dilations`. Other input sizes are accepted at run time.
        branch_channels: c_b, output channels of each branch (METHOD.md default 128).
        clamp: cap rates at ``M - 1`` (see :func:`fem_dilations`).
        generator: random source for the initial conv weights (PyTorch's default scheme);
            ``None`` uses the global RNG.

    Shape:
        - Input: (N, C1, H, W), normally H = W = M.
        - Output: (N, k * c_b, H, W).

    Raises:
        ValueError: if ``in_channels`` or ``branch_channels`` is not a positive int, or M is invalid.
    """

    def __init__(
        self,
        in_channels: int,
        M: int,
        branch_channels: int = 128,
        clamp: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("branch_channels", branch_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: expected a positive int")
        self.dilations = fem_dilations(M, clamp=clamp)
        self.in_channels = in_channels
        self.branch_channels = branch_channels
        self.out_channels = len(self.dilations) * branch_channels
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, branch_channels, 3, padding=r, dilation=r, bias=False)
            for r in self.dilations
        )
        self.bn = nn.BatchNorm2d(self.out_channels)
        if generator is not None:
            pytorch_default_init_(self, generator)

    def extra_repr(self) -> str:
        return f"dilations={self.dilations}, out_channels={self.out_channels}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C1, H, W) -> (N, k * c_b, H, W); see the class docstring."""
        height, width = x.shape[-2:]
        outputs = []
        for conv, r in zip(self.branches, self.dilations):
            weight = conv.weight
            pad_h = pad_w = r
            if r >= height:
                weight, pad_h = weight[:, :, 1:2, :], 0
            if r >= width:
                weight, pad_w = weight[:, :, :, 1:2], 0
            outputs.append(F.conv2d(x, weight, None, 1, (pad_h, pad_w), r))
        return F.relu(self.bn(torch.cat(outputs, dim=1)), inplace=True)
