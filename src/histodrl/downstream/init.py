"""Where a downstream model's encoder weights come from: ``--init random|RUN|FILE|imagenet:FILE``.

Only the trunk (``features.*``, torchvision names) is ever transferred; FEM, discriminators and
decoders of the pretext methods are not.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from histodrl.errors import UserInputError

ENCODER_FILE = "encoder.safetensors"


def describe_init(spec: str) -> str:
    """A short human description of an ``--init`` value for reports."""
    if spec == "random":
        return "random initialisation"
    if spec.startswith("imagenet:"):
        return f"ImageNet weights ({spec.removeprefix('imagenet:')})"
    return f"pretrained encoder ({spec})"


def resolve_init_file(spec: str) -> Path | None:
    """The weight file an ``--init`` value points at (None for random); exports a run if needed."""
    if spec == "random":
        return None
    if spec.startswith("imagenet:"):
        path = Path(spec.removeprefix("imagenet:"))
        if not path.is_file():
            raise UserInputError(
                f"{path}: ImageNet weight file not found (torchvision vgg19_bn .pth)"
            )
        return path
    path = Path(spec)
    if path.is_dir():
        encoder = path / ENCODER_FILE
        if not encoder.is_file():
            if (path / "checkpoints" / "last.ckpt").is_file():
                from histodrl.pretext.base import export_run

                export_run(path)
            else:
                raise UserInputError(
                    f"{path}: no {ENCODER_FILE} and no checkpoints/last.ckpt (is it a pretraining run?)"
                )
        return encoder
    if path.is_file():
        return path
    raise UserInputError(
        f"--init {spec!r}: expected 'random', a run folder, a .safetensors file or imagenet:FILE"
    )


def load_init(encoder: nn.Module, spec: str) -> str:
    """Load the weights named by ``spec`` into ``encoder`` (a VGG trunk); returns a description."""
    path = resolve_init_file(spec)
    if path is None:
        return describe_init(spec)
    if spec.startswith("imagenet:"):
        from histodrl.nn import load_torchvision_weights

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UserInputError(f"{path}: not a readable PyTorch weight file ({exc})") from exc
        try:
            load_torchvision_weights(encoder, state)
        except ValueError as exc:
            raise UserInputError(f"{path}: {exc}") from exc
        return describe_init(spec)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise UserInputError(f"{path}: not a readable safetensors file ({exc})") from exc
    state = {k: v for k, v in state.items() if k.startswith("features.")}
    expected = encoder.state_dict()
    for key, value in expected.items():
        if key not in state:
            raise UserInputError(f"{path}: missing {key} (was it exported from a VGG-19 trunk?)")
        if state[key].shape != value.shape:
            raise UserInputError(
                f"{path}: {key} has shape {tuple(state[key].shape)}, expected {tuple(value.shape)} "
                "(does --width match the pretraining width?)"
            )
    encoder.load_state_dict(state)
    return describe_init(str(path))
