"""The LightningModule that every pretraining method shares.

It owns the backbone (a VGG-19(-BN) trunk with torchvision key names), the optimizer (Adam, lr 1e-4,
METHOD.md (f)), the per-step random generator, the batch preparation on the training device (uint8 →
float, a random flip/90° rotation per image, ImageNet normalisation), logging helpers and the export of
the backbone. A method subclass adds its heads and its ``pretext_step`` loss, nothing else.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import lightning as L
import torch

from histodrl.commands.options import from_saved, to_config
from histodrl.data.augment import normalize, random_flip_rot90, to_float
from histodrl.errors import UserInputError
from histodrl.io import atomic_write_text
from histodrl.nn import build_encoder, save_encoder
from histodrl.runs.layout import (
    ENCODER_FILE,
    METRICS_CSV,
    MODEL_CARD_FILE,
    last_checkpoint,
    versions,
)
from histodrl.runs.lifecycle import LoaderFromTask
from histodrl.runs.sampling import step_generator
from histodrl.runs.trainer import load_checkpoint_file

if TYPE_CHECKING:
    from histodrl.commands.pretrain import PretrainOptions


def pretrain_options(options: PretrainOptions | Mapping[str, Any]) -> PretrainOptions:
    """Options given as an object, or as a mapping (a checkpoint's hyper-parameters), typed."""
    from histodrl.commands.pretrain import PretrainOptions

    if isinstance(options, PretrainOptions):
        return options
    return from_saved(PretrainOptions, options, "pretraining options")


def scaled(channels: int, width: float) -> int:
    """Head widths follow the trunk's width multiplier (so width 1/8 test runs stay small)."""
    return max(1, round(channels * width))


class PretextModule(LoaderFromTask, L.LightningModule):
    """Shared base of the pretext methods.

    Args:
        options: the resolved options of ``histodrl pretrain`` (saved in checkpoints as a
            mapping, from which :func:`load_module_from_checkpoint` rebuilds the module).
        trained_tap: the deepest encoder map the method trains. Layers after it are frozen (they get
            no gradient from the method, METHOD.md (c)), which also keeps DDP from waiting for their
            gradients. They are exported as initialised.
    """

    #: the deepest tap this method trains; ``None`` means the whole trunk (pool5)
    trained_tap: ClassVar[str] = "pool5"

    def __init__(self, options: PretrainOptions | Mapping[str, Any]) -> None:
        super().__init__()
        self.options = pretrain_options(options)
        # Fills what the data and --preset decide (crop, epochs, lambda, global head), if unset.
        self.options = self.options.resolved()
        self.save_hyperparameters(to_config(self.options))
        self.seed = self.options.seed
        self.crop = int(self.options.crop)
        self.encoder = build_encoder(self.options.arch, self.options.width)
        self.tap = self.tap_name()
        self._freeze_after(self.tap)
        self._step_gen: torch.Generator | None = None
        self._compiled: dict[str, Callable[..., Any]] = {}

    # -- structure ---------------------------------------------------------------------------------

    def tap_name(self) -> str:
        return self.trained_tap

    def _freeze_after(self, tap: str) -> None:
        last = self.encoder.tap_index(tap)
        for index, module in enumerate(self.encoder.features):
            if index > last:
                for p in module.parameters():
                    p.requires_grad_(False)

    def width(self, channels: int) -> int:
        return scaled(channels, self.options.width)

    def configure_model(self) -> None:
        if self.options.compile and not self._compiled:
            # Functions are compiled, not modules, so the state dict keeps its key names.
            self._compiled = {
                name: torch.compile(fn) for name, fn in self.compiled_functions().items()
            }

    def compiled_functions(self) -> dict[str, Callable[..., Any]]:
        """What ``--compile`` compiles, by name: the encoder's taps (:meth:`encode`). A method adds
        the tensors-only part of its step (DRL: from the prepared batch to the loss) and calls it
        through :meth:`compiled`."""
        return {"encode": self.encoder.forward_taps}

    def compiled(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` compiled when ``--compile`` (see :meth:`compiled_functions`), else ``fn``."""
        return self._compiled.get(name, fn)

    def encode(self, x: torch.Tensor, taps: list[str]) -> dict[str, torch.Tensor]:
        """The encoder's maps at ``taps``, through the compiled trunk when ``--compile``."""
        return self.compiled("encode", self.encoder.forward_taps)(x, taps)

    # -- batches -----------------------------------------------------------------------------------

    @property
    def generator(self) -> torch.Generator:
        """The random generator of the current step: a function of (seed, step, process)."""
        if self._step_gen is None:
            self._step_gen = step_generator(
                self.seed, self.global_step, self.global_rank, self.device
            )
        return self._step_gen

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> torch.Tensor:
        """uint8 (N,3,S,S) on the device → float in [0,1] with a random flip/rot90 per image."""
        if isinstance(batch, (list, tuple)):
            batch = batch[0]
        if isinstance(batch, dict):
            batch = batch["image"]
        self._step_gen = step_generator(self.seed, self.global_step, self.global_rank, self.device)
        return self.augment(to_float(batch))

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """A random flip/rot90 per image; a method whose labels depend on orientation overrides it."""
        return random_flip_rot90(x, generator=self.generator)

    def training_dataset(self, dataset: Any) -> Any:
        """The dataset the loader samples: ``dataset``, unless a method trains on its own view of it
        (exemplar: its seed items, each with its surrogate class)."""
        return dataset

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet normalisation and channels_last, the encoder's input layout."""
        return normalize(x).contiguous(memory_format=torch.channels_last)

    # -- training ----------------------------------------------------------------------------------

    # A method defines ``pretext_step(x) -> (loss, logs)``: the loss to minimise and the values to
    # log, for a batch ``x`` (N,3,S,S) in [0,1] on the device, already flipped/rotated.

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> dict[str, Any]:
        loss, logs = self.pretext_step(batch)
        logs = {"loss": loss, **logs}
        foreign = logs.pop("foreign_negatives", None)
        if foreign is not None:  # minimum over processes: did every process see the others?
            self.log("train/foreign_negatives", foreign, sync_dist=True, reduce_fx="min")
        terms = {k: v.detach().float() for k, v in logs.items()}
        self.log_dict(
            {f"train/{k}": v for k, v in terms.items()},
            on_step=True,
            on_epoch=False,
            prog_bar=False,
            batch_size=batch.shape[0],
        )
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, logger=False)
        self._step_gen = None
        # The run's FiniteWatch checks the loss and each term on the device (no host sync here).
        return {"loss": loss, "terms": terms}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.options.lr, betas=(0.9, 0.999))

    # -- export ------------------------------------------------------------------------------------

    def model_card_lines(self) -> list[str]:
        """Lines a method adds to the model card's settings (e.g. DRL's deformation)."""
        return []


# ------------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------------


def _last_metrics(run: Path) -> dict[str, float]:
    path = run / METRICS_CSV
    if not path.is_file():
        return {}
    last: dict[str, float] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                if v not in ("", None) and k.startswith("train/"):
                    last[k.removeprefix("train/")] = float(v)
                elif v not in ("", None) and k == "step":
                    last["step"] = float(v)
    return last


def load_module_from_checkpoint(run: Path) -> PretextModule:
    """Rebuild the method of a run from ``checkpoints/last.ckpt`` (read with weights_only=True)."""
    from histodrl.pretext import method_class

    ckpt_path = last_checkpoint(run)
    if not ckpt_path.is_file():
        raise UserInputError(f"{ckpt_path}: not found (has {run} been trained?)")
    ckpt = load_checkpoint_file(ckpt_path)
    saved = dict(ckpt.get("hyper_parameters") or {})
    if "method" not in saved:
        raise UserInputError(f"{ckpt_path}: not a histodrl pretraining checkpoint")
    options = pretrain_options({k: v for k, v in saved.items() if k != "compile"})
    module = method_class(options.method)(options)
    module.load_state_dict(ckpt["state_dict"])
    module.global_step_from_checkpoint = int(ckpt.get("global_step", 0))  # type: ignore[attr-defined]
    return module


def export_run(run: str | Path) -> Path:
    """Write ``RUN/encoder.safetensors`` and ``RUN/MODEL_CARD.md`` from the run's last checkpoint."""
    run = Path(run)
    module = load_module_from_checkpoint(run)
    steps = int(getattr(module, "global_step_from_checkpoint", 0))
    meta = {
        "method": module.options.method,
        "trained_tap": module.tap,
        "steps": steps,
        "seed": module.options.seed,
    }
    save_encoder(module.encoder, run / ENCODER_FILE, meta)
    atomic_write_text(run / MODEL_CARD_FILE, model_card(run, module, steps))
    return run / ENCODER_FILE


def model_card(run: Path, module: PretextModule, steps: int) -> str:
    o = module.options
    final = _last_metrics(run)
    lines = [
        f"# Encoder: {o.method} pretraining",
        "",
        f"- Method: `{o.method}` ({type(module).__doc__.strip().splitlines()[0]})",
        f"- Backbone: `{o.arch}`, width {o.width}; trained up to "
        f"`{module.tap}` (later layers are exported as initialised and should be trained downstream)",
        f"- Data: `{o.data}`, crops of {o.crop} px",
        f"- Steps: {steps}, batch {o.batch_size} per process, Adam lr {o.lr}",
        f"- Seed: {o.seed}",
        *module.model_card_lines(),
    ]
    lines += ["", "## Final logged values", ""]
    if final:
        lines += ["| value | last |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in sorted(final.items())]
    else:
        lines.append("(no metrics.csv in the run)")
    lines += ["", "## Versions", ""]
    lines += [f"- {k}: {v}" for k, v in versions().items()]
    lines += [
        "",
        "## Loading",
        "",
        "```python",
        "from safetensors.torch import load_file",
        f"from histodrl.nn import {o.arch}",
        f"encoder = {o.arch}(width={o.width})",
        f'encoder.load_state_dict(load_file("{ENCODER_FILE}"))',
        "# torchvision: torchvision.models.vgg19_bn().load_state_dict(load_file(...), strict=False)",
        "```",
        "",
    ]
    return "\n".join(lines)
