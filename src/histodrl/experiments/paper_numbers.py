"""The published numbers of Xu, Hou et al., BIBM 2020, transcribed from the paper's tables.

Each value is ``(mean, std)`` as printed (``std`` is ``None`` where the paper gives none); segmentation
scores are fractions (F1, object Dice) and pixels (object Hausdorff), classification accuracies are
percentages, exactly as in the tables. Methods are keyed by the ``histodrl pretrain --method`` name
(``genesis`` is the paper's "MG" [15], ``inpainting`` its "CENet" [5]), plus ``random`` ("Random
init."), ``imagenet`` and ``supervised_unet`` (Table I's "Supervised UNet†", elastic deformation as
augmentation; not reproduced).

The paper does not report test A and test B separately: each segmentation value is one number for
the GLaS test set. Fig. 4's bar heights are not printed anywhere in the text; only its p-values are.
"""

from __future__ import annotations

Value = tuple[float, float | None]

SEGMENTATION_METRICS = ("f1", "dice", "hausdorff")

# TABLE I: transfer learning on GLaS segmentation (F1, object Dice, object Hausdorff).
TABLE1: dict[str, dict[str, Value]] = {
    "supervised_unet": {"f1": (0.870, None), "dice": (0.876, None), "hausdorff": (57.09, None)},
    "vae": {"f1": (0.859, 0.012), "dice": (0.867, 0.011), "hausdorff": (60.00, 3.97)},
    "genesis": {"f1": (0.862, 0.003), "dice": (0.856, 0.009), "hausdorff": (70.13, 2.25)},
    "rotation": {"f1": (0.838, 0.015), "dice": (0.850, 0.009), "hausdorff": (65.31, 4.93)},
    "colorization": {"f1": (0.863, 0.004), "dice": (0.863, 0.005), "hausdorff": (64.85, 3.02)},
    "inpainting": {"f1": (0.868, 0.006), "dice": (0.879, 0.004), "hausdorff": (57.13, 1.85)},
    "exemplar": {"f1": (0.876, 0.004), "dice": (0.879, 0.006), "hausdorff": (59.71, 2.56)},
    "dim": {"f1": (0.878, 0.005), "dice": (0.866, 0.008), "hausdorff": (63.13, 3.73)},
    "random": {"f1": (0.853, 0.009), "dice": (0.861, 0.006), "hausdorff": (63.49, 4.40)},
    "imagenet": {"f1": (0.883, 0.003), "dice": (0.887, 0.004), "hausdorff": (53.50, 0.83)},
    "drl": {"f1": (0.900, 0.006), "dice": (0.896, 0.004), "hausdorff": (50.55, 2.64)},
}
# Table I's last row: p-values between DRL and DIM.
TABLE1_P_VALUES: dict[str, float] = {"f1": 0.0055, "dice": 0.0011, "hausdorff": 0.0516}

# TABLE II: object Dice on GLaS for the encoder map at spatial resolution M (256 crops), keyed by
# the tap that gives that M (64: conv3_4, 32: conv4_4, 16: conv5_4, 8: pool5).
TABLE2_TAP_M: dict[str, int] = {"conv3_4": 64, "conv4_4": 32, "conv5_4": 16, "pool5": 8}
TABLE2: dict[str, dict[str, Value]] = {
    "dim": {
        "conv3_4": (0.850, 0.008),
        "conv4_4": (0.876, 0.003),
        "conv5_4": (0.865, 0.004),
        "pool5": (0.866, 0.003),
    },
    "drl": {
        "conv3_4": (0.858, 0.004),
        "conv4_4": (0.882, 0.005),
        "conv5_4": (0.881, 0.004),
        "pool5": (0.873, 0.008),
    },
}

# TABLE III: PCam test accuracy (%) after fine-tuning on a fraction of the labels.
TABLE3_FRACTIONS: tuple[float, ...] = (0.0001, 0.01, 0.1, 0.5, 1.0)
_F = TABLE3_FRACTIONS


def _row(*values: Value) -> dict[float, Value]:
    return dict(zip(_F, values, strict=True))


TABLE3: dict[str, dict[float, Value]] = {
    "vae": _row((64.33, 1.02), (79.52, 1.22), (80.78, 2.02), (87.39, 0.43), (88.14, 1.34)),
    "genesis": _row((62.58, 2.45), (78.59, 0.73), (80.99, 0.59), (86.31, 0.68), (88.30, 1.09)),
    "rotation": _row((62.69, 1.84), (80.57, 1.31), (83.26, 1.62), (86.30, 0.53), (88.44, 1.06)),
    "colorization": _row((65.92, 0.46), (77.44, 1.14), (80.46, 2.24), (83.32, 1.10), (85.34, 1.61)),
    "inpainting": _row((62.79, 0.78), (79.93, 0.81), (83.35, 1.36), (87.60, 1.24), (88.85, 2.06)),
    "exemplar": _row((66.08, 1.83), (81.30, 0.62), (82.97, 2.08), (86.51, 0.79), (85.93, 0.92)),
    "dim": _row((63.53, 0.08), (79.22, 0.31), (81.26, 1.28), (85.88, 0.54), (89.18, 0.70)),
    "random": _row((53.09, 2.89), (64.24, 1.11), (77.71, 2.71), (80.64, 0.93), (83.14, 1.30)),
    "imagenet": _row((63.66, 1.38), (83.58, 1.90), (84.53, 1.17), (87.66, 0.97), (88.69, 1.24)),
    "drl": _row((66.18, 0.93), (79.73, 0.24), (85.48, 0.88), (88.47, 0.52), (89.35, 0.08)),
}
# Table III's last row: p-values between DRL and DIM per label fraction.
TABLE3_P_VALUES: dict[float, float] = dict(zip(_F, (0.0056, 0.2219, 0.0467, 0.0445, 0.0311)))

# TABLE IV: the ablation (segmentation on GLaS, classification accuracy (%) on PCam with all
# labels), keyed by variant: the baseline (random init.), + L_LSH, + L_GCH^H, + L_GCH^S, and
# + L_GCH^H + FEM (full DRL). Note the full row's Hausdorff std is 2.65 here and 2.64 in Table I.
TABLE4_VARIANTS: tuple[str, ...] = ("baseline", "lsh", "gch_hard", "gch_soft", "fem")
TABLE4: dict[str, dict[str, Value]] = {
    "baseline": {
        "f1": (0.853, 0.009),
        "dice": (0.861, 0.006),
        "hausdorff": (63.49, 4.40),
        "accuracy": (83.14, 1.30),
    },
    "lsh": {
        "f1": (0.883, 0.004),
        "dice": (0.873, 0.003),
        "hausdorff": (64.99, 0.94),
        "accuracy": (87.23, 0.32),
    },
    "gch_hard": {
        "f1": (0.886, 0.004),
        "dice": (0.878, 0.002),
        "hausdorff": (53.69, 2.31),
        "accuracy": (88.28, 0.44),
    },
    "gch_soft": {
        "f1": (0.884, 0.004),
        "dice": (0.884, 0.004),
        "hausdorff": (55.71, 1.92),
        "accuracy": (88.02, 0.11),
    },
    "fem": {
        "f1": (0.900, 0.006),
        "dice": (0.896, 0.004),
        "hausdorff": (50.55, 2.65),
        "accuracy": (89.35, 0.08),
    },
}
# Table IV's p-values between each variant and the baseline (the baseline's own are "-").
TABLE4_P_VALUES: dict[str, dict[str, float]] = {
    "lsh": {"f1": 0.0027, "dice": 0.0054, "hausdorff": 0.0831, "accuracy": 0.0114},
    "gch_hard": {"f1": 0.0023, "dice": 0.0256, "hausdorff": 0.3321, "accuracy": 0.0080},
    "gch_soft": {"f1": 0.0061, "dice": 0.0033, "hausdorff": 0.0031, "accuracy": 0.0081},
    "fem": {"f1": 0.0002, "dice": 0.0002, "hausdorff": 0.0035, "accuracy": 0.0006},
}

# Fig. 4(a): linear separability; the text gives only the p-values of DRL vs DIM per block.
FIG4A_P_VALUES: dict[str, float] = {"conv2": 0.0031, "conv3": 0.0113, "conv4": 0.0176}
# Fig. 4(b): the lambda values swept for hard and soft GCH; the text says 0.5 is best for both.
FIG4B_LAMBDAS: tuple[float, ...] = (0.01, 0.1, 0.5, 1.0)
FIG4B_BEST_LAMBDA = 0.5

# Section IV-C: the fully supervised state of the art on PCam quoted for comparison ([31]).
PCAM_SUPERVISED_SOTA = 91.87
