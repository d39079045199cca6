"""Where a downstream model's encoder weights come from: ``--init random|RUN|FILE|imagenet:FILE``.

Only the trunk (``features.*``, torchvision names) is ever transferred; FEM, discriminators and
decoders of the pretext methods are not.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from histodrl.errors import UserInputError
from histodrl.runs.layout import ENCODER_FILE, last_checkpoint


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
            if last_checkpoint(path).is_file():
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
    """Load the weights named by ``spec`` into ``encoder`` (a VGG trunk); returns a description.

    Files are read by :func:`histodrl.nn.load_encoder`, the one encoder reader (safetensors, or
    ``torch.load(weights_only=True)`` for torchvision's ``.pth``), for the trunk's own width and
    batch-norm setting; a mismatch names the file and the width the weights need.
    """
    from histodrl.nn import load_encoder

    path = resolve_init_file(spec)
    if path is None:
        return describe_init(spec)
    loaded = load_encoder(path, width=encoder.width, batch_norm=encoder.batch_norm)
    encoder.load_state_dict(loaded.state_dict())
    return describe_init(spec if spec.startswith("imagenet:") else str(path))
