"""``RUN/report.md`` and ``RUN/figures/`` of ``histodrl segment``: metric table and overlays.

Each overlay figure has three panels: the H&E image, the image with the ground-truth object
outlines, and the image with the predicted object outlines (the inner boundary pixels of each
instance, so touching objects show their shared border). Figures are drawn with matplotlib's Agg
canvas (no display needed) and written atomically.

The report names the objects as the source does (:data:`OBJECT_NOUNS`: glands for GLaS, nuclei
for MoNuSeg, objects for the user's own masks) and says what the ground truth is: for binary masks
that touching objects merge (objects are the connected components), for MoNuSeg how overlapping
XML regions were resolved (:mod:`histodrl.data.monuseg`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from histodrl.commands.common import source_kind
from histodrl.commands.segment import SegmentOptions
from histodrl.io import atomic_path
from histodrl.runs.layout import FIGURES_DIR

TRUTH_COLOUR = (0.0, 1.0, 0.2)
PREDICTION_COLOUR = (1.0, 0.9, 0.0)

OBJECT_NOUNS = {"glas": ("gland", "glands"), "monuseg": ("nucleus", "nuclei")}
"""What the objects of a source kind are called (singular, plural); others: object(s)."""
TITLES = {
    "glas": "Gland segmentation (GLaS)",
    "monuseg": "Nucleus segmentation (MoNuSeg)",
    "masks": "Object segmentation (own masks)",
}
GENERIC_NOUNS = ("object", "objects")


def object_nouns(kind: str) -> tuple[str, str]:
    """``(singular, plural)`` of the objects of a source kind (:data:`OBJECT_NOUNS`)."""
    return OBJECT_NOUNS.get(kind, GENERIC_NOUNS)


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


def save_overlay_figure(
    path: Path, name: str, image, truth, prediction, nouns: tuple[str, str] = OBJECT_NOUNS["glas"]
) -> None:
    """Write the three-panel overlay figure of one test image to ``path`` (PNG), atomically.

    ``nouns``: what the objects are called in the panel titles (singular, plural)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height, width = truth.shape
    fig = Figure(figsize=(12, 12 * height / (3 * width) + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    panels = [
        (image, name),
        (outline_overlay(image, truth, TRUTH_COLOUR), f"ground truth ({_count(truth, nouns)})"),
        (
            outline_overlay(image, prediction, PREDICTION_COLOUR),
            f"prediction ({_count(prediction, nouns)})",
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


def _count(labels: np.ndarray, nouns: tuple[str, str]) -> str:
    n = len(np.unique(labels[labels > 0]))
    return f"{n} {nouns[0]}" if n == 1 else f"{n} {nouns[1]}"


def write_figures(
    run: Path, images: Sequence[Any], nouns: tuple[str, str] = OBJECT_NOUNS["glas"]
) -> list[tuple[str, str]]:
    """Write ``RUN/figures/<name>.png`` for each kept test image (``TestImage``-like objects).

    Returns:
        ``(name, path relative to run)`` per figure, in order.
    """
    written = []
    for item in images:
        relative = f"{FIGURES_DIR}/{item.name}.png"
        save_overlay_figure(
            run / relative, item.name, item.image, item.truth, item.prediction, nouns
        )
        written.append((item.name, relative))
    return written


def metrics_table(metrics: dict[str, dict[str, Any]]) -> str:
    """Markdown table: one row per test part and aggregation, F1 / object Dice / object Hausdorff
    / pixel Dice."""
    lines = [
        "| part | aggregation | images | F1 | object Dice | object Hausdorff (px) | pixel Dice |",
        "|---|---|---|---|---|---|---|",
    ]
    for part, values in metrics.items():
        for aggregate in ("pooled", "mean"):
            s = values[aggregate]
            hd = "skipped" if s["hausdorff"] is None else f"{s['hausdorff']:.2f}"
            lines.append(
                f"| {part} | {aggregate} | {values['n_images']} | {s['f1']:.4f} | "
                f"{s['dice']:.4f} | {hd} | {s['pixel_dice']:.4f} |"
            )
    return "\n".join(lines)


def _datasets(source: Any) -> list[Any]:
    return [source.train, *([source.val] if source.val is not None else []), *source.tests.values()]


def source_notes(source: Any, options: SegmentOptions) -> list[str]:
    """The report's lines about a non-GLaS source: its split and what its ground truth is.

    Args:
        source: a :class:`~histodrl.data.labelled.SegmentationSource`.
        options: the run's options (``split_seed``, ``test_fraction``).
    """
    singular, plural = object_nouns(source.kind)
    root = Path(source.root)
    counts = ", ".join(
        [f"{len(source.train)} train"]
        + ([f"{len(source.val)} val"] if source.val is not None else [])
        + [f"{len(d)} {part}" for part, d in source.tests.items()]
    )
    if all((root / part).is_dir() for part in source.tests):
        split = f"the folder's split folders ({counts} images)"
    else:
        split = (
            f"a seeded split by image name (split seed {options.split_seed}, test fraction "
            f"{options.test_fraction}: {counts} images)"
        )
    lines = [f"- Splits: {split}; every split is listed in splits.json"]
    records = [r for d in _datasets(source) for r in d.records]
    if source.kind == "monuseg":
        n_xml = sum(getattr(r, "annotation_kind", "") == "xml" for r in records)
        lines.append(
            f"- Ground truth: {n_xml} of {len(records)} tiles from their Aperio XML: each Region "
            "one nucleus, a filled polygon (the pixels whose centre is inside it, even-odd "
            "rule). Overlapping regions: smaller over larger (regions are painted in order of "
            "decreasing polygon area, of equal areas the later one in the file on top), so a "
            "pixel claimed by two nuclei goes to the smaller one; a region left with no pixel "
            "is dropped"
        )
    if source.binary_masks:
        if source.kind == "monuseg":
            n_binary = sum(getattr(r, "annotation_kind", "") == "binary" for r in records)
            which = f"{n_binary} of {len(records)} tiles have only a binary mask"
        else:
            which = "binary masks"
        lines.append(
            f"- **Touching {plural} merge in the ground truth**: {which}, whose {plural} are "
            f"their 8-connected components, so {plural} that touch count as one {singular} "
            f"(and a prediction that separates them is scored against the merged {singular})"
        )
    elif source.kind == "masks":
        lines.append("- Ground truth: instance masks (every non-zero value one object)")
    return lines


def report_markdown(
    options: SegmentOptions,
    metrics: dict[str, dict[str, Any]],
    *,
    figures: Sequence[tuple[str, str]],
    init_description: str,
    n_train: int,
    n_used: int,
    steps: int,
    source: Any = None,
) -> str:
    """The text of ``RUN/report.md``.

    Args:
        options: the run's resolved options.
        metrics: as written to ``metrics.json``.
        figures: ``(name, relative path)`` from :func:`write_figures`.
        init_description: how the encoder was initialised.
        n_train, n_used: training images in the split / used (label fraction).
        steps: optimizer steps done.
        source: the :class:`~histodrl.data.labelled.SegmentationSource` (``None``: only the
            kind of ``options.data`` is used); for other kinds than GLaS the report says how
            it was split and what its ground truth is (:func:`source_notes`).
    """
    o = options
    kind = source.kind if source is not None else source_kind(o.data)
    singular, plural = object_nouns(kind)
    budget = (
        f"label count {o.label_count}"
        if o.label_count is not None
        else f"label fraction {o.label_fraction}"
    )
    contour = (
        f"a DCAN contour channel ({o.contour_width} px deep inside each {singular}); {plural} = "
        f"{singular} > {o.threshold} AND contour <= {o.threshold} before the connected "
        f"components, the contour band then given back to the nearest {singular}"
        if o.contour
        else "no contour channel"
    )
    empty = [
        f"{part}: {v['n_empty_pred']} image(s) with no predicted {singular}"
        for part, v in metrics.items()
        if v["n_empty_pred"]
    ]
    notes = source_notes(source, o) if source is not None and kind != "glas" else []
    lines = [
        f"# {TITLES.get(kind, TITLES['masks'])}",
        "",
        f"- Data: `{o.data}`; {n_used} of {n_train} training images "
        f"({budget}, seed {o.seed}, listed in train_images.txt)",
        *notes,
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
        "## Object and pixel metrics",
        "",
        metrics_table(metrics),
        "",
        "*pooled*: the GLaS challenge definition (objects of all images of a part form one set); "
        "*mean*: the mean of per-image scores, as many papers report. Hausdorff in pixels. "
        "*pixel Dice*: foreground against background, 2|P∩G| / (|P| + |G|), over all pixels of "
        "the part (pooled) or per image (mean; 1 for an image with neither). "
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
