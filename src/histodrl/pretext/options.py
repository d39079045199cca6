"""The pretraining methods and their options, beside the methods (torch-free).

:data:`METHODS` names each method's LightningModule (imported only when used). The option groups
below are the methods' own: :class:`DRLOptions` (DRL; DIM uses ``tap``, ``gamma`` and
``prior_penalty``), :class:`DeformationOptions` (DRL's elastic deformation) and
:class:`BaselineOptions`. ``histodrl pretrain``'s options
(:class:`histodrl.commands.pretrain.PretrainOptions`) combine them with the training options.
Defaults are the paper's values where it gives one, otherwise METHOD.md's (f) table.
"""

from __future__ import annotations

from histodrl.commands.options import (
    at_least,
    fraction_pair,
    greater,
    option,
    options_class,
)

# name -> (module, class); imported only when the method is used.
METHODS: dict[str, tuple[str, str]] = {
    "drl": ("histodrl.pretext.drl", "DRL"),
    "dim": ("histodrl.pretext.dim", "DIM"),
    "rotation": ("histodrl.pretext.rotation", "Rotation"),
    "colorization": ("histodrl.pretext.colorization", "Colorization"),
    "inpainting": ("histodrl.pretext.inpainting", "Inpainting"),
    "exemplar": ("histodrl.pretext.exemplar", "Exemplar"),
    "vae": ("histodrl.pretext.vae", "VAE"),
    "genesis": ("histodrl.pretext.genesis", "Genesis"),
}

#: Methods whose loss compares the images of a batch (they need at least 2 per step).
BATCH_CONTRASTIVE = frozenset({"drl", "dim"})

TAPS = ("conv3_4", "conv4_4", "conv5_4", "pool5")

#: Where DRL and DIM take their global vector from (``--global-head``).
GLOBAL_HEADS = ("preact", "relu")

#: ``--preset``: where the defaults of ``--lambda`` and ``--global-head`` come from.
#: ``histodrl``: what the measurements support (README "How this implementation reads the paper"):
#: lambda 0.5 on every source, the global vector before the FEM's ReLU. ``paper``: the paper's
#: literal reading: lambda 0.01 (0.5 on PCam, paper IV-B), the global vector pooled after the ReLU.
PRESETS = ("histodrl", "paper")
PRESET_DEFAULTS: dict[str, dict[str, object]] = {
    "histodrl": {"lambda_": 0.5, "global_head": "preact"},
    "paper": {"lambda_": 0.01, "global_head": "relu"},
}
#: One line per preset, for reports.
PRESET_TEXT = {
    "histodrl": "λ = 0.5, the global vector before the FEM's ReLU: what the measurements support",
    "paper": "the paper's literal reading: λ = 0.01 for segmentation, 0.5 for PCam, the global "
    "vector pooled after the FEM's ReLU",
}
#: The paper's lambda per source kind where it differs from ``PRESET_DEFAULTS["paper"]``.
PAPER_LAMBDA = {"pcam": 0.5}


def preset_value(preset: str, name: str, kind: str | None = None) -> object:
    """The default of option ``name`` (``lambda_`` or ``global_head``) under ``preset`` for a
    source of ``kind`` (``glas``, ``pcam``, ...)."""
    if preset == "paper" and name == "lambda_" and kind in PAPER_LAMBDA:
        return PAPER_LAMBDA[kind]
    return PRESET_DEFAULTS[preset][name]


_DRL = "DRL (method drl; dim uses --tap, --gamma and --prior-penalty)"
_DEFORM = "deformation (drl)"
_BASELINES = "baselines (dim, rotation, colorization, inpainting, exemplar, vae, genesis)"


@options_class
class DRLOptions:
    tap: str = option("conv4_4", help="encoder map X^Enc (M=32 at 256)", choices=TAPS, group=_DRL)
    no_fem: bool = option(False, help="ablation E9: no Feature Enhance Module", group=_DRL)
    fem_branch_channels: int = option(
        128, help="FEM channels per branch", check=at_least(1), group=_DRL
    )
    gch: str = option("hard", help="L_GCH variant", choices=("none", "hard", "soft"), group=_DRL)
    lsh: str = option("jsd", help="L_LSH form (E2)", choices=("jsd", "literal"), group=_DRL)
    preset: str = option(
        "histodrl",
        help="defaults of --lambda and --global-head: histodrl = 0.5 and preact (what the "
        "measurements support); paper = the paper's literal reading, 0.01 (0.5 on PCam) and "
        "relu (README: How this implementation reads the paper)",
        choices=PRESETS,
        group=_DRL,
    )
    lambda_: float | None = option(
        None,
        flag="--lambda",
        help="weight of L_GCH (default: 0.5; --preset paper: 0.01, 0.5 on PCam, as the paper's "
        "GLaS and PCam settings)",
        check=at_least(0),
        group=_DRL,
    )
    gamma: float = option(0.1, help="weight of the prior term", check=at_least(0), group=_DRL)
    temperature: float = option(1.0, help="GCH temperature tau", check=greater(0), group=_DRL)
    weight_temperature: float = option(1.0, help="soft GCH tau_w", check=greater(0), group=_DRL)
    gch_reduction: str = option(
        "mean", help="E11: reduction of L_GCH", choices=("mean", "sum"), group=_DRL
    )
    detach_soft_target: bool = option(
        False, help="soft GCH: stop the gradient through the soft target", group=_DRL
    )
    prior_penalty: float = option(
        0.0, help="prior discriminator gradient penalty", check=at_least(0), group=_DRL
    )
    global_head: str | None = option(
        None,
        help="source of the global vector h (F_G = L2norm(h), prior input sigmoid(h)): preact = "
        "the FEM output before its ReLU (without a FEM: a Linear-BatchNorm projection of the "
        "pooled tap); relu = the post-ReLU map, METHOD.md (b)'s measured failure, for comparison "
        "(default: preact; --preset paper: relu)",
        choices=GLOBAL_HEADS,
        group=_DRL,
    )


@options_class
class DeformationOptions:
    sigma_range: tuple[float, float] = option(
        (0.03, 0.05),
        help="sigma as fractions of S, drawn per image (default: 0.03,0.05)",
        check=fraction_pair(),
        metavar="LOW,HIGH",
        group=_DEFORM,
    )
    alpha_factor: float = option(2.0, help="alpha = FACTOR x S", check=greater(0), group=_DEFORM)
    resample_original: bool = option(
        False,
        help="shift originals by a random sub-pixel offset so both views are interpolated (E16)",
        group=_DEFORM,
    )
    deform_size: int | None = option(
        None,
        help="S used for sigma and alpha (default: the crop; 256 makes PCam moderate, METHOD.md d)",
        check=at_least(8),
        group=_DEFORM,
    )


@options_class
class BaselineOptions:
    exemplar_classes: int = option(
        4000,
        help="exemplar: surrogate classes, i.e. seed items drawn from the data (default: 4000)",
        check=at_least(2),
        group=_BASELINES,
    )
    inpainting_adversarial: float = option(
        0.0,
        help="inpainting: weight of the adversarial term (default: 0 = L2 only; paper: 0.001)",
        check=at_least(0),
        group=_BASELINES,
    )
