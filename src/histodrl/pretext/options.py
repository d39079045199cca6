"""Command-line options of ``histodrl pretrain``, with every method's defaults.

Kept free of torch imports so that building the parser (every ``histodrl`` call) stays fast. The
defaults are the paper's values where it gives one, otherwise METHOD.md's (f) table.
"""

from __future__ import annotations

import argparse

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

TAPS = ("conv3_4", "conv4_4", "conv5_4", "pool5")


def _float_pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected two numbers 'LOW,HIGH'") from exc
    if not 0 < lo <= hi:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 0 < LOW <= HIGH")
    return lo, hi


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """Options every training command shares (devices, precision, seed, run folder)."""
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="run folder to write")
    g.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: 0)")
    g.add_argument("--resume", action="store_true", help="continue RUN from checkpoints/last.ckpt")
    g.add_argument("--overwrite", action="store_true", help="replace an existing RUN")
    g.add_argument("--config", help="YAML file of options (a run's config.yaml works)")
    g.add_argument("--devices", default="1", help="devices per node: a number, or 'auto'")
    g.add_argument("--num-nodes", type=int, default=1, help="nodes for multi-node DDP")
    g.add_argument("--strategy", default="auto", help="Lightning strategy (default: ddp if >1)")
    g.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (default: auto)")
    g.add_argument(
        "--precision",
        default=None,
        help="Lightning precision (default: bf16-mixed on GPU, 32-true on CPU)",
    )
    g.add_argument("--compile", action="store_true", help="torch.compile the encoder")
    g.add_argument(
        "--num-workers", type=int, default=None, help="DataLoader workers (default: min(4, CPUs))"
    )
    g.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    g.add_argument("--log-every", type=int, default=10, help="steps between logged rows")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--deterministic", action="store_true", help="deterministic algorithms (slower)")


def add_pretrain_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=sorted(METHODS), default="drl", help="pretext method")
    p.add_argument("--data", required=True, help="KIND:PATH with KIND in glas, folder, pcam, wsi")
    add_training_arguments(p)

    g = p.add_argument_group("training (every method)")
    g.add_argument("--epochs", type=float, default=None, help="epochs (default: 200; pcam: 20)")
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    g.add_argument("--batch-size", type=int, default=8, help="originals per step and process")
    g.add_argument("--crop", type=int, default=None, help="crop side (default: 256; pcam: 96)")
    g.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default: 1e-4)")
    g.add_argument("--arch", choices=("vgg19_bn", "vgg19"), default="vgg19_bn")
    g.add_argument("--width", type=float, default=1.0, help="channel multiplier (tests: 0.125)")
    g.add_argument("--sync-batchnorm", action="store_true", help="SyncBatchNorm across processes")
    g.add_argument("--min-tissue", type=float, default=0.5, help="wsi: least tissue share per tile")
    g.add_argument("--mpp", type=float, default=None, help="wsi: target microns per pixel")
    g.add_argument("--level", type=int, default=None, help="wsi: pyramid level")

    g = p.add_argument_group("DRL (method drl; dim uses --tap, --gamma and --prior-penalty)")
    g.add_argument("--tap", choices=TAPS, default="conv4_4", help="encoder map X^Enc (M=32 at 256)")
    g.add_argument("--no-fem", action="store_true", help="ablation E9: no Feature Enhance Module")
    g.add_argument("--fem-branch-channels", type=int, default=128, help="FEM channels per branch")
    g.add_argument("--gch", choices=("none", "hard", "soft"), default="hard", help="L_GCH variant")
    g.add_argument("--lsh", choices=("jsd", "literal"), default="jsd", help="L_LSH form (E2)")
    g.add_argument(
        "--lambda",
        dest="lambda_",
        type=float,
        default=0.01,
        help="weight of L_GCH (paper: 0.01 for GLaS, 0.5 for PCam)",
    )
    g.add_argument("--gamma", type=float, default=0.1, help="weight of the prior term")
    g.add_argument("--temperature", type=float, default=1.0, help="GCH temperature tau")
    g.add_argument("--weight-temperature", type=float, default=1.0, help="soft GCH tau_w")
    g.add_argument("--gch-reduction", choices=("mean", "sum"), default="mean", help="E11")
    g.add_argument("--detach-soft-target", action="store_true", help="soft GCH: stop-grad target")
    g.add_argument("--prior-penalty", type=float, default=0.0, help="prior D gradient penalty")

    g = p.add_argument_group("deformation (drl)")
    g.add_argument(
        "--sigma-range",
        type=_float_pair,
        default=(0.03, 0.05),
        help="sigma as fractions of S, drawn per image (default: 0.03,0.05)",
    )
    g.add_argument("--alpha-factor", type=float, default=2.0, help="alpha = FACTOR * S (default 2)")
    g.add_argument(
        "--resample-original",
        action="store_true",
        help="shift originals by a random sub-pixel offset so both views are interpolated (E16)",
    )
    g.add_argument(
        "--deform-size",
        type=int,
        default=None,
        help="S used for sigma and alpha (default: the crop; 256 makes PCam moderate, METHOD.md d)",
    )

    g = p.add_argument_group(
        "baselines (dim, rotation, colorization, inpainting, exemplar, vae, genesis)"
    )
    g.add_argument(
        "--exemplar-classes",
        type=int,
        default=4000,
        help="exemplar: surrogate classes, i.e. seed items drawn from the data (default: 4000)",
    )
    g.add_argument(
        "--inpainting-adversarial",
        type=float,
        default=0.0,
        help="inpainting: weight of the adversarial term (default: 0 = L2 only; paper: 0.001)",
    )
