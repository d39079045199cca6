"""``histodrl label-efficiency``: its options (torch-free); the study is
:mod:`histodrl.experiments.label_efficiency`.

``--methods`` and ``--labels`` are comma-separated lists, read by :func:`parse_methods` and
:func:`parse_labels` (a list of integers is label counts, a list of decimals label fractions).
"""

from __future__ import annotations

from dataclasses import dataclass

from histodrl.commands.common import ACCELERATORS
from histodrl.commands.options import at_least, option, options_class, within
from histodrl.errors import UserInputError
from histodrl.pretext.options import METHODS, PRESETS

#: ``--methods`` entry that means "no pretraining" (a randomly initialised trunk).
RANDOM = "random"
SCALE_NAMES = ("smoke", "cpu", "paper")
DEFAULT_METHODS = "drl,dim,random"


def parse_methods(text: str) -> tuple[str, ...]:
    """``"drl,dim,random"`` -> ``("drl", "dim", "random")``; each a pretraining method or random.

    Raises:
        UserInputError: an empty list, an unknown method or a repeated one.
    """
    known = [*sorted(METHODS), RANDOM]
    names = [t.strip().lower() for t in str(text).split(",") if t.strip()]
    if not names:
        raise UserInputError(f"--methods {text!r}: expected a comma-separated list, e.g. drl,dim")
    for name in names:
        if name not in known:
            raise UserInputError(
                f"--methods {name}: unknown method (expected some of {', '.join(known)})"
            )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserInputError(f"--methods {text}: {repeated[0]} is given twice")
    return tuple(names)


@dataclass(frozen=True, order=True)
class Budget:
    """A label budget: ``count`` labelled training images (tiles), or a ``fraction`` of them.

    Attributes:
        kind: ``"count"`` or ``"fraction"``.
        value: the count (an integer >= 1) or the fraction (in (0, 1]).
    """

    kind: str
    value: float

    @property
    def folder(self) -> str:
        """Part of the run folder's name: ``n4`` or ``f0.1``."""
        return f"n{int(self.value)}" if self.kind == "count" else f"f{self.value:g}"

    @property
    def label(self) -> str:
        """``4 labels`` or ``10%``."""
        if self.kind == "count":
            n = int(self.value)
            return f"{n} label" + ("" if n == 1 else "s")
        return f"{self.value * 100:g}%"

    @property
    def text(self) -> str:
        """As typed: ``4`` or ``0.1``."""
        return str(int(self.value)) if self.kind == "count" else f"{self.value:g}"


def parse_labels(text: str) -> tuple[Budget, ...]:
    """``"2,4"`` (label counts) or ``"0.1,0.5"`` (label fractions) -> budgets in increasing order.

    A list of integers (``2``, ``10``) is counts; a list of decimals (``0.1``, ``1.0``) is
    fractions in (0, 1]. The two kinds cannot be mixed (the curve has one x axis).

    Raises:
        UserInputError: an empty list, a value that is not a number, a count below 1, a fraction
            outside (0, 1], mixed kinds or a repeated value.
    """
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise UserInputError(
            f"--labels {text!r}: expected label counts (2,4) or fractions (0.1,0.5)"
        )
    budgets = []
    for item in items:
        if item.isdigit():
            if int(item) < 1:
                raise UserInputError(f"--labels {item}: expected a label count >= 1")
            budgets.append(Budget("count", int(item)))
            continue
        try:
            value = float(item)
        except ValueError:
            raise UserInputError(
                f"--labels {item}: expected a label count (2) or a label fraction (0.1)"
            ) from None
        if not 0 < value <= 1:
            raise UserInputError(f"--labels {item}: expected a label fraction in (0, 1]")
        budgets.append(Budget("fraction", value))
    if len({b.kind for b in budgets}) > 1:
        raise UserInputError(
            f"--labels {text}: expected only label counts (integers) or only fractions (decimals)"
        )
    if len(set(budgets)) < len(budgets):
        raise UserInputError(f"--labels {text}: a budget is given twice")
    return tuple(sorted(budgets))


@options_class
class LabelEfficiencyOptions:
    data: str = option(
        help="labelled KIND:DIR: glas, masks, monuseg (segmentation) or folder (class folders), "
        "pcam (classification)",
        metavar="SOURCE",
    )
    labels: str = option(
        help="label budgets: counts of labelled training images / tiles (2,4) or fractions of "
        "the training split (0.1,0.5)",
        metavar="N,N|F,F",
    )
    out: str = option(help="output folder; finished runs in it are reused", metavar="DIR")
    methods: str = option(
        DEFAULT_METHODS,
        help="pretraining methods to compare, random for no pretraining (default: drl,dim,random)",
    )
    seeds: int = option(5, help="seeds 0..N-1 per method and budget", check=at_least(1))
    pretrain_data: str | None = option(
        None,
        help="KIND:PATH to pretrain on instead of SOURCE's own non-test images (it must not "
        "hold SOURCE's test images)",
        metavar="SOURCE",
    )
    scale: str = option(
        "cpu",
        help="cpu: 1/4-wide trunk, 128 px crops, steps sized for 2 CPU cores (30-60 min for "
        "3 methods x 5 seeds x 2-4 budgets); smoke: 1/8 wide, 64 px, a few steps (tests); "
        "paper: every command's defaults, for a GPU (default: cpu)",
        choices=SCALE_NAMES,
    )
    preset: str = option(
        "histodrl",
        help="DRL / DIM pretraining defaults (pretrain --preset): histodrl = lambda 0.5; paper = "
        "the paper's literal reading, lambda 0.01 for segmentation, 0.5 for classification "
        "(default: histodrl)",
        choices=PRESETS,
    )
    split_seed: int = option(
        0,
        help="masks, monuseg, folder: seed of the train / test split (as segment and classify)",
        check=at_least(0),
    )
    test_fraction: float = option(
        0.2,
        help="masks, monuseg, folder: share of the images held out for scoring when the source "
        "has no test/ folder (default: 0.2)",
        check=within(0, 1, low_open=True, high_open=True),
    )
    val_fraction: float = option(
        0.1,
        help="folder: share of each class held out for model selection (as classify)",
        check=within(0, 1, low_open=True, high_open=True),
    )
    accelerator: str = option("auto", help="cpu, gpu or auto (every run)", choices=ACCELERATORS)
    num_workers: int | None = option(
        None, help="DataLoader workers of every run (default: per scale)", check=at_least(0)
    )
    dry_run: bool = option(
        False, help="print the plan (runs to do and reused) and its estimated time, run nothing"
    )

    def check_options(self) -> None:
        parse_methods(self.methods)
        parse_labels(self.labels)

    @property
    def method_list(self) -> tuple[str, ...]:
        return parse_methods(self.methods)

    @property
    def budgets(self) -> tuple[Budget, ...]:
        return parse_labels(self.labels)
