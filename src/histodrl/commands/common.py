"""Option groups that several commands share: the run folder and devices, the encoder.

Commands combine them by inheritance (``class SegmentOptions(RunOptions, EncoderOptions)``); the
fields of each group are declared once, here.
"""

from __future__ import annotations

from histodrl.commands.options import Check, at_least, fraction, greater, option, options_class

PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
ARCHS = ("vgg19_bn", "vgg19")


def _devices_ok(value: str) -> bool:
    if value == "auto" or value == "-1":
        return True
    return value.isdigit() and int(value) >= 1


DEVICES = Check(_devices_ok, "a number >= 1, -1 (all) or auto")


def source_kind(spec: str) -> str:
    """The ``KIND`` of a ``KIND:PATH`` data source ('' when there is no colon)."""
    return spec.split(":", 1)[0] if ":" in spec else ""


@options_class
class RunOptions:
    """Where a training run writes, how it is seeded and on which devices it runs."""

    out: str = option(help="run folder to write", metavar="RUN", runtime=True, group="run")
    seed: int = option(0, help="seed of every random draw", check=at_least(0), group="run")
    devices: str = option(
        "1", help="devices per node: a number, -1 or auto", check=DEVICES, runtime=True, group="run"
    )
    num_nodes: int = option(
        1, help="nodes for multi-node DDP", check=at_least(1), runtime=True, group="run"
    )
    strategy: str = option(
        "auto",
        help="Lightning strategy (default: ddp if more than one device)",
        runtime=True,
        group="run",
    )
    accelerator: str = option(
        "auto", help="cpu, gpu or auto", choices=ACCELERATORS, runtime=True, group="run"
    )
    precision: str | None = option(
        None,
        help="Lightning precision (default: bf16-mixed on GPU, 32-true on CPU)",
        choices=PRECISIONS,
        group="run",
    )
    compile: bool = option(False, help="torch.compile the network", runtime=True, group="run")
    num_workers: int | None = option(
        None,
        help="DataLoader workers (default: min(4, CPUs))",
        check=at_least(0),
        runtime=True,
        group="run",
    )
    checkpoint_every: int = option(
        500, help="steps between checkpoints", check=at_least(1), runtime=True, group="run"
    )
    log_every: int = option(
        10, help="steps between logged rows", check=at_least(1), runtime=True, group="run"
    )
    no_progress: bool = option(False, help="no progress bar", runtime=True, group="run")
    deterministic: bool = option(False, help="deterministic algorithms (slower)", group="run")


@options_class
class EncoderOptions:
    """The trunk a downstream command builds and the weights it starts from."""

    init: str = option(
        "random",
        help="encoder weights: random (default), a pretraining RUN folder, FILE.safetensors, or "
        "imagenet:FILE (torchvision's vgg19_bn .pth)",
        group="encoder",
    )
    arch: str = option("vgg19_bn", help="trunk", choices=ARCHS, group="encoder")
    width: float = option(
        1.0,
        help="channel multiplier, as pretrained (tests: 0.125)",
        check=greater(0),
        group="encoder",
    )


def label_fraction_option() -> float:
    return option(
        1.0,
        help="seeded share of the labelled training split, in (0, 1] (paper: 0.0001 ... 1)",
        check=fraction(),
        group="labels",
    )
