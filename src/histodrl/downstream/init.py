"""Where a downstream model's encoder weights come from: ``--init random|RUN|FILE|imagenet:FILE``.

Only the trunk (``features.*``, torchvision names) is ever transferred; FEM, discriminators and
decoders of the pretext methods are not.
"""

from __future__ import annotations

from pathlib import Path

import torch
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


def _checkpoint_trunk(path: Path) -> dict[str, torch.Tensor]:
    """The trunk's tensors (``features.*``) in a pretraining checkpoint, read in memory."""
    from histodrl.runs.trainer import load_checkpoint_file

    state = load_checkpoint_file(path).get("state_dict") or {}
    trunk = {
        k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.features.")
    }
    if not trunk:
        raise UserInputError(f"{path}: holds no encoder (is it a histodrl pretraining checkpoint?)")
    return trunk


def _run_progress(run: Path) -> tuple[int, int | None]:
    """(step of the run's last checkpoint, its planned total steps or None when unknown)."""
    import yaml

    from histodrl.runs.layout import CONFIG_FILE
    from histodrl.runs.trainer import checkpoint_step

    step = checkpoint_step(last_checkpoint(run))
    total = None
    config = run / CONFIG_FILE
    if config.is_file():
        data = yaml.safe_load(config.read_text()) or {}
        if isinstance(data, dict) and isinstance(data.get("total_steps"), int):
            total = int(data["total_steps"])
    return step, total


def init_weights(spec: str) -> Path | dict[str, torch.Tensor] | None:
    """What an ``--init`` value names: a weight file, the trunk's tensors, or ``None`` (random).

    A pretraining run folder gives its ``encoder.safetensors`` once the run has finished. A run
    that stopped before its last step is refused (its weights are partial) unless the checkpoint
    itself is named (``--init RUN/checkpoints/last.ckpt``); a finished run without an exported
    encoder gives the trunk of its checkpoint. Nothing is ever written into the run.
    """
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
        if last_checkpoint(path).is_file():
            step, total = _run_progress(path)
            if total is not None and step < total:
                raise UserInputError(
                    f"{path}: pretraining stopped at step {step} of {total} (finish it with "
                    f"histodrl pretrain --resume --out {path}, or pass --init "
                    f"{last_checkpoint(path)} to start from its partial weights)"
                )
            if not encoder.is_file():
                return _checkpoint_trunk(last_checkpoint(path))
        if encoder.is_file():
            return encoder
        raise UserInputError(
            f"{path}: no {ENCODER_FILE} and no checkpoints/last.ckpt (is it a pretraining run?)"
        )
    if path.is_file():
        if path.suffix == ".ckpt":
            return _checkpoint_trunk(path)
        return path
    raise UserInputError(
        f"--init {spec!r}: expected 'random', a run folder, a .safetensors file, a .ckpt or "
        "imagenet:FILE"
    )


def load_init(encoder: nn.Module, spec: str) -> str:
    """Load the weights named by ``spec`` into ``encoder`` (a VGG trunk); returns a description.

    Files are read by :func:`histodrl.nn.load_encoder`, the one encoder reader (safetensors, or
    ``torch.load(weights_only=True)`` for torchvision's ``.pth``), for the trunk's own width and
    batch-norm setting; a mismatch names the file and the width the weights need.
    """
    from histodrl.nn import load_encoder

    source = init_weights(spec)
    if source is None:
        return describe_init(spec)
    loaded = load_encoder(source, width=encoder.width, batch_norm=encoder.batch_norm)
    encoder.load_state_dict(loaded.state_dict())
    return describe_init(spec)
