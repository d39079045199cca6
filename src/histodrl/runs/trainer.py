"""Lightning plumbing of a run: the trainer, atomic checkpoints, the kept ``metrics.csv``.

Also the device helpers of the commands that run plain torch (``probe``, inference): one
:func:`autocast_for` and one :func:`resolve_device`.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from histodrl.errors import UserInputError
from histodrl.io import atomic_path, atomic_write


def atomic_checkpoint_io():
    """A Lightning CheckpointIO that writes to a temporary name and renames."""
    from lightning.fabric.utilities.types import _PATH
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(
            self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any = None
        ) -> None:
            with atomic_path(path) as tmp:
                torch.save(checkpoint, tmp)

        def load_checkpoint(
            self, path: _PATH, map_location: Any = None, weights_only: bool | None = None
        ) -> dict[str, Any]:
            return load_checkpoint_file(Path(path))

    return AtomicCheckpointIO()


def make_trainer(
    run: Path,
    *,
    max_steps: int,
    devices: int | str = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    precision: str | None = None,
    accelerator: str = "auto",
    checkpoint_every: int = 500,
    log_every: int = 10,
    progress: bool = True,
    deterministic: bool = False,
    sync_batchnorm: bool = False,
    extra_callbacks: list[Any] | None = None,
):
    """A Lightning Trainer writing into ``run``: CSV metrics, ``checkpoints/last.ckpt``."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

    warnings.filterwarnings("ignore", message=".*dataloader is\\s+not resumable.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*dataloader.*not resumable.*")
    # Lightning's own use of a deprecated torch API, nothing a user can act on.
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")

    # Lightning's start-up chatter (accelerator tips) is not what a user needs to read.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if precision is None:
        precision = "bf16-mixed" if torch.cuda.is_available() else "32-true"
    loggers: list[Any] = [_run_csv_logger(run, min(100, max(1, checkpoint_every)))]
    if importlib.util.find_spec("tensorboard") is not None:  # TensorBoard when installed
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run), name="tb", version=""))
    checkpoint = ModelCheckpoint(
        dirpath=str(run / "checkpoints"),
        save_last=True,
        save_top_k=0,
        every_n_train_steps=max(1, checkpoint_every),
        save_on_train_epoch_end=True,
    )
    callbacks: list[Any] = [checkpoint, *(extra_callbacks or [])]
    if progress:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, log_every)))
    if strategy == "auto" and (
        (isinstance(devices, int) and devices > 1) or num_nodes > 1 or devices == -1
    ):
        strategy = "ddp"
    if strategy == "ddp" and not torch.cuda.is_available():
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(process_group_backend="gloo")
    return L.Trainer(
        default_root_dir=str(run),
        max_steps=max_steps,
        max_epochs=-1,
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        precision=precision,
        logger=loggers,
        callbacks=callbacks,
        log_every_n_steps=max(1, log_every),
        enable_progress_bar=progress,
        enable_model_summary=False,
        deterministic=deterministic,
        sync_batchnorm=sync_batchnorm,
        use_distributed_sampler=False,
        plugins=[atomic_checkpoint_io()],
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )


def _run_csv_logger(run: Path, flush_every: int = 100):
    """Lightning's CSV logger writing ``RUN/metrics.csv``, which it keeps (and appends to) on resume.

    Lightning's own deletes an existing metrics file; :func:`trim_metrics` cuts it back to the
    resumed step instead. Rows are flushed at least as often as checkpoints are written, so a
    killed run's file holds every step its checkpoint holds.
    """
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    class KeepingWriter(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:
            if self._fs.isfile(self.metrics_file_path):
                with open(self.metrics_file_path, newline="") as f:
                    header = next(csv.reader(f), [])
                self.metrics_keys = list(header)

    class RunCSVLogger(CSVLogger):
        @property
        def experiment(self) -> ExperimentWriter:
            if self._experiment is None:
                self._fs.makedirs(self.root_dir, exist_ok=True)
                self._experiment = KeepingWriter(log_dir=self.log_dir)
            return self._experiment

    return RunCSVLogger(
        save_dir=str(run), name="", version="", flush_logs_every_n_steps=max(1, flush_every)
    )


def trim_metrics(run: Path, from_step: int) -> None:
    """Drop the rows of ``RUN/metrics.csv`` logged at or after ``from_step`` (they are redone)."""
    path = Path(run) / "metrics.csv"
    if not path.is_file():
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        rows = [
            r for r in reader if r.get("step") in (None, "") or int(float(r["step"])) < from_step
        ]

    def write(f: Any) -> None:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)

    atomic_write(path, write)


def load_checkpoint_file(path: Path) -> dict[str, Any]:
    """A checkpoint read with ``weights_only=True``; one-line errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: torch raises many types
        raise UserInputError(f"{path}: not a readable checkpoint ({_first_line(exc)})") from None
    if not isinstance(ckpt, dict):
        raise UserInputError(f"{path}: not a Lightning checkpoint")
    return ckpt


def checkpoint_step(path: Path) -> int:
    """The global step stored in a Lightning checkpoint."""
    return int(load_checkpoint_file(path).get("global_step", 0))


def autocast_for(device: torch.device, precision: str | None) -> Any:
    """The autocast context of a Lightning precision name on ``device``.

    ``bf16-mixed`` / ``bf16-true`` / ``bf16`` autocast to bfloat16, ``16-mixed`` / ``16`` to
    float16, anything else (``32-true``) is a no-op; ``None`` means bf16 on CUDA, float32 elsewhere.
    """
    if precision is None:
        precision = "bf16-mixed" if device.type == "cuda" else "32-true"
    precision = str(precision)
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def resolve_device(accelerator: str) -> torch.device:
    """The one device a plain-torch command runs on: ``auto`` picks CUDA when available.

    Raises:
        UserInputError: ``gpu``/``cuda`` asked for without a CUDA device, or an unknown name.
    """
    name = str(accelerator).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise UserInputError(f"--accelerator {accelerator}: no CUDA device is available")
        return torch.device("cuda")
    if name == "cpu":
        return torch.device("cpu")
    raise UserInputError(f"--accelerator {accelerator!r}: expected auto, cpu or gpu")


def check_accelerator(accelerator: str) -> None:
    """One-line error for an accelerator that this machine does not have (before any file is
    written)."""
    if str(accelerator).lower() in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserInputError(f"--accelerator {accelerator}: no CUDA device is available")


def trainer_for(run: Path, options: Any, callbacks: list[Any] | None = None):
    """:func:`make_trainer` with a command's run options (:class:`~histodrl.commands.common.
    RunOptions`); the step count is set by the lifecycle."""
    check_accelerator(options.accelerator)
    devices: Any = options.devices
    devices = int(devices) if str(devices).lstrip("-").isdigit() else devices
    return make_trainer(
        run,
        max_steps=-1,
        devices=devices,
        num_nodes=options.num_nodes,
        strategy=options.strategy,
        precision=options.precision,
        accelerator=options.accelerator,
        checkpoint_every=options.checkpoint_every,
        log_every=options.log_every,
        progress=not options.no_progress,
        deterministic=options.deterministic,
        sync_batchnorm=bool(getattr(options, "sync_batchnorm", False)),
        extra_callbacks=callbacks,
    )


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
