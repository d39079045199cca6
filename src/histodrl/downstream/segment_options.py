"""Command-line options of ``histodrl segment`` and their defaults.

Kept free of torch imports so that building the parser (every ``histodrl`` call) stays fast. The
defaults are the paper's values where it gives one (SGD, lr 0.005, batch 2, crop 256; BIBM 2020
section IV-A.2) and METHOD.md (f) otherwise (momentum 0.9, weight decay 5e-4).
"""

from __future__ import annotations

import argparse
from typing import Any

from histodrl.pretext.options import add_training_arguments

DEFAULT_EPOCHS = 100.0
"""Training length in passes over the full training set's image count (see ``--epochs``)."""


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number in (0, 1]") from exc
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number in (0, 1]")
    return value


def add_segment_arguments(p: argparse.ArgumentParser) -> None:
    """Add every option of ``histodrl segment`` to ``p``."""
    p.add_argument("--data", required=True, help="glas:DIR, a GLaS folder (train, testA, testB)")
    p.add_argument(
        "--init",
        default="random",
        help="encoder weights: random, a pretraining RUN folder, FILE.safetensors, or "
        "imagenet:FILE (torchvision's vgg19_bn .pth) (default: random)",
    )
    p.add_argument(
        "--label-fraction",
        type=_fraction,
        default=1.0,
        help="fine-tune on a seeded subset holding this fraction of the training images (default 1)",
    )
    add_training_arguments(p)

    g = p.add_argument_group("training")
    g.add_argument(
        "--epochs",
        type=float,
        default=None,
        help="length in epochs of the FULL training set: EPOCHS x (n_train // batch) steps "
        "whatever the label fraction, one random crop per image (default: 100, i.e. 4200 steps "
        "on GLaS at batch 2)",
    )
    g.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="number of steps (with an explicit --epochs: a cap on it)",
    )
    g.add_argument("--batch-size", type=int, default=2, help="crops per step and process (2)")
    g.add_argument("--crop", type=int, default=256, help="training crop and tile side (256)")
    g.add_argument("--lr", type=float, default=0.005, help="SGD learning rate (0.005)")
    g.add_argument(
        "--schedule",
        choices=("poly", "constant"),
        default="poly",
        help="learning-rate schedule: poly, lr (1 - step/steps)^0.9, or constant (default: poly)",
    )
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (0.9)")
    g.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay (5e-4)")
    g.add_argument("--width", type=float, default=1.0, help="channel multiplier (tests: 0.125)")
    g.add_argument(
        "--contour",
        action="store_true",
        help="add a DCAN contour channel; glands are split where the contour is predicted",
    )
    g.add_argument("--contour-width", type=int, default=3, help="contour band depth in px (3)")
    g.add_argument(
        "--dice-weight", type=float, default=0.0, help="weight of a soft Dice loss added to BCE (0)"
    )

    g = p.add_argument_group("inference and evaluation")
    g.add_argument("--threshold", type=float, default=0.5, help="probability threshold (0.5)")
    g.add_argument(
        "--min-object-area", type=int, default=100, help="remove objects under this area in px"
    )
    g.add_argument("--overlap", type=float, default=0.5, help="sliding-window tile overlap (0.5)")
    g.add_argument("--tile-batch", type=int, default=8, help="tiles per inference batch (8)")
    g.add_argument("--figures", type=int, default=4, help="overlay figures in the report (4)")


def segment_defaults() -> dict[str, Any]:
    """Every option's default as a dict keyed by destination name (``label_fraction``, ...).

    For library callers (experiments) that build an options dict for
    :func:`histodrl.downstream.segment.run_segment`; ``data`` and ``out`` must still be given.
    """
    p = argparse.ArgumentParser(add_help=False)
    add_segment_arguments(p)
    return {a.dest: a.default for a in p._actions if a.dest != argparse.SUPPRESS}
