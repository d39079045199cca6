"""``histodrl pretrain``: its options (torch-free); the run itself is :mod:`histodrl.pretext.task`."""

from __future__ import annotations

from histodrl.commands.common import ARCHS, RunOptions, source_kind
from histodrl.commands.options import (
    at_least,
    greater,
    option,
    options_class,
    with_values,
    within,
)
from histodrl.errors import UserInputError
from histodrl.pretext.options import (
    BATCH_CONTRASTIVE,
    METHODS,
    BaselineOptions,
    DeformationOptions,
    DRLOptions,
    preset_value,
)

_TRAIN = "training (every method)"

#: Data-dependent defaults: PCam patches are 96 px and the set is large.
DEFAULT_CROP = {"pcam": 96}
DEFAULT_EPOCHS = {"pcam": 20.0}
FALLBACK_CROP = 256
FALLBACK_EPOCHS = 200.0

_MONITOR = "monitor (a probe of the encoder while it trains; it changes nothing in the training)"
#: Labelled sources ``--monitor`` reads (:mod:`histodrl.pretext.monitor`).
MONITOR_KINDS = ("folder", "pcam", "glas", "masks", "monuseg")
#: Defaults measured to cost at most 5 % of pretraining at the demo's settings
#: (``benchmarks/monitor_overhead.py``).
DEFAULT_MONITOR_EVERY = 500
DEFAULT_MONITOR_IMAGES = 256


@options_class
class PretrainOptions(RunOptions, DRLOptions, DeformationOptions, BaselineOptions):
    method: str = option("drl", help="pretext method", choices=sorted(METHODS), group=_TRAIN)
    data: str = option(
        help="KIND:PATH with KIND in glas, folder, pcam, wsi, masks, monuseg", group=_TRAIN
    )
    epochs: float | None = option(
        None,
        help="epochs (default: 200; pcam: 20; with only --max-steps: set by it)",
        check=greater(0),
        group=_TRAIN,
    )
    max_steps: int | None = option(
        None,
        help="steps of the run (with an explicit --epochs: a cap on it)",
        check=at_least(1),
        group=_TRAIN,
    )
    batch_size: int = option(
        8, help="originals per step and process", check=at_least(1), group=_TRAIN
    )
    crop: int | None = option(
        None, help="crop side (default: 256; pcam: 96)", check=at_least(32), group=_TRAIN
    )
    lr: float = option(1e-4, help="Adam learning rate", check=greater(0), group=_TRAIN)
    arch: str = option("vgg19_bn", help="trunk", choices=ARCHS, group=_TRAIN)
    width: float = option(
        1.0, help="channel multiplier (tests: 0.125)", check=greater(0), group=_TRAIN
    )
    sync_batchnorm: bool = option(False, help="SyncBatchNorm across processes", group=_TRAIN)
    min_tissue: float = option(
        0.5, help="wsi: least tissue share per tile", check=within(0, 1), group=_TRAIN
    )
    mpp: float | None = option(
        None, help="wsi: target microns per pixel", check=greater(0), group=_TRAIN
    )
    level: int | None = option(None, help="wsi: pyramid level", check=at_least(0), group=_TRAIN)
    monitor: str | None = option(
        None,
        help="labelled KIND:DIR (folder, pcam: kNN and linear-probe accuracy; glas, masks, "
        "monuseg: pixel-probe Dice) to probe the frozen encoder on while it pretrains; point it "
        "at labelled data held out from pretraining (it is only a probe: its images never "
        "reach the pretext task, and it changes no weight)",
        metavar="KIND:DIR",
        runtime=True,
        group=_MONITOR,
    )
    monitor_every: int = option(
        DEFAULT_MONITOR_EVERY,
        help="steps between monitor evaluations (also at the first and the last step)",
        check=at_least(1),
        metavar="N",
        runtime=True,
        group=_MONITOR,
    )
    monitor_images: int = option(
        DEFAULT_MONITOR_IMAGES,
        help="images (folder, pcam) or crops (glas, masks, monuseg) of the monitor's fixed "
        "sample, half to fit the probes, half to score them",
        check=at_least(4),
        metavar="N",
        runtime=True,
        group=_MONITOR,
    )

    def check_options(self) -> None:
        if self.monitor is not None and source_kind(self.monitor) not in MONITOR_KINDS:
            raise UserInputError(
                f"--monitor {self.monitor}: expected a labelled source "
                f"{', '.join(k + ':DIR' for k in MONITOR_KINDS)}"
            )
        if self.method in BATCH_CONTRASTIVE and self.batch_size < 2:
            raise UserInputError(
                f"--batch-size {self.batch_size}: expected at least 2 images ({self.method} "
                "compares the images of a batch)"
            )

    def resolved(self) -> PretrainOptions:
        """The options with the data-dependent defaults filled in (crop; epochs unless
        ``--max-steps`` alone sets the length; ``--lambda`` and ``--global-head`` from
        ``--preset``)."""
        kind = source_kind(self.data)
        changes: dict[str, object] = {}
        if self.crop is None:
            changes["crop"] = DEFAULT_CROP.get(kind, FALLBACK_CROP)
        if self.epochs is None and self.max_steps is None:
            changes["epochs"] = DEFAULT_EPOCHS.get(kind, FALLBACK_EPOCHS)
        for name in ("lambda_", "global_head"):
            if getattr(self, name) is None:
                changes[name] = preset_value(self.preset, name, kind)
        return with_values(self, **changes) if changes else self
