"""Frozen-encoder pixel probes on held-out labelled tiles, for the encoders of a label-efficiency study.

Fine-tuning scores (``histodrl label-efficiency``) mix two things: how good the pretrained features
are, and how much of that survives fine-tuning. This script measures the first alone: for every
``runs/<method>/seed<k>/pretrain/encoder.safetensors`` of a finished study, and for a random
initialisation with the same seeds, it runs the monitor's pixel probe
(:func:`histodrl.pretext.monitor.evaluate`: a per-pixel logistic regression on the upsampled block
map, fitted on crops of half of the tiles, scored by foreground Dice on crops of the other half)
on the labelled tiles of ``--probe`` (the study's *test* tiles: nothing here is trained or chosen
on them; they are only scored).

BatchNorm running statistics: a pretrained encoder carries those of its pretraining data, a fresh
one has mean 0 / variance 1. The monitor's evaluation re-estimates them on the probe's fit crops
for every encoder (:func:`histodrl.pretext.monitor.calibrated_copy`), so all are compared the same
way.

    python benchmarks/frozen_probe.py --study label-efficiency-monuseg --probe masks:TEST_TILES

Prints the table of mean ± sd over seeds per method and block, with paired t-test p-values
against random init (seed k against seed k).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", required=True, help="a finished label-efficiency folder")
    parser.add_argument("--probe", required=True, help="masks:DIR of held-out labelled tiles")
    parser.add_argument("--methods", default="drl,dim")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--images", type=int, default=256)
    args = parser.parse_args(argv)

    from histodrl.experiments.stats import format_p, paired_t_test
    from histodrl.nn import build_encoder, load_encoder
    from histodrl.pretext.monitor import evaluate, load_monitor_sample

    sample = load_monitor_sample(args.probe, args.crop, args.images)
    print(f"probe: {sample.description}", flush=True)
    taps = ["conv3_4", "conv4_4"]
    scores: dict[str, dict[int, dict[str, float]]] = {}
    for method in ["random", *args.methods.split(",")]:
        scores[method] = {}
        for seed in range(args.seeds):
            if method == "random":
                encoder = build_encoder(
                    "vgg19_bn", args.width, generator=torch.Generator().manual_seed(seed)
                )
            else:
                path = Path(args.study) / "runs" / method / f"seed{seed}" / "pretrain"
                encoder = load_encoder(path / "encoder.safetensors", width=args.width)
            result = evaluate(encoder, sample, taps)
            scores[method][seed] = {tap: result[tap]["pixel_dice"] for tap in taps}
            print(f"  {method} seed {seed}: {scores[method][seed]}", flush=True)
    print()
    print(
        "| encoder | " + " | ".join(f"{t} pixel Dice | p vs random (paired)" for t in taps) + " |"
    )
    print("|---|" + "---|---|" * len(taps))
    for method, by_seed in scores.items():
        cells = []
        for tap in taps:
            v = np.array([by_seed[s][tap] for s in sorted(by_seed)])
            cells.append(f"{v.mean():.3f} ± {v.std(ddof=1):.3f}")
            if method == "random":
                cells.append("—")
            else:
                r = [scores["random"][s][tap] for s in sorted(by_seed)]
                cells.append(format_p(paired_t_test(list(v), r)))
        print(f"| {method} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
