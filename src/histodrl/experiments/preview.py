"""``histodrl deform-preview``: what DRL trains on, as a picture.

The original crop, its elastic deformations at σ = 0.03S, 0.04S and 0.05S (α = 2S, METHOD.md (d)),
and the displacement magnitude of each, with the RMS displacement and the share of folded pixels.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from histodrl.data.augment import to_float
from histodrl.data.folder import read_rgb_image
from histodrl.deform import elastic_deform, fold_fraction
from histodrl.errors import UserInputError
from histodrl.io import atomic_path

SIGMA_FRACTIONS = (0.03, 0.04, 0.05)  # the paper's range and its middle, sigma / S
MIN_SIDE = 8


def deform_preview(image: str | Path, out: Path, *, size: int = 256, seed: int = 0) -> str:
    """Write the preview grid of ``image`` to ``out`` (PNG, atomically); returns a one-line summary.

    A centre crop of side ``size`` (a side of the image shorter than that is kept whole) is
    deformed at σ = 0.03S, 0.04S and 0.05S with α = 2S, S = min(H, W) of the crop.
    """
    if size < MIN_SIDE:
        raise UserInputError(f"--size {size}: expected an integer >= {MIN_SIDE}")
    out = Path(out)
    if out.is_dir():
        raise UserInputError(f"{out}: is a folder, expected the path of a PNG file")
    rgb = read_rgb_image(image)
    height, width = rgb.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise UserInputError(
            f"{image}: image is {width}x{height}, expected at least {MIN_SIDE}x{MIN_SIDE} pixels"
        )
    crop_h, crop_w = min(height, size), min(width, size)
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    crop = rgb[top : top + crop_h, left : left + crop_w]
    what = (
        f"centre crop {crop_w}x{crop_h} of {width}x{height}"
        if (crop_h, crop_w) != (height, width)
        else f"whole image {width}x{height}"
    )
    figure, summary = deform_preview_figure(crop, seed, f"{Path(image).name}, {what}")
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png")
    return f"wrote {out} ({what}; {summary})"


def deform_preview_figure(crop: np.ndarray, seed: int, caption: str) -> tuple[Figure, str]:
    """The 2 x 4 grid: original and deformations, then the displacement magnitudes.

    All three deformations use the same noise (same seed), so the panels differ only by sigma.
    """
    images = to_float(torch.from_numpy(crop.copy()).permute(2, 0, 1)[None])
    side = min(crop.shape[:2])  # S = min(H, W), METHOD.md (d)
    alpha = 2.0 * side
    panels = []
    for fraction in SIGMA_FRACTIONS:
        generator = torch.Generator().manual_seed(seed)
        deformed, displacement = elastic_deform(images, fraction * side, alpha, generator=generator)
        magnitude = displacement[0].norm(dim=0)
        rms = float(magnitude.pow(2).mean().sqrt())
        folded = float(fold_fraction(displacement)[0])
        panels.append(
            (fraction, deformed[0].permute(1, 2, 0).numpy(), magnitude.numpy(), rms, folded)
        )

    figure = Figure(figsize=(13, 6.6), layout="constrained")
    axes = figure.subplots(2, 4)
    for ax in axes.flat:
        ax.set_axis_off()
    axes[0, 0].imshow(crop)
    axes[0, 0].set_title("original")
    # The caption wraps inside its own panel, so it never widens the first column.
    axes[1, 0].text(
        0.0,
        0.5,
        "\n".join(textwrap.wrap(caption, 34))
        + f"\nS = {side} px, α = 2S = {alpha:g} px\nseed {seed}\n"
        "|d|: displacement magnitude (px)\nfolded: det(I + ∇d) ≤ 0",
        va="center",
        fontsize=9,
        wrap=True,
    )
    vmax = max(p[2].max() for p in panels)
    for column, (fraction, deformed, magnitude, rms, folded) in enumerate(panels, start=1):
        sigma = fraction * side
        axes[0, column].imshow(deformed.clip(0.0, 1.0))
        axes[0, column].set_title(
            f"σ = {fraction:.2f}S = {sigma:.1f} px\nRMS |d| {rms:.1f} px\nfolded {folded:.1%}",
            fontsize=10,
        )
        shown = axes[1, column].imshow(magnitude, cmap="viridis", vmin=0.0, vmax=vmax)
        axes[1, column].set_title(f"|d|, σ = {fraction:.2f}S")
    figure.colorbar(shown, ax=axes[1, 1:].tolist(), shrink=0.8, label="|d| (px)")
    summary = ", ".join(
        f"sigma {fraction:.2f}S: RMS |d| {rms:.1f} px, {folded:.1%} folded"
        for fraction, _, _, rms, folded in panels
    )
    return figure, summary
