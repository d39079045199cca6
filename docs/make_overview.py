"""Make ``docs/overview.jpg``, the README's opening figure, from the real tissue in ``../shared``.

Top row: a real H&E tile (the tiatoolbox stain target) and its elastic deformations at the
paper's sigma = 0.03S, 0.04S, 0.05S (alpha = 2S, S = 256): what DRL learns to tell apart.
Bottom row: a real MoNuSeg test tile, its annotated nuclei, and the nuclei a U-Net fine-tuned by
``histodrl segment --data monuseg:...`` on a few training tiles predicts (a short CPU run, so the
segmentation is rough: the figure shows what the tool does, not what it can reach).

    .venv/bin/python docs/make_overview.py [--steps 300] [--out docs/overview.jpg]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / ".." / "shared" / "data" / "real"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default=str(ROOT / "docs" / "overview.jpg"))
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from histodrl.commands.segment import SegmentOptions
    from histodrl.data.augment import to_float
    from histodrl.data.folder import read_rgb_image
    from histodrl.deform import elastic_deform
    from histodrl.downstream.segment import run_segment
    from histodrl.downstream.segment_report import outline_overlay
    from histodrl.io import atomic_path
    from histodrl.metrics.label_files import read_label_image

    tile = read_rgb_image(REAL / "tiles" / "tiatoolbox_target_image.png")
    top, left = (tile.shape[0] - 256) // 2, (tile.shape[1] - 256) // 2
    crop = tile[top : top + 256, left : left + 256]
    x = to_float(torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))[None])
    deformed = []
    for fraction in (0.03, 0.04, 0.05):
        gen = torch.Generator().manual_seed(0)
        y, _ = elastic_deform(x, fraction * 256, 2 * 256, generator=gen)
        deformed.append((fraction, y[0].permute(1, 2, 0).clamp(0, 1).numpy()))

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "segment"
        options = SegmentOptions(
            data=f"monuseg:{REAL / 'monuseg-train'}",
            out=str(run),
            width=0.25,
            crop=128,
            batch_size=4,
            max_steps=args.steps,
            label_fraction=0.3,
            test_fraction=0.1,
            num_workers=2,
            no_progress=True,
            figures=0,
        )
        metrics = run_segment(options)
        splits = json.loads((run / "splits.json").read_text())
        name = sorted(next(v for k, v in splits.items() if k.startswith("test")))[0]
        prediction = read_label_image(run / "predictions" / f"{name}.png")
    from histodrl.data.labelled import segmentation_source

    source = segmentation_source(options.data, seed=options.split_seed, test_fraction=0.1)
    part = next(iter(source.tests))
    test = source.tests[part]
    item = next(test[i] for i in range(len(test)) if test[i]["name"] == name)
    window = (slice(300, 556), slice(300, 556))
    image = item["image"][window]
    truth, predicted = item["label"][window], prediction[window]
    scores = metrics[part]["pooled"]

    fig, axes = plt.subplots(2, 4, figsize=(12, 6.4))
    axes[0, 0].imshow(crop)
    axes[0, 0].set_title("real H&E tile (256 px)", fontsize=9)
    for ax, (fraction, y) in zip(axes[0, 1:], deformed):
        ax.imshow(y)
        ax.set_title(f"deformed, σ = {fraction:g}S, α = 2S", fontsize=9)
    axes[1, 0].imshow(image)
    axes[1, 0].set_title(f"MoNuSeg test tile {name}", fontsize=9)
    axes[1, 1].imshow(outline_overlay(image, truth, (0.1, 0.9, 0.1)))
    axes[1, 1].set_title(f"annotated nuclei ({len(np.unique(truth)) - 1})", fontsize=9)
    axes[1, 2].imshow(outline_overlay(image, predicted, (1.0, 0.85, 0.0)))
    axes[1, 2].set_title(f"predicted nuclei ({len(np.unique(predicted)) - 1})", fontsize=9)
    axes[1, 3].axis("off")
    caption = (
        f"histodrl segment --data monuseg:...\n{args.steps} CPU steps, width 1/4, random\n"
        f"init; pooled over the test tiles:\nF1 {scores['f1']:.2f}, object Dice "
        f"{scores['dice']:.2f}, pixel Dice {scores['pixel_dice']:.2f}"
    )
    axes[1, 3].text(0.0, 0.5, caption, fontsize=9, va="center")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp_png:
        fig.savefig(tmp_png, format="jpg", dpi=80, pil_kwargs={"quality": 88, "optimize": True})
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
