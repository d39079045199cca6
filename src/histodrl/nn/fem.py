"""The Feature Enhance Module (FEM) of DRL, and the global projection used where there is no FEM.

Paper section III-C and eq. 5; METHOD.md (c) "FEM" and E7. The FEM widens the receptive field of the
tapped encoder map so that the largest branch sees more than the whole M x M map, which is what the
global-context branch of the local discriminator needs.

Global vectors (METHOD.md (b), "Correction (measured)"): the GCH descriptor ``L2norm(GAP(.))`` and
the prior vector ``sigmoid(GAP(.))`` must come from an output that can be negative. A post-ReLU map
gives non-negative pools, hence cosines >= 0 between any two images and prior coordinates >= 0.5,
which the prior discriminator rejects by a trivial rule. With the FEM they are pooled from
:meth:`FeatureEnhanceModule.preactivation` (the BN output before the final ReLU); without it (DRL's
no-FEM ablation E9, the DIM baseline) :class:`GlobalProjection` maps the pooled post-ReLU tap to a
vector of either sign.
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
    - channels_last: with a channels_last input (what the trunk gives DRL) the output is
      channels_last, and the gradient that reaches the BatchNorm is handed to it channels_last
      too, whatever layout the consumers of the pre-activation returned it in (a mixed-layout
      BatchNorm backward is a slow path on a CPU; see ``_channels_last_grad``).

    Args:
        in_channels: C1, channels of the tapped encoder map.
        M: side of the map the module is built for; sets the branch count and rates via
            :func:`fem_dilations`. Other input sizes are accepted at run time.
        branch_channels: c_b, output channels of each branch (METHOD.md default 128).
        clamp: cap rates at ``M - 1`` (see :func:`fem_dilations`).
        generator: random source for the initial conv weights (PyTorch's default scheme);
            ``None`` uses the global RNG.

    The pre-activation map (the BN output before the ReLU) is available from
    :meth:`preactivation` and :meth:`forward_with_preactivation`: DRL pools its global descriptor
    and its prior vector from it, because the post-ReLU output is non-negative everywhere
    (METHOD.md (b), "Correction (measured)").

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

    def preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """The concatenated branch outputs after BN and before the final ReLU: (N, k * c_b, H, W).

        Unlike :meth:`forward` its values can be negative. In training mode each channel has mean
        ``bn.bias`` over the batch and the M x M grid (0 at initialisation), so its per-image global
        average pool lies on both sides of ``bn.bias``: DRL takes its global descriptor and its prior
        vector from here (METHOD.md (b), "Correction (measured)").
        """
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
        out = self.bn(torch.cat(outputs, dim=1))
        if out.requires_grad and _is_channels_last(out) and not torch.compiler.is_compiling():
            out.register_hook(_channels_last_grad)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C1, H, W) -> (N, k * c_b, H, W), non-negative; see the class docstring."""
        return F.relu(self.preactivation(x), inplace=True)

    def forward_with_preactivation(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(forward(x), preactivation(x))`` from one pass; the first is ``relu`` of the second.

        The ReLU is taken out of place, so the pre-activation map stays intact (one more map of the
        output's size is kept for the backward pass).
        """
        pre = self.preactivation(x)
        return F.relu(pre), pre


def _is_channels_last(x: torch.Tensor) -> bool:
    cl = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    return cl and not x.is_contiguous()


def _channels_last_grad(grad: torch.Tensor) -> torch.Tensor:
    """The gradient of a channels_last pre-activation, handed to BatchNorm's backward as one.

    In DRL the pre-activation has two consumers (the ReLU, whose output is used through a batch
    slice, and the global average pool), and the gradients they return are in the default layout
    (a slice's backward pads with a default-layout zero tensor, a mean's is an expanded view), so
    their sum would reach BatchNorm's backward as an NCHW gradient of an NHWC input, a slow path
    on a CPU (measured: the FEM's fwd+bwd 7-13 % slower). Reordering the gradient once costs less.
    Not under ``torch.compile``, which chooses the layouts itself.
    """
    return grad.contiguous(memory_format=torch.channels_last)


class GlobalProjection(nn.Module):
    """``Linear(C_in -> C_out, bias=False) -> BatchNorm1d(C_out)``: a global vector of either sign.

    The global head where there is no FEM (DRL's no-FEM ablation E9 and the DIM baseline). Applied to
    ``GAP`` of a post-ReLU map, whose coordinates are all >= 0 and whose directions are nearly
    parallel from image to image (cosines of 0.8-0.95 at initialisation), it gives the vector ``h``
    that DRL L2-normalises into its GCH descriptor and passes through a sigmoid for the prior. It is the
    pooled counterpart of the FEM's ``conv -> BN`` pre-activation: the linear layer is DIM's (whose
    prior sigmoid acts on a linear output), and the BatchNorm centres every coordinate over the batch
    (mean ``bn.bias``, 0 at initialisation), so that at initialisation the descriptors of different
    images already point in different directions (negative cosines) and the prior coordinates lie on
    both sides of 0.5. A linear layer alone would not do it: it maps nearly parallel inputs to nearly
    parallel outputs.

    Args:
        in_features: C_in, channels of the pooled map.
        out_features: C_out; ``None`` keeps C_in.
        generator: random source for the initial weights (PyTorch's default scheme); ``None``
            uses the global RNG.

    Shape:
        - Input: (N, C_in), N >= 2 in training mode (batch statistics).
        - Output: (N, C_out).

    Raises:
        ValueError: if a size is not a positive int.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        out_features = in_features if out_features is None else out_features
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: expected a positive int")
        self.in_features = in_features
        self.out_features = out_features
        self.linear = nn.Linear(in_features, out_features, bias=False)
        self.bn = nn.BatchNorm1d(out_features)
        if generator is not None:
            pytorch_default_init_(self, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in) -> (N, C_out); see the class docstring."""
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"input shape {tuple(x.shape)}: expected (N, {self.in_features})")
        return self.bn(self.linear(x))
