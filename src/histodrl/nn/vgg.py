"""VGG-19 and VGG-19-BN trunks (Simonyan & Zisserman 2015, cfg "E") with named feature taps.

The ``features`` Sequential is laid out exactly like torchvision's ``vgg19`` / ``vgg19_bn`` so that
parameter and buffer names match (``features.0.weight``, ``features.1.running_mean``, ...). There is
no ``avgpool`` and no ``classifier``: this is the trunk only. Consequently

- a torchvision state dict loads here with :func:`load_torchvision_weights` (``classifier.*`` is
  dropped, every ``features.*`` key and shape is checked), and
- a state dict exported from here loads into torchvision with
  ``torchvision.models.vgg19_bn().load_state_dict(sd, strict=False)``; the only keys reported missing
  are ``classifier.*``.

Taps (METHOD.md (c)) are the end-of-block post-ReLU maps, i.e. the activation just before each
MaxPool, which is where U-Net skips are taken; ``pool5`` is the output of the last MaxPool.

=======  =======  ==============  ==========  =============  ==========
tap      stride   channels (w=1)  vgg19_bn    vgg19          M at 256
=======  =======  ==============  ==========  =============  ==========
conv1_2  1        64              after 5     after 3        256
conv2_2  2        128             after 12    after 8        128
conv3_4  4        256             after 25    after 17       64
conv4_4  8        512             after 38    after 26       32
conv5_4  16       512             after 51    after 35       16
pool5    32       512             after 52    after 36       8
=======  =======  ==============  ==========  =============  ==========
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from histodrl.nn.init import torchvision_init_

# torchvision's cfg "E": an int is a 3x3 conv with that many output channels, "M" a 2x2 MaxPool.
CFG_E: tuple[int | str, ...] = (
    *(64, 64, "M"),
    *(128, 128, "M"),
    *(256, 256, 256, 256, "M"),
    *(512, 512, 512, 512, "M"),
    *(512, 512, 512, 512, "M"),
)

TAP_NAMES: tuple[str, ...] = ("conv1_2", "conv2_2", "conv3_4", "conv4_4", "conv5_4", "pool5")

_TAP_STRIDES = {name: 2**i for i, name in enumerate(TAP_NAMES)}


def scaled_channels(channels: int, width: float) -> int:
    """Channel count of a layer at width multiplier ``width``: ``max(1, round(channels * width))``."""
    return max(1, round(channels * width))


class VGG(nn.Module):
    """VGG-19 trunk (cfg "E") with torchvision-compatible names and named feature taps.

    Args:
        batch_norm: insert ``BatchNorm2d`` after every conv (``vgg19_bn``); METHOD.md recommends it.
        width: channel multiplier; every conv has ``max(1, round(c * width))`` output channels
            (``width=1/8`` gives a tiny trunk for tests). Must be a finite number > 0.
        generator: random source for the initial weights; ``None`` uses the global RNG.

    Initialisation is torchvision's: conv ``kaiming_normal_(fan_out, relu)`` with zero bias,
    BatchNorm weight 1 and bias 0.

    ``forward`` returns pool5. ``channels_last`` works transparently: after
    ``model.to(memory_format=torch.channels_last)`` the outputs are channels_last whatever the
    input's layout, and numerically the same as with the default layout.

    Shape:
        - Input: (N, 3, H, W), H and W at least 32 for pool5 to be non-empty.
        - Output of ``forward``: (N, C, H // 32, W // 32) with ``C = tap_channels("pool5")``.

    Raises:
        ValueError: if ``width`` is not a finite number > 0.
    """

    def __init__(
        self,
        batch_norm: bool = True,
        width: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, (int, float)):
            raise ValueError(f"width={width!r}: expected a number > 0")
        if not (math.isfinite(width) and width > 0):
            raise ValueError(f"width={width!r}: expected a finite number > 0")
        self.batch_norm = bool(batch_norm)
        self.width = float(width)

        layers: list[nn.Module] = []
        tap_index: dict[str, int] = {}
        tap_channels: dict[str, int] = {}
        in_channels = 3
        block = 1
        for item in CFG_E:
            if item == "M":
                # The last module before the pool is the ReLU that ends the block.
                name = _block_end_name(block)
                tap_index[name] = len(layers) - 1
                tap_channels[name] = in_channels
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                block += 1
                continue
            out_channels = scaled_channels(int(item), self.width)
            layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
            if self.batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
            in_channels = out_channels
        tap_index["pool5"] = len(layers) - 1
        tap_channels["pool5"] = in_channels

        self.features = nn.Sequential(*layers)
        self._tap_index = tap_index
        self._tap_channels = tap_channels
        torchvision_init_(self, generator)

    def extra_repr(self) -> str:
        return f"batch_norm={self.batch_norm}, width={self.width:g}"

    def _check_tap(self, name: str) -> None:
        if name not in self._tap_index:
            raise ValueError(f"tap {name!r}: expected one of {', '.join(TAP_NAMES)}")

    def tap_index(self, name: str) -> int:
        """Index in ``features`` of the module whose output is tap ``name`` (METHOD.md (c) table)."""
        self._check_tap(name)
        return self._tap_index[name]

    def tap_channels(self, name: str) -> int:
        """Number of channels of tap ``name`` at this width (64/128/256/512/512/512 at width 1)."""
        self._check_tap(name)
        return self._tap_channels[name]

    def tap_stride(self, name: str) -> int:
        """Down-sampling factor of tap ``name`` relative to the input: 1, 2, 4, 8, 16 or 32."""
        self._check_tap(name)
        return _TAP_STRIDES[name]

    def truncated(self, name: str) -> nn.Sequential:
        """The bare trunk up to and including tap ``name``, sharing this model's modules.

        ``model.truncated("conv4_4")(x)`` equals ``model.forward_taps(x, ["conv4_4"])["conv4_4"]``;
        it is what benchmarks time as "the trunk up to the tap".
        """
        return self.features[: self.tap_index(name) + 1]

    def forward_taps(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Run the trunk only as far as the deepest requested tap and return the tapped maps.

        DRL taps conv4_4, so block 5 is never computed during pre-training.

        Args:
            x: input images.
            names: tap names from :data:`TAP_NAMES`, in any order; repeats are allowed.

        Returns:
            A dict from each requested name to its map, in the order of ``names``.

        Shape:
            - x: (N, 3, H, W)
            - output[name]: (N, tap_channels(name), H // s, W // s) with ``s = tap_stride(name)``.

        Raises:
            ValueError: if ``names`` is empty or holds an unknown tap name.
        """
        if isinstance(names, str):
            names = [names]
        if len(names) == 0:
            raise ValueError("names=[]: expected at least one tap name")
        for name in names:
            self._check_tap(name)
        wanted: dict[int, list[str]] = {}
        for name in names:
            wanted.setdefault(self._tap_index[name], []).append(name)
        last = max(wanted)
        found: dict[str, torch.Tensor] = {}
        for index, module in enumerate(self.features):
            x = module(x)
            for name in wanted.get(index, ()):
                found[name] = x
            if index == last:
                break
        # The module after a tap is a MaxPool, never an in-place op, so tapped tensors stay valid.
        return {name: found[name] for name in names}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return pool5. Shape: (N, 3, H, W) -> (N, tap_channels("pool5"), H // 32, W // 32)."""
        return self.features(x)


def _block_end_name(block: int) -> str:
    # Blocks 1 and 2 have two convs, blocks 3 to 5 have four.
    return f"conv{block}_{2 if block <= 2 else 4}"


def vgg19(width: float = 1.0, generator: torch.Generator | None = None) -> VGG:
    """Plain VGG-19 trunk (no BatchNorm), torchvision ``vgg19`` key names. See :class:`VGG`."""
    return VGG(batch_norm=False, width=width, generator=generator)


def vgg19_bn(width: float = 1.0, generator: torch.Generator | None = None) -> VGG:
    """VGG-19-BN trunk, torchvision ``vgg19_bn`` key names; the project default. See :class:`VGG`."""
    return VGG(batch_norm=True, width=width, generator=generator)


def _is_optional_key(key: str) -> bool:
    # torchvision's published ImageNet files predate BatchNorm's num_batches_tracked buffer;
    # BatchNorm fills it in itself when it is absent.
    return key.endswith(".num_batches_tracked")


def load_torchvision_weights(model: VGG, state_dict: Mapping[str, torch.Tensor]) -> VGG:
    """Load a torchvision ``vgg19`` / ``vgg19_bn`` state dict (or one of ours) into ``model``.

    ``classifier.*`` keys are dropped (the trunk has no classifier). Every other key must be a
    ``features.*`` key of ``model`` with the same shape, and every key of ``model`` must be present,
    except ``*.num_batches_tracked``, which torchvision's ImageNet files do not contain. Values are
    copied (and cast to the model's dtype) in place.

    Args:
        model: the trunk to fill; its ``batch_norm`` and ``width`` must match the weights.
        state_dict: mapping from key to tensor, e.g. ``torch.load(path, weights_only=True)``.

    Returns:
        ``model``, for chaining.

    Raises:
        ValueError: naming the first key (in the model's order, then the file's) that is missing,
            unexpected, or of the wrong shape. ``model`` is left unchanged in that case.
    """
    expected = model.state_dict()
    given = {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}
    for key, value in expected.items():
        if key not in given:
            if _is_optional_key(key):
                continue
            raise ValueError(f"{key}: missing from the state dict")
        shape = tuple(given[key].shape)
        if shape != tuple(value.shape):
            raise ValueError(f"{key}: expected shape {tuple(value.shape)}, found {shape}")
    for key in given:
        if key not in expected:
            raise ValueError(
                f"{key}: unexpected key (not a parameter of this {model.extra_repr()})"
            )
    model.load_state_dict(given, strict=True)
    return model


ENCODER_BUILDERS = {"vgg19_bn": vgg19_bn, "vgg19": vgg19}


def build_encoder(arch: str, width: float = 1.0, generator: torch.Generator | None = None) -> VGG:
    """The trunk named ``arch`` (``vgg19_bn`` or ``vgg19``): the one encoder builder.

    Raises:
        ValueError: an unknown ``arch``.
    """
    if arch not in ENCODER_BUILDERS:
        raise ValueError(f"arch={arch!r}: expected one of {', '.join(ENCODER_BUILDERS)}")
    return ENCODER_BUILDERS[arch](width=width, generator=generator)
