"""The LightningModule that every pretraining method shares.

It owns the backbone (a VGG-19(-BN) trunk with torchvision key names), the optimizer (Adam, lr 1e-4,
METHOD.md (f)), the per-step random generator, the batch preparation on the training device (uint8 →
float, a random flip/90° rotation per image, ImageNet normalisation), logging helpers and the export of
the backbone. A method subclass adds its heads and its ``pretext_step`` loss, nothing else.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from torch import nn

from histodrl.data.augment import normalize, random_flip_rot90, to_float
from histodrl.errors import UserInputError
from histodrl.io import atomic_write_text
from histodrl.nn import save_encoder, vgg19, vgg19_bn
from histodrl.training import check_finite, step_generator, versions

ENCODER_FILE = "encoder.safetensors"
MODEL_CARD_FILE = "MODEL_CARD.md"


def build_encoder(arch: str, width: float) -> nn.Module:
    if arch == "vgg19_bn":
        return vgg19_bn(width=width)
    if arch == "vgg19":
        return vgg19(width=width)
    raise UserInputError(f"--arch {arch!r}: expected vgg19_bn or vgg19")


def scaled(channels: int, width: float) -> int:
    """Head widths follow the trunk's width multiplier (so width 1/8 test runs stay small)."""
    return max(1, round(channels * width))


class PretextModule(L.LightningModule):
    """Shared base of the pretext methods.

    Args:
        config: the resolved options of ``histodrl pretrain`` (a plain dict; saved in checkpoints).
        trained_tap: the deepest encoder map the method trains. Layers after it are frozen (they get
            no gradient from the method, METHOD.md (c)), which also keeps DDP from waiting for their
            gradients. They are exported as initialised.
    """

    #: the deepest tap this method trains; ``None`` means the whole trunk (pool5)
    trained_tap: ClassVar[str] = "pool5"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters(config)
        self.config = config
        self.seed = int(config.get("seed", 0))
        self.crop = int(config["crop"])
        self.encoder = build_encoder(config.get("arch", "vgg19_bn"), float(config["width"]))
        self.tap = self.tap_name()
        self._freeze_after(self.tap)
        self._step_gen: torch.Generator | None = None
        self._compiled: Any = None
        self.loader_factory: Any = None

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
        return scaled(channels, float(self.config["width"]))

    def configure_model(self) -> None:
        if self.config.get("compile") and self._compiled is None:
            # Compiled separately so that the state dict keeps the plain encoder's key names.
            self._compiled = torch.compile(self.encoder.forward_taps)

    def encode(self, x: torch.Tensor, taps: list[str]) -> dict[str, torch.Tensor]:
        """The encoder's maps at ``taps``, through the compiled trunk when ``--compile``."""
        fn = self._compiled if self._compiled is not None else self.encoder.forward_taps
        return fn(x, taps)

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

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss, logs = self.pretext_step(batch)
        logs = {"loss": loss, **logs}
        # A host sync, so only on logged steps and on steps followed by a checkpoint (a NaN must
        # never be saved over the last good checkpoint).
        step = self.global_step
        every = int(self.config.get("log_every", 10))
        ckpt_every = int(self.config.get("checkpoint_every", 500))
        if step % every == 0 or (step + 1) % ckpt_every == 0:
            check_finite(loss.detach(), "loss", step)
        foreign = logs.pop("foreign_negatives", None)
        if foreign is not None:  # minimum over processes: did every process see the others?
            self.log("train/foreign_negatives", foreign, sync_dist=True, reduce_fx="min")
        self.log_dict(
            {f"train/{k}": v.detach().float() for k, v in logs.items()},
            on_step=True,
            on_epoch=False,
            prog_bar=False,
            batch_size=batch.shape[0],
        )
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, logger=False)
        self._step_gen = None
        return loss

    def train_dataloader(self) -> Any:
        # Built after the processes are launched, when this process's rank is known.
        if self.loader_factory is None:
            raise RuntimeError("set module.loader_factory before trainer.fit")
        return self.loader_factory(self)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=float(self.config.get("lr", 1e-4)), betas=(0.9, 0.999))


# ------------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------------


def _last_metrics(run: Path) -> dict[str, float]:
    path = run / "metrics.csv"
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

    ckpt_path = run / "checkpoints" / "last.ckpt"
    if not ckpt_path.is_file():
        raise UserInputError(f"{ckpt_path}: not found (has {run} been trained?)")
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise UserInputError(f"{ckpt_path}: not a readable checkpoint ({exc})") from exc
    config = dict(ckpt.get("hyper_parameters") or {})
    if "method" not in config:
        raise UserInputError(f"{ckpt_path}: not a histodrl pretraining checkpoint")
    module = method_class(config["method"])(config)
    module.load_state_dict(ckpt["state_dict"])
    module.global_step_from_checkpoint = int(ckpt.get("global_step", 0))  # type: ignore[attr-defined]
    return module


def export_run(run: str | Path) -> Path:
    """Write ``RUN/encoder.safetensors`` and ``RUN/MODEL_CARD.md`` from the run's last checkpoint."""
    run = Path(run)
    module = load_module_from_checkpoint(run)
    config = module.config
    steps = int(getattr(module, "global_step_from_checkpoint", 0))
    meta = {
        "method": config["method"],
        "trained_tap": module.tap,
        "steps": steps,
        "seed": int(config.get("seed", 0)),
    }
    save_encoder(module.encoder, run / ENCODER_FILE, meta)
    atomic_write_text(run / MODEL_CARD_FILE, model_card(run, module, steps))
    return run / ENCODER_FILE


def model_card(run: Path, module: PretextModule, steps: int) -> str:
    config = module.config
    final = _last_metrics(run)
    lines = [
        f"# Encoder: {config['method']} pretraining",
        "",
        f"- Method: `{config['method']}` ({type(module).__doc__.strip().splitlines()[0]})",
        f"- Backbone: `{config.get('arch', 'vgg19_bn')}`, width {config['width']}; trained up to "
        f"`{module.tap}` (later layers are exported as initialised and should be trained downstream)",
        f"- Data: `{config['data']}`, crops of {config['crop']} px",
        f"- Steps: {steps}, batch {config['batch_size']} per process, Adam lr {config['lr']}",
        f"- Seed: {config['seed']}",
    ]
    if config["method"] == "drl":
        lo, hi = config["sigma_range"]
        size = config.get("deform_size") or config["crop"]
        lines.append(
            f"- Deformation: sigma ~ U[{lo}, {hi}] x S, alpha = {config['alpha_factor']} x S, "
            f"S = {size} px; zero-padded Gaussian smoothing, reflection sampling"
        )
    if config["method"] == "drl":
        lines.append(
            f"- DRL: tap `{config['tap']}`, FEM {'off' if config['no_fem'] else 'on'}, "
            f"GCH {config['gch']} (lambda {config['lambda_']}, tau {config['temperature']}), "
            f"LSH {config['lsh']}, prior gamma {config['gamma']}"
        )
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
        "from histodrl.nn import vgg19_bn",
        f"encoder = vgg19_bn(width={config['width']})",
        f'encoder.load_state_dict(load_file("{ENCODER_FILE}"))',
        "# torchvision: torchvision.models.vgg19_bn().load_state_dict(load_file(...), strict=False)",
        "```",
        "",
    ]
    return "\n".join(lines)
