"""``RUN/report.md`` and ``RUN/figures/`` of ``histodrl segment``: metric table and overlays.

Each overlay figure has three panels: the H&E image, the image with the ground-truth gland
outlines, and the image with the predicted gland outlines (the inner boundary pixels of each
instance, so touching glands show their shared border). Figures are drawn with matplotlib's Agg
canvas (no display needed) and written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from histodrl.commands.segment import SegmentOptions
from histodrl.io import atomic_path
from histodrl.runs.layout import FIGURES_DIR

TRUTH_COLOUR = (0.0, 1.0, 0.2)
PREDICTION_COLOUR = (1.0, 0.9, 0.0)


def outline_overlay(image: np.ndarray, labels: np.ndarray, colour: tuple[float, float, float]):
    """The image with every instance's inner boundary painted in ``colour``.

    Args:
        image: uint8 RGB. Shape: (H, W, 3).
        labels: instance labels, 0 = background. Shape: (H, W).
        colour: RGB in [0, 1].

    Returns:
        uint8 RGB copy of ``image``. Shape: (H, W, 3).
    """
    from skimage.segmentation import find_boundaries

    out = image.copy()
    edge = find_boundaries(labels, mode="inner") & (labels > 0)
    out[edge] = np.round(np.asarray(colour) * 255).astype(np.uint8)
    return out


def save_overlay_figure(path: Path, name: str, image, truth, prediction) -> None:
    """Write the three-panel overlay figure of one test image to ``path`` (PNG), atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height, width = truth.shape
    fig = Figure(figsize=(12, 12 * height / (3 * width) + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    panels = [
        (image, name),
        (outline_overlay(image, truth, TRUTH_COLOUR), f"ground truth ({_glands(truth)})"),
        (
            outline_overlay(image, prediction, PREDICTION_COLOUR),
            f"prediction ({_glands(prediction)})",
        ),
    ]
    for k, (panel, title) in enumerate(panels):
        ax = fig.add_subplot(1, 3, k + 1)
        ax.imshow(panel, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")


def _glands(labels: np.ndarray) -> str:
    n = len(np.unique(labels[labels > 0]))
    return f"{n} gland" if n == 1 else f"{n} glands"


def write_figures(run: Path, images: Sequence[Any]) -> list[tuple[str, str]]:
    """Write ``RUN/figures/<name>.png`` for each kept test image (``TestImage``-like objects).

    Returns:
        ``(name, path relative to run)`` per figure, in order.
    """
    written = []
    for item in images:
        relative = f"{FIGURES_DIR}/{item.name}.png"
        save_overlay_figure(run / relative, item.name, item.image, item.truth, item.prediction)
        written.append((item.name, relative))
    return written


def metrics_table(metrics: dict[str, dict[str, Any]]) -> str:
    """Markdown table: one row per test part and aggregation, F1 / object Dice / object Hausdorff."""
    lines = [
        "| part | aggregation | images | F1 | object Dice | object Hausdorff (px) |",
        "|---|---|---|---|---|---|",
    ]
    for part, values in metrics.items():
        for aggregate in ("pooled", "mean"):
            s = values[aggregate]
            lines.append(
                f"| {part} | {aggregate} | {values['n_images']} | {s['f1']:.4f} | "
                f"{s['dice']:.4f} | {s['hausdorff']:.2f} |"
            )
    return "\n".join(lines)


def report_markdown(
    options: SegmentOptions,
    metrics: dict[str, dict[str, Any]],
    *,
    figures: Sequence[tuple[str, str]],
    init_description: str,
    n_train: int,
    n_used: int,
    steps: int,
) -> str:
    """The text of ``RUN/report.md``.

    Args:
        options: the run's resolved options.
        metrics: as written to ``metrics.json``.
        figures: ``(name, relative path)`` from :func:`write_figures`.
        init_description: how the encoder was initialised.
        n_train, n_used: training images in the folder / used (label fraction).
        steps: optimizer steps done.
    """
    o = options
    contour = (
        f"a DCAN contour channel ({o.contour_width} px deep inside each gland); glands = "
        f"gland > {o.threshold} AND contour <= {o.threshold} before the connected "
        "components, the contour band then given back to the nearest gland"
        if o.contour
        else "no contour channel"
    )
    empty = [
        f"{part}: {v['n_empty_pred']} image(s) with no predicted gland"
        for part, v in metrics.items()
        if v["n_empty_pred"]
    ]
    lines = [
        "# Gland segmentation (GLaS)",
        "",
        f"- Data: `{o.data}`; {n_used} of {n_train} training images "
        f"(label fraction {o.label_fraction}, seed {o.seed}, listed in train_images.txt)",
        f"- Encoder: {o.arch}, width {o.width}, {init_description}; U-Net decoder random",
        f"- Training: {steps} steps of SGD (lr {o.lr}, momentum {o.momentum}, weight decay "
        f"{o.weight_decay}), batch {o.batch_size}, crops {o.crop} px (random flip/90° "
        "turn, random resized crop, colour jitter)",
        "- Loss: BCE with logits"
        + (f" + {o.dice_weight} x soft Dice" if o.dice_weight > 0 else "")
        + f"; {contour}",
        f"- Inference: whole images, {o.crop} px tiles with {o.overlap} overlap blended with "
        f"a Gaussian weight; threshold {o.threshold}, holes filled, 8-connected components, "
        f"objects under {o.min_object_area} px removed",
        "",
        "## Object metrics",
        "",
        metrics_table(metrics),
        "",
        "*pooled*: the GLaS challenge definition (objects of all images of a part form one set); "
        "*mean*: the mean of per-image scores, as many papers report. Hausdorff in pixels. "
        "Predicted instance maps: `predictions/`.",
    ]
    if empty:
        lines += ["", "Empty predictions (scored with the image-diagonal Hausdorff penalty): "]
        lines += [f"- {e}" for e in empty]
    if figures:
        lines += [
            "",
            "## Examples",
            "",
            "Image, ground-truth outlines (green), predicted outlines (yellow).",
            "",
        ]
        lines += [f"![{name}]({path})" for name, path in figures]
    return "\n".join(lines) + "\n"
