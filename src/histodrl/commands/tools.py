"""Options of the commands that do not train: demo, export, deform-preview, synth, glas-metrics,
reproduce (torch-free)."""

from __future__ import annotations

from histodrl.commands.options import at_least, greater, option, options_class
from histodrl.pretext.options import PRESETS


@options_class
class DemoOptions:
    out: str = option("demo", help="output folder")
    minutes: float = option(10.0, help="time budget in minutes", check=greater(0))


@options_class
class ExportOptions:
    run: str = option(help="a pretraining run folder", positional=True, metavar="RUN")


@options_class
class DeformPreviewOptions:
    image: str = option(help="an image file Pillow can read", positional=True, metavar="IMAGE")
    out: str = option(help="the PNG file to write", metavar="PNG")
    size: int = option(
        256,
        help="side S of the centre crop that is deformed; a side of the image shorter than S is "
        "kept whole (default: 256)",
        check=at_least(8),
    )
    seed: int = option(0, help="noise seed, shared by the three panels", check=at_least(0))


@options_class
class SynthGlasOptions:
    dir: str = option(help="output folder", positional=True, metavar="DIR")
    n_train: int = option(85, help="train images", check=at_least(0))
    n_test_a: int = option(60, help="testA images", check=at_least(0))
    n_test_b: int = option(20, help="testB images", check=at_least(0))
    size: str = option(
        "775x522", help="WIDTHxHEIGHT of most images; 1 in 20 is smaller, as in GLaS"
    )
    seed: int = option(0, help="same seed, same files", check=at_least(0))
    overwrite: bool = option(False, help="replace a dataset already in DIR")


@options_class
class SynthPcamOptions:
    dir: str = option(help="output folder", positional=True, metavar="DIR")
    n_train: int = option(2048, help="train patches", check=at_least(1))
    n_valid: int = option(256, help="valid patches", check=at_least(1))
    n_test: int = option(256, help="test patches", check=at_least(1))
    seed: int = option(0, help="same seed, same files", check=at_least(0))
    overwrite: bool = option(False, help="replace a dataset already in DIR")


@options_class
class GlasMetricsOptions:
    pred_dir: str = option(
        help="predicted label images (testA_1*.png ...)", positional=True, metavar="PRED_DIR"
    )
    gt_dir: str = option(
        help="annotations (testA_1_anno.bmp ...), e.g. the GLaS release folder",
        positional=True,
        metavar="GT_DIR",
    )
    aggregate: str = option(
        "pooled",
        help="pooled: the challenge's set-level definition (default); mean: mean of per-image "
        "scores",
        choices=("pooled", "mean"),
    )
    part: str | None = option(
        None,
        help="comma-separated parts to score, e.g. testA (default: every part with predictions)",
    )
    json: bool = option(False, help="print JSON instead of a table")


@options_class
class ReproduceOptions:
    names: tuple[str, ...] = option(
        help="table1, table2, table3, table4, fig4, fig5, or all", positional=True, metavar="NAME"
    )
    out: str = option(help="output folder; finished runs in it are reused")
    glas: str | None = option(None, help="GLaS folder (tables 1, 2, 4 and fig5)")
    pcam: str | None = option(None, help="PCam folder (tables 3, 4 and fig4)")
    imagenet: str | None = option(
        None, help="torchvision vgg19_bn .pth: adds the ImageNet row (--scale paper)"
    )
    seeds: int = option(5, help="seeds 0..N-1 per row", check=at_least(1))
    scale: str = option(
        "smoke",
        help="smoke: 1/8-wide trunk, tiny crops, a few steps (tests the harness on a CPU); "
        "paper: the paper's settings, for a GPU (default: smoke)",
    )
    preset: str = option(
        "histodrl",
        help="DRL / DIM pretraining defaults (pretrain --preset): histodrl = lambda 0.5 and the "
        "pre-activation global vector; paper = the paper's literal reading, lambda 0.01 on GLaS "
        "and 0.5 on PCam, post-ReLU (default: histodrl)",
        choices=PRESETS,
    )
    accelerator: str = option("auto", help="cpu, gpu or auto (every run)")
    num_workers: int | None = option(
        None, help="DataLoader workers (default: per scale)", check=at_least(0)
    )
    dry_run: bool = option(False, help="list the runs (reused or to run) only")
