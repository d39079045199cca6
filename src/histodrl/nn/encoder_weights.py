"""Encoder weight export and import: VGG trunk <-> torchvision-named state dict / safetensors file.

Exported files hold only ``features.*`` tensors with torchvision's key names, so they load into
``torchvision.models.vgg19_bn()`` with ``load_state_dict(sd, strict=False)`` (only ``classifier.*``
is reported missing) and, conversely, torchvision's own ``vgg19_bn`` ImageNet file loads here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from histodrl.errors import UserInputError
from histodrl.io import atomic_path
from histodrl.nn.vgg import CFG_E, VGG, load_torchvision_weights, scaled_channels

# Files read with torch.load(weights_only=True) instead of safetensors, e.g. torchvision's
# vgg19_bn-c79401a0.pth ImageNet weights.
_TORCH_SUFFIXES = (".pt", ".pth", ".bin")


def encoder_state_dict(vgg: VGG) -> dict[str, torch.Tensor]:
    """The trunk's state dict as independent, contiguous CPU tensors with ``features.*`` keys.

    Tensors are copies (later training does not change them) in the default memory format even
    when the model is channels_last, which is what ``safetensors`` requires. BatchNorm buffers
    (``running_mean``, ``running_var``, ``num_batches_tracked``) are included, as in torchvision.

    Raises:
        ValueError: if ``vgg`` is not a :class:`~histodrl.nn.vgg.VGG`.
    """
    if not isinstance(vgg, VGG):
        raise ValueError(f"vgg={type(vgg).__name__}: expected a histodrl.nn.VGG")
    return {
        key: value.detach().to("cpu").clone(memory_format=torch.contiguous_format)
        for key, value in vgg.state_dict().items()
    }


def save_encoder(
    vgg: VGG, path: str | os.PathLike[str], extra_metadata: dict[str, Any] | None = None
) -> Path:
    """Write :func:`encoder_state_dict` to a ``.safetensors`` file, atomically.

    The file's metadata records ``architecture`` (``vgg19`` or ``vgg19_bn``) and ``width`` for
    people inspecting it, plus ``extra_metadata`` (values JSON-encoded unless they are strings,
    e.g. the pretraining method and step); :func:`load_encoder` relies on the tensors only.

    Returns:
        The path written.
    """
    from safetensors.torch import save_file

    path = Path(path)
    metadata = {
        "format": "pt",
        "architecture": "vgg19_bn" if vgg.batch_norm else "vgg19",
        "width": f"{vgg.width:g}",
    }
    for key, value in (extra_metadata or {}).items():
        metadata[key] = value if isinstance(value, str) else json.dumps(value)
    state = encoder_state_dict(vgg)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserInputError(f"{path}: encoder weights file not found")
    if path.suffix.lower() in _TORCH_SUFFIXES:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for corrupt or unsafe files
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserInputError(f"{path}: not a readable PyTorch state dict ({reason})") from exc
        if not isinstance(state, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise UserInputError(f"{path}: expected a state dict mapping names to tensors")
        return dict(state)
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises SafetensorError, OSError, ...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserInputError(f"{path}: not a readable safetensors file ({reason})") from exc


def _conv_out_channels(state: Mapping[str, torch.Tensor]) -> list[int]:
    """Output channels of the 3x3 conv weights in ``features`` order."""
    convs = []
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "features" and parts[2] == "weight" and value.ndim == 4:
            convs.append((int(parts[1]), int(value.shape[0])))
    return [channels for _, channels in sorted(convs)]


def _describe(state: Mapping[str, torch.Tensor]) -> tuple[bool, float | None] | None:
    """Guess (batch_norm, width) of a trunk state dict; width is None if no width fits all convs."""
    first = state.get("features.0.weight")
    if first is None or first.ndim != 4:
        return None
    batch_norm = "features.1.running_mean" in state
    width = int(first.shape[0]) / 64
    expected = [scaled_channels(int(c), width) for c in CFG_E if c != "M"]
    return batch_norm, (width if _conv_out_channels(state) == expected else None)


def _hint(state: Mapping[str, torch.Tensor], width: float, batch_norm: bool) -> str:
    """A parenthesised suggestion of the ``width`` / ``batch_norm`` the weights need, or ''."""
    guess = _describe(state)
    if guess is None:
        return ""
    file_bn, file_width = guess
    if file_width is None:
        found = int(state["features.0.weight"].shape[0])
        needed = scaled_channels(64, width)
        if found == needed:
            return ""
        return f" (features.0.weight has {found} output channels, width={width:g} needs {needed})"
    hints = []
    if file_bn != batch_norm:
        hints.append(f"batch_norm={file_bn}")
    if [scaled_channels(int(c), width) for c in CFG_E if c != "M"] != _conv_out_channels(state):
        hints.append(f"width={file_width:g}")
    if not hints:
        return ""
    arch = "vgg19_bn" if file_bn else "vgg19"
    return f" (the weights look like {arch} at width={file_width:g}: pass {', '.join(hints)})"


def load_encoder(
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    width: float = 1.0,
    batch_norm: bool = True,
) -> VGG:
    """Build a VGG trunk and fill it with exported weights.

    Args:
        source: a ``.safetensors`` file (read with ``safetensors.torch.load_file``), a
            ``.pt``/``.pth``/``.bin`` state dict file (``torch.load(weights_only=True)``, e.g.
            torchvision's ImageNet ``vgg19_bn`` file), or an in-memory state dict. ``classifier.*``
            keys are ignored; ``num_batches_tracked`` buffers are optional.
        width: channel multiplier the weights were trained with.
        batch_norm: whether the weights are ``vgg19_bn`` (True) or ``vgg19`` (False).

    Returns:
        A :class:`~histodrl.nn.vgg.VGG` in training mode on the CPU, in float32.

    Raises:
        UserInputError: naming the file (or ``state dict``) and the first missing, unexpected or
            mis-shaped key, if the file cannot be read, or if the weights do not fit ``width`` /
            ``batch_norm``; the message suggests the right ``width`` / ``batch_norm`` when the
            file's shapes reveal them.
        ValueError: if ``width`` is not a finite number > 0.
    """
    if isinstance(source, Mapping):
        name, state = "state dict", dict(source)
    else:
        name, state = str(source), _read_state(Path(source))
    model = VGG(batch_norm=batch_norm, width=width)
    try:
        load_torchvision_weights(model, state)
    except ValueError as exc:
        raise UserInputError(f"{name}: {exc}{_hint(state, width, batch_norm)}") from exc
    return model
