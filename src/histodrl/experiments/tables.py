"""The paper's tables and figures as experiment definitions: which encoders, which downstream runs.

An :class:`Experiment` is a list of :class:`Arm`\\ s; an arm is a :class:`Variant` (how its encoder
is obtained: a pretraining method and its options, random init or ImageNet weights) and the
downstream :class:`Task`\\ s run from that encoder. Every arm is run once per seed.

Pretraining data follows the task (paper IV-B): segmentation (and Fig. 5) encoders are pretrained on
GLaS, classification and probe encoders on PCam; λ comes from ``--preset`` (``histodrl``: 0.5 on
both; ``paper``: the paper's 0.01 on GLaS and 0.5 on PCam) unless a variant sets it. A variant that
has both kinds of task (Table IV) therefore has two pretraining runs, ``pretrain-glas`` and
``pretrain-pcam``. The settings of each :class:`Scale` are the options passed to every run.

A variant's options are written as the flags a user would type (``--gch none --no-fem``): that is
how reports and progress lines name them. :func:`pretrain_values` reads them with the options
model into the values of :class:`~histodrl.commands.pretrain.PretrainOptions`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from histodrl.commands import options as om
from histodrl.commands.pretrain import PretrainOptions
from histodrl.errors import UserInputError
from histodrl.experiments.paper_numbers import (
    FIG4B_LAMBDAS,
    TABLE2_TAP_M,
    TABLE3_FRACTIONS,
)
from histodrl.pretext.options import preset_value

EXEMPLAR_CLASSES = 4000  # the pretrain default; capped by the number of pretraining items
TAP_STRIDES: dict[str, int] = {"conv3_4": 4, "conv4_4": 8, "conv5_4": 16, "pool5": 32}
PROBE_BLOCKS: tuple[str, ...] = ("conv2", "conv3", "conv4")


@dataclass(frozen=True)
class Scale:
    """How big every run is.

    Attributes:
        name: ``smoke`` or ``paper``.
        width: channel multiplier of the VGG trunk.
        glas_crop: crop side of GLaS pretraining and segmentation.
        pcam_crop: crop side of PCam pretraining (classification always sees 96 px patches).
        pretrain, segment, classify, probe: extra option values of those commands, as
            ``(field name, value)`` pairs of their options classes.
        num_workers: DataLoader workers (``None``: each command's default).
        fig5_crops: number of test crops embedded for Fig. 5.
        description: one line for the reports.
    """

    name: str
    width: float
    glas_crop: int
    pcam_crop: int
    pretrain: tuple[tuple[str, Any], ...]
    segment: tuple[tuple[str, Any], ...]
    classify: tuple[tuple[str, Any], ...]
    probe: tuple[tuple[str, Any], ...]
    num_workers: int | None
    fig5_crops: int
    description: str


SCALES: dict[str, Scale] = {
    "smoke": Scale(
        name="smoke",
        width=0.125,
        glas_crop=64,
        pcam_crop=32,
        pretrain=(("max_steps", 4), ("log_every", 1)),
        segment=(("max_steps", 4), ("log_every", 1), ("figures", 0)),
        classify=(
            *(("max_steps", 4), ("min_steps", 1), ("batch_size", 16)),
            *(("val_every", 4), ("log_every", 1)),
        ),
        probe=(("epochs", 3),),
        num_workers=0,
        fig5_crops=24,
        description=(
            "smoke: trunk width 1/8, GLaS crops 64 px, PCam pretraining crops 32 px, 4 steps of "
            "pretraining, segmentation and classification (batch 16), probes of 3 epochs; this "
            "tests the harness and says nothing about the method"
        ),
    ),
    "paper": Scale(
        name="paper",
        width=1.0,
        glas_crop=256,
        pcam_crop=96,
        pretrain=(),
        segment=(),
        classify=(),
        probe=(),
        num_workers=None,
        fig5_crops=80,
        description=(
            "paper: full VGG-19-BN, GLaS crops 256 px, PCam 96 px, every command's defaults "
            "(pretraining 200 epochs on GLaS and 20 on PCam, Adam 1e-4, batch 8; segmentation "
            "100 epochs, SGD 0.005, batch 2; classification 30 epochs and at least 1000 steps, "
            "Adam 1e-3, batch 128; probes 30 epochs; METHOD.md E20)"
        ),
    ),
}


@dataclass(frozen=True)
class Variant:
    """Where an arm's encoder comes from.

    Attributes:
        key: folder name under ``runs/`` (unique within an experiment).
        label: the row label in reports.
        init: ``pretrain`` (a pretraining run of ``method``), ``random`` or ``imagenet``.
        method: the ``histodrl pretrain --method`` (``None`` unless ``init == "pretrain"``).
        options: extra pretraining options (``--gch none``, ``--tap conv3_4``, ``--lambda 1``, ...).
        paper: key of the variant in :mod:`histodrl.experiments.paper_numbers`, if any.
    """

    key: str
    label: str
    init: str = "pretrain"
    method: str | None = None
    options: tuple[str, ...] = ()
    paper: str | None = None

    def __post_init__(self) -> None:
        if self.init not in ("pretrain", "random", "imagenet"):
            raise ValueError(f"init={self.init!r}: expected pretrain, random or imagenet")
        if (self.init == "pretrain") != (self.method is not None):
            raise ValueError(f"{self.key}: a method is needed exactly when init is 'pretrain'")

    def describe(self) -> str:
        """``drl --gch none --no-fem``, ``random init``, ``ImageNet weights``."""
        if self.init == "random":
            return "random init"
        if self.init == "imagenet":
            return "ImageNet weights"
        return " ".join([str(self.method), *self.options])


@dataclass(frozen=True)
class Task:
    """One downstream run per seed.

    Attributes:
        kind: ``segment`` (GLaS), ``classify`` (PCam fine-tuning), ``probe`` (PCam linear probes)
            or ``embed`` (Fig. 5 features of GLaS test crops and their deformations).
        fraction: label fraction (segment, classify).
    """

    kind: str
    fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("segment", "classify", "probe", "embed"):
            raise ValueError(f"kind={self.kind!r}: expected segment, classify, probe or embed")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction={self.fraction}: expected a number in (0, 1]")

    @property
    def dataset(self) -> str:
        """The data set of the task, and of the pretraining its encoder needs."""
        return "glas" if self.kind in ("segment", "embed") else "pcam"

    @property
    def folder(self) -> str:
        """``segment``, ``classify-f0.01``, ``probe``, ``embed``."""
        return f"classify-f{self.fraction:g}" if self.kind == "classify" else self.kind


@dataclass(frozen=True)
class Arm:
    variant: Variant
    tasks: tuple[Task, ...]


@dataclass(frozen=True)
class Experiment:
    """A table or figure of the paper.

    Attributes:
        name: ``table1`` ... ``fig5``.
        title: the report's heading.
        arms: what is run, in report order.
        datasets: the data sets it needs (``glas``, ``pcam``).
    """

    name: str
    title: str
    arms: tuple[Arm, ...]
    datasets: tuple[str, ...]


EXPERIMENT_NAMES: tuple[str, ...] = ("table1", "table2", "table3", "table4", "fig4", "fig5")

# Table I / III rows in the paper's order (the baselines, then random init, ImageNet, DRL).
BASELINES: tuple[tuple[str, str], ...] = (
    ("vae", "VAE [29]"),
    ("genesis", "MG [15] (genesis)"),
    ("rotation", "Rotation [6]"),
    ("colorization", "Colorization [4]"),
    ("inpainting", "CENet [5] (inpainting)"),
    ("exemplar", "Exemplar [12]"),
    ("dim", "DIM [14]"),
)
RANDOM = Variant("random", "Random init.", init="random", paper="random")
IMAGENET = Variant("imagenet", "ImageNet", init="imagenet", paper="imagenet")
DRL = Variant("drl", "DRL", method="drl", paper="drl")
DIM = Variant("dim", "DIM [14]", method="dim", paper="dim")


def method_variants(imagenet: bool) -> list[Variant]:
    """Every method of Tables I and III in the paper's row order (ImageNet only when given)."""
    rows = [Variant(key, label, method=key, paper=key) for key, label in BASELINES]
    rows.append(RANDOM)
    if imagenet:
        rows.append(IMAGENET)
    rows.append(DRL)
    return rows


def table4_variants() -> list[Variant]:
    """Table IV's rows: baseline, + L_LSH, + L_GCH^H, + L_GCH^S, + FEM (full DRL)."""
    return [
        Variant("baseline", "Baseline (random init.)", init="random", paper="baseline"),
        Variant("lsh", "+ L_LSH", method="drl", options=("--gch", "none", "--no-fem"), paper="lsh"),
        Variant(
            "gch-hard",
            "+ L_LSH + L_GCH^H",
            method="drl",
            options=("--gch", "hard", "--no-fem"),
            paper="gch_hard",
        ),
        Variant(
            "gch-soft",
            "+ L_LSH + L_GCH^S",
            method="drl",
            options=("--gch", "soft", "--no-fem"),
            paper="gch_soft",
        ),
        Variant("fem", "+ L_LSH + L_GCH^H + FEM (DRL)", method="drl", paper="fem"),
    ]


def lambda_variant(gch: str, lam: float) -> Variant:
    """Fig. 4(b): full DRL with ``--gch gch --lambda lam`` (hard at 0.5 is plain DRL on PCam)."""
    if gch == "hard" and lam == 0.5:
        return DRL
    return Variant(
        f"drl-{gch}-lambda{lam:g}",
        f"λ_{gch[0].upper()} = {lam:g}",
        method="drl",
        options=("--gch", gch, "--lambda", f"{lam:g}"),
    )


def experiment(name: str, imagenet: bool = False) -> Experiment:
    """The definition of one table or figure.

    Args:
        name: one of :data:`EXPERIMENT_NAMES`.
        imagenet: include the ImageNet-initialised arm (Tables I, III, Fig. 4(a)).

    Raises:
        UserInputError: an unknown name.
    """
    segment = (Task("segment"),)
    if name == "table1":
        arms = tuple(Arm(v, segment) for v in method_variants(imagenet))
        return Experiment(name, "Table I: transfer to GLaS gland segmentation", arms, ("glas",))
    if name == "table2":
        arms = tuple(
            Arm(
                Variant(
                    f"{base.key}-{tap}",
                    f"{base.label} {tap}",
                    method=base.method,
                    options=("--tap", tap),
                    paper=base.paper,
                ),
                segment,
            )  # fmt: skip
            for base in (DIM, DRL)
            for tap in TABLE2_TAP_M
        )
        return Experiment(name, "Table II: DIM vs DRL by encoder map resolution M", arms, ("glas",))
    if name == "table3":
        tasks = tuple(Task("classify", f) for f in TABLE3_FRACTIONS)
        arms = tuple(Arm(v, tasks) for v in method_variants(imagenet))
        return Experiment(name, "Table III: PCam classification with few labels", arms, ("pcam",))
    if name == "table4":
        tasks = (Task("segment"), Task("classify", 1.0))
        arms = tuple(Arm(v, tasks) for v in table4_variants())
        return Experiment(name, "Table IV: ablation", arms, ("glas", "pcam"))
    if name == "fig4":
        probe, classify = Task("probe"), Task("classify", 1.0)
        # λ_H = 0.5 is DRL's own PCam setting: DRL's arm also gives that point of the sweep.
        arms = [
            Arm(v, (probe, classify) if v is DRL else (probe,)) for v in method_variants(imagenet)
        ]
        arms += [
            Arm(lambda_variant(gch, lam), (classify,))
            for gch in ("hard", "soft")
            for lam in FIG4B_LAMBDAS
            if lambda_variant(gch, lam) is not DRL
        ]
        return Experiment(
            name,
            "Fig. 4: (a) linear separability per block, (b) the GCH weight λ",
            tuple(arms),
            ("pcam",),
        )
    if name == "fig5":
        without = Variant(
            "drl-gch-none", "DRL w/o L_GCH (--gch none)", method="drl", options=("--gch", "none")
        )
        with_gch = Variant("drl", "DRL w/ L_GCH (hard)", method="drl", paper="drl")
        embed = (Task("embed"),)
        return Experiment(
            name,
            "Fig. 5: t-SNE of images and their deformed copies, without and with L_GCH",
            (Arm(without, embed), Arm(with_gch, embed)),
            ("glas",),
        )
    raise UserInputError(
        f"{name}: unknown table or figure (expected one of {', '.join(EXPERIMENT_NAMES)}, or all)"
    )


def pretrain_options(variant: Variant, dataset: str, preset: str = "histodrl") -> list[str]:
    """``--method``, ``--preset`` and the variant's options for pretraining on ``dataset``.

    ``--preset`` sets the defaults of ``--lambda`` and ``--global-head`` (a variant's own
    ``--lambda`` wins): ``histodrl`` gives λ = 0.5 everywhere; ``paper`` the paper's λ = 0.01 for
    segmentation (GLaS) and 0.5 for classification (PCam), paper IV-B. ``dataset`` (``glas`` /
    ``pcam``) is the kind the preset reads.
    """
    if variant.method is None:
        raise ValueError(f"{variant.key}: has no pretraining (init {variant.init})")
    return ["--method", variant.method, "--preset", preset, *variant.options]


class _FlagParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(message)


def option_values(cls: type, flags: Sequence[str]) -> dict[str, Any]:
    """The values that ``flags`` (``["--gch", "none", "--no-fem"]``) give the options of ``cls``,
    by field name (``{"gch": "none", "no_fem": True}``), read with the parser generated from ``cls``.

    Raises:
        ValueError: a flag ``cls`` does not have, or a value it does not take.
    """
    parser = _FlagParser(add_help=False)
    om.add_arguments(parser, cls, config=False)
    try:
        namespace = parser.parse_args(list(flags))
    except UserInputError as exc:
        raise ValueError(f"{' '.join(flags)}: {exc}") from exc
    return dict(om.typed_from_namespace(cls, namespace).values)


def pretrain_values(variant: Variant, dataset: str, preset: str = "histodrl") -> dict[str, Any]:
    """:func:`pretrain_options` as values of :class:`~histodrl.commands.pretrain.PretrainOptions`,
    with ``lambda_`` and ``global_head`` filled in from the preset for ``dataset``
    (``{"method": "drl", "preset": "paper", "lambda_": 0.01, "global_head": "relu"}``)."""
    values = option_values(PretrainOptions, pretrain_options(variant, dataset, preset))
    for name in ("lambda_", "global_head"):
        values.setdefault(name, preset_value(preset, name, dataset))
    return values


def tap_resolution(tap: str, crop: int) -> int:
    """M, the side of the encoder map at ``tap`` for ``crop`` px inputs (``crop // stride``)."""
    return crop // TAP_STRIDES[tap]
