"""``histodrl classify`` and ``histodrl probe``: their options (torch-free).

The runs are :mod:`histodrl.downstream.classify` and :mod:`histodrl.downstream.probe`.
"""

from __future__ import annotations

from collections.abc import Sequence

from histodrl.commands.common import (
    ACCELERATORS,
    EncoderOptions,
    RunOptions,
    label_fraction_option,
    source_kind,
)
from histodrl.commands.options import (
    at_least,
    greater,
    option,
    options_class,
    with_values,
    within,
)
from histodrl.errors import UserInputError

_DATA_HELP = (
    "pcam:DIR (the PCam HDF5 files) or folder:DIR with one subfolder per class (or train/, val/, "
    "test/ folders each holding the class folders)"
)
#: ``--crop`` when not given, by source kind: PCam's patches are 96 px; class-folder data sets
#: (LC25000, NCT-CRC-HE) are mostly 224 px tiles, kept at their own scale.
DEFAULT_CROPS = {"pcam": 96, "folder": 224}
FALLBACK_CROP = 224
#: Split fractions of a folder without split folders (those of
#: :func:`histodrl.data.labelled.classification_source`; this module does not import torch).
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_TEST_FRACTION = 0.2
_CLS = "classification"
PROBE_BLOCKS = ("conv1", "conv2", "conv3", "conv4", "conv5")
DEFAULT_BLOCKS = "conv2,conv3,conv4"
PROBE_PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")


@options_class
class LabelledOptions(EncoderOptions):
    data: str = option(help=_DATA_HELP, group="labels")
    label_fraction: float = label_fraction_option()
    cache_ram: bool = option(
        False, help="read the PCam splits into memory", runtime=True, group="labels"
    )
    crop: int | None = option(
        None,
        help="side of the square tile the network sees: tiles of any size are resized (shorter "
        "side to PX) and centre-cropped to PX x PX (default: 96 for pcam, whose patches "
        "are 96 px; 224 for folder)",
        check=at_least(32),
        metavar="PX",
        group="labels",
    )
    split_seed: int = option(
        0,
        help="folder: seed of the class-stratified train/val/test split of a DIR without train/ "
        "val/ test/ folders; keep it fixed across runs on one data set (it is not --seed)",
        check=at_least(0),
        group="labels",
    )
    val_fraction: float = option(
        DEFAULT_VAL_FRACTION,
        help="folder: share of each class held out for validation (model selection) when DIR "
        "has no val/ folder",
        check=within(0, 1, high_open=True),
        group="labels",
    )
    test_fraction: float = option(
        DEFAULT_TEST_FRACTION,
        help="folder: share of each class held out for the test when DIR has no test/ folder",
        check=within(0, 1, high_open=True),
        group="labels",
    )

    def check_options(self) -> None:
        if self.val_fraction + self.test_fraction >= 1:
            raise UserInputError(
                f"--val-fraction {self.val_fraction:g} and --test-fraction "
                f"{self.test_fraction:g}: expected a sum below 1 (some images must stay for "
                "training)"
            )
        if source_kind(self.data) == "pcam" and self.crop not in (None, DEFAULT_CROPS["pcam"]):
            raise UserInputError(
                f"--crop {self.crop}: pcam: patches are 96x96 and their label is defined by the "
                "centre 32x32 (--crop resizes folder: tiles; leave it out for pcam)"
            )

    @property
    def tile_size(self) -> int:
        """``--crop``, or its default for the kind of ``--data`` (:data:`DEFAULT_CROPS`)."""
        if self.crop is not None:
            return int(self.crop)
        return DEFAULT_CROPS.get(source_kind(self.data), FALLBACK_CROP)

    def resolved(self) -> LabelledOptions:
        """The options with ``--crop`` filled in for the data (a new run records it)."""
        return self if self.crop is not None else with_values(self, crop=self.tile_size)


@options_class
class ClassifyOptions(RunOptions, LabelledOptions):
    label_count: int | None = option(
        None,
        help="train on exactly N labelled training tiles instead of a fraction: a seeded, "
        "class-stratified subset (at least one per class), the same for every --init at one "
        "--seed",
        check=at_least(1),
        metavar="N",
        group="labels",
    )
    epochs: float = option(
        30.0, help="passes over the labelled subset", check=greater(0), group=_CLS
    )
    min_steps: int = option(
        1000, help="train at least this many steps", check=at_least(0), group=_CLS
    )
    max_steps: int | None = option(
        None, help="train at most this many steps", check=at_least(1), group=_CLS
    )
    batch_size: int = option(
        128,
        help="per process; capped by the subset (BatchNorm needs 2)",
        check=at_least(2),
        group=_CLS,
    )
    lr: float = option(1e-3, help="Adam learning rate", check=greater(0), group=_CLS)
    dropout: float = option(
        0.5, help="dropout before the Linear layer", check=within(0, 1, high_open=True), group=_CLS
    )
    val_every: int | None = option(
        None,
        help="steps between validations (default: 20 per run)",
        check=at_least(1),
        group=_CLS,
    )

    def check_options(self) -> None:
        super().check_options()
        if self.label_count is not None and self.label_fraction != 1.0:
            raise UserInputError(
                f"--label-count {self.label_count} and --label-fraction {self.label_fraction:g}: "
                "expected one of them"
            )


def parse_blocks(blocks: str | Sequence[str]) -> list[str]:
    """Block names from ``--blocks``: ``"conv2,conv3,conv4"`` or ``"2,3,4"`` (or a list of them).

    Returns:
        Canonical names (``conv2`` ...) in the order given, repeats dropped.

    Raises:
        UserInputError: an empty list or an unknown name (the message lists the known ones).
    """
    items = blocks.split(",") if isinstance(blocks, str) else [str(b) for b in blocks]
    names: list[str] = []
    for item in items:
        text = item.strip().lower()
        name = f"conv{text}" if text.isdigit() else text
        if name not in PROBE_BLOCKS:
            raise UserInputError(
                f"--blocks {item.strip()!r}: unknown block (expected some of "
                f"{', '.join(PROBE_BLOCKS)}, e.g. {DEFAULT_BLOCKS})"
            )
        if name not in names:
            names.append(name)
    if not names:
        raise UserInputError(
            f"--blocks {blocks!r}: expected at least one block, e.g. {DEFAULT_BLOCKS}"
        )
    return names


@options_class
class ProbeOptions(LabelledOptions):
    blocks: str = option(
        DEFAULT_BLOCKS,
        help="blocks to probe: conv1..conv5 or 1..5, comma-separated (default: conv2,conv3,conv4)",
    )
    out: str = option(help="run folder to write", metavar="RUN", runtime=True)
    seed: int = option(0, help="seed of the subset and the probes", check=at_least(0))
    epochs: int = option(30, help="epochs of each linear classifier", check=at_least(1))
    batch_size: int = option(256, help="batch of the linear classifiers", check=at_least(1))
    lr: float = option(1e-3, help="Adam learning rate", check=greater(0))
    accelerator: str = option(
        "auto", help="cpu, gpu or auto (one device)", choices=ACCELERATORS, runtime=True
    )
    precision: str | None = option(
        None,
        help="trunk precision (default: bf16-mixed on GPU, else 32-true)",
        choices=PROBE_PRECISIONS,
    )
    num_workers: int | None = option(
        None, help="DataLoader workers (default: min(4, CPUs))", check=at_least(0), runtime=True
    )

    def check_options(self) -> None:
        super().check_options()
        parse_blocks(self.blocks)

    @property
    def block_list(self) -> list[str]:
        return parse_blocks(self.blocks)
