"""``histodrl segment``: its options (torch-free); the run is :mod:`histodrl.downstream.segment`.

Defaults are the paper's values where it gives one (SGD, lr 0.005, batch 2, crop 256; BIBM 2020
section IV-A.2) and METHOD.md (f) otherwise (momentum 0.9, weight decay 5e-4).
"""

from __future__ import annotations

from histodrl.commands.common import EncoderOptions, RunOptions, label_fraction_option
from histodrl.commands.options import (
    at_least,
    greater,
    option,
    options_class,
    with_values,
    within,
)
from histodrl.errors import UserInputError

DEFAULT_EPOCHS = 100.0
"""Training length in passes over the full training set's image count (see ``--epochs``)."""

DEFAULT_SPLIT_SEED = 0
DEFAULT_TEST_FRACTION = 0.2
"""Split defaults of ``masks:`` and ``monuseg:`` sources, the same as pretraining's (so that the
held-out images are the same ones; :mod:`histodrl.data.labelled`)."""

_TRAIN = "training"
_EVAL = "inference and evaluation"


@options_class
class SegmentOptions(RunOptions, EncoderOptions):
    data: str = option(
        help="glas:DIR (train, testA, testB), masks:DIR or monuseg:DIR", group="labels"
    )
    label_fraction: float = label_fraction_option()
    label_count: int | None = option(
        None,
        help="train on exactly N labelled training images instead of a fraction: a seeded "
        "subset (stratified by grade when known), the same for every --init at one --seed",
        check=at_least(1),
        metavar="N",
        group="labels",
    )
    split_seed: int = option(
        DEFAULT_SPLIT_SEED,
        help="masks, monuseg: seed of the train / test split when the folder has no test/ "
        "folder; keep it fixed across runs on one source (and equal to pretraining's) and vary "
        "--seed (GLaS: its official split)",
        check=at_least(0),
        group="labels",
    )
    test_fraction: float = option(
        DEFAULT_TEST_FRACTION,
        help="masks, monuseg: share of the images held out for test when the folder has no "
        "test/ folder (GLaS: its official split)",
        check=within(0, 1, low_open=True, high_open=True),
        group="labels",
    )
    epochs: float | None = option(
        None,
        help="length in epochs of the FULL training set: EPOCHS x (n_train // batch) steps "
        "whatever the label fraction, one random crop per image (default: 100, i.e. 4200 steps "
        "on GLaS at batch 2; with only --max-steps: set by it)",
        check=greater(0),
        group=_TRAIN,
    )
    max_steps: int | None = option(
        None,
        help="number of steps (with an explicit --epochs: a cap on it)",
        check=at_least(1),
        group=_TRAIN,
    )
    batch_size: int = option(2, help="crops per step and process", check=at_least(1), group=_TRAIN)
    crop: int = option(256, help="training crop and tile side", check=at_least(32), group=_TRAIN)
    lr: float = option(0.005, help="SGD learning rate", check=greater(0), group=_TRAIN)
    schedule: str = option(
        "poly",
        help="learning-rate schedule: poly, lr (1 - step/steps)^0.9, or constant (default: poly)",
        choices=("poly", "constant"),
        group=_TRAIN,
    )
    momentum: float = option(0.9, help="SGD momentum", check=within(0, 1), group=_TRAIN)
    weight_decay: float = option(5e-4, help="SGD weight decay", check=at_least(0), group=_TRAIN)
    skip_hausdorff: bool = option(
        False,
        help="do not compute the object Hausdorff distance (the slow part of scoring when "
        "predictions are poor: distance transforms per matched pair); metrics.json has null",
        runtime=True,
    )
    contour: bool = option(
        False,
        help="add a DCAN contour channel; glands are split where the contour is predicted",
        group=_TRAIN,
    )
    contour_width: int = option(3, help="contour band depth in px", check=at_least(1), group=_TRAIN)
    dice_weight: float = option(
        0.0, help="weight of a soft Dice loss added to BCE", check=at_least(0), group=_TRAIN
    )
    threshold: float = option(
        0.5, help="probability threshold", check=within(0, 1, high_open=True), group=_EVAL
    )
    min_object_area: int | None = option(
        None,
        help="remove objects under this area in px (default: the source's: 100 for GLaS, 30 "
        "for MoNuSeg nuclei, derived from the training objects for masks)",
        check=at_least(0),
        group=_EVAL,
    )
    overlap: float = option(
        0.5, help="sliding-window tile overlap", check=within(0, 1, high_open=True), group=_EVAL
    )
    tile_batch: int = option(8, help="tiles per inference batch", check=at_least(1), group=_EVAL)
    figures: int = option(4, help="overlay figures in the report", check=at_least(0), group=_EVAL)

    def resolved(self, min_object_area: int | None = None) -> SegmentOptions:
        """The options with the defaults that depend on others filled in: ``epochs`` (unless
        ``--max-steps`` alone sets the length) and, when ``--min-object-area`` was not given,
        ``min_object_area`` (the source's default,
        :attr:`histodrl.data.labelled.SegmentationSource.min_object_area`: only the data knows
        it)."""
        changes: dict[str, object] = {}
        if self.epochs is None and self.max_steps is None:
            changes["epochs"] = DEFAULT_EPOCHS
        if self.min_object_area is None and min_object_area is not None:
            changes["min_object_area"] = int(min_object_area)
        return with_values(self, **changes) if changes else self

    def check_options(self) -> None:
        if self.label_count is not None and self.label_fraction != 1.0:
            raise UserInputError(
                f"--label-count {self.label_count} and --label-fraction {self.label_fraction:g}: "
                "expected one of them"
            )
        if self.crop % 32:
            raise UserInputError(
                f"--crop {self.crop}: expected a multiple of 32 (the U-Net halves it 5 times)"
            )
