"""What every training command shares: run directories, step-indexed sampling, atomic checkpoints.

A run is a folder (ARCHITECTURE.md "Runs"): ``config.yaml`` (every option written out, re-usable with
``--config``), ``checkpoints/last.ckpt``, ``metrics.csv`` and the command's own outputs.

Resuming is exact: the batches drawn at step ``t`` and every random number used in step ``t`` are
functions of ``(seed, t)`` only (:class:`StepBatchSampler`, :func:`step_generator`), so a run killed
at any point and continued with ``--resume`` from its last checkpoint computes the same updates as a
run that was never interrupted.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib.util
import logging
import math
import os
import platform
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader, Dataset, Sampler

from histodrl import __version__
from histodrl.errors import UserInputError
from histodrl.io import atomic_path, atomic_write, atomic_write_text

# Options that may differ when a run is resumed: where and how it runs, not what it computes.
RUNTIME_OPTIONS = frozenset(
    {
        "devices",
        "num_nodes",
        "strategy",
        "accelerator",
        "num_workers",
        "no_progress",
        "out",
        "checkpoint_every",
        "log_every",
        "cache_ram",
    }
)

# Options that describe how a command was started rather than what it computes.
_NOT_CONFIG = {"config", "resume", "overwrite", "debug", "command"}


# ------------------------------------------------------------------------------------------------
# Run directories
# ------------------------------------------------------------------------------------------------


def prepare_run_dir(out: str | os.PathLike[str], *, overwrite: bool, resume: bool) -> Path:
    """Create (or reuse, for ``resume``) a run folder.

    An existing non-empty folder is refused unless ``overwrite`` (it is then emptied) or ``resume``
    (it must hold ``checkpoints/last.ckpt``).
    """
    run = Path(out)
    if resume and overwrite:
        raise UserInputError("--resume and --overwrite: choose one")
    if resume:
        if not (run / "checkpoints" / "last.ckpt").is_file():
            raise UserInputError(f"{run}: nothing to resume (expected {run}/checkpoints/last.ckpt)")
        return run
    if run.exists() and not run.is_dir():
        raise UserInputError(f"{run}: exists and is not a folder")
    if run.is_dir() and any(run.iterdir()):
        if not overwrite:
            raise UserInputError(
                f"{run}: run folder already exists (use --resume to continue it or --overwrite)"
            )
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    return run


def config_dict(args: Any) -> dict[str, Any]:
    """The resolved options of a command as a plain dict (argparse internals dropped)."""
    items = vars(args) if not isinstance(args, dict) else args
    out: dict[str, Any] = {}
    for key, value in items.items():
        if key.startswith("_") or key in _NOT_CONFIG:
            continue
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out


def write_config(run: Path, config: dict[str, Any]) -> None:
    """Write ``RUN/config.yaml`` atomically."""
    atomic_write_text(run / "config.yaml", yaml.safe_dump(config, sort_keys=True))


def read_config(run: Path) -> dict[str, Any]:
    path = Path(run) / "config.yaml"
    if not path.is_file():
        raise UserInputError(f"{path}: not found (is {run} a histodrl run folder?)")
    return yaml.safe_load(path.read_text()) or {}


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


def resumed_config(run: Path, options: dict[str, Any], *, launcher: bool = True) -> dict[str, Any]:
    """A run's saved configuration, with the runtime options the user typed on top.

    ``options["explicit"]`` lists the options typed on the command line; ``None`` (a call from
    Python) lets every runtime option in ``options`` override the saved value.
    """
    saved = read_config(run) if launcher or (Path(run) / "config.yaml").is_file() else {}
    typed = options.get("explicit")
    explicit = RUNTIME_OPTIONS if typed is None else set(typed)
    runtime = {k: options[k] for k in RUNTIME_OPTIONS & explicit if options.get(k) is not None}
    config = {**saved, **runtime}
    if config.get("num_workers") is None:
        config["num_workers"] = default_workers()
    return config


def versions() -> dict[str, str]:
    """Versions worth recording in a model card."""
    import lightning

    return {
        "histodrl": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "cuda": str(torch.version.cuda),
    }


# ------------------------------------------------------------------------------------------------
# Randomness as a function of (seed, step)
# ------------------------------------------------------------------------------------------------


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any tuple of ints and strings (stable across runs and platforms)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def step_generator(seed: int, step: int, rank: int, device: torch.device | str) -> torch.Generator:
    """The generator for everything random in training step ``step`` on process ``rank``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, "step", step, rank))
    return gen


class StepBatchSampler(Sampler[list[int]]):
    """Yields the batches of a whole run, batch ``t`` being a function of ``(seed, t)`` only.

    Epoch ``e`` is a permutation of the dataset drawn from ``(seed, e)``; step ``t`` takes the
    ``t``-th slice of ``batch_size * world_size`` indices of that stream (incomplete tails are
    dropped), and process ``rank`` takes its own ``batch_size`` part. Iteration starts at
    ``start_step_fn()``, which the trainer points at its restored global step, so resuming replays
    nothing and skips nothing. With ``epoch_indices`` the indices of epoch ``e`` are offset by
    ``e * dataset_len`` (for :class:`histodrl.data.crops.EpochSeeded` datasets, whose random crops
    are a function of (seed, epoch, item)).
    """

    def __init__(
        self,
        dataset_len: int,
        batch_size: int,
        total_steps: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        epoch_indices: bool = False,
    ) -> None:
        if batch_size * world_size > dataset_len:
            raise UserInputError(
                f"batch size {batch_size} x {world_size} process(es) is larger than the dataset "
                f"({dataset_len} samples)"
            )
        self.dataset_len = dataset_len
        self.batch_size = batch_size
        self.total_steps = total_steps
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        # Datasets that draw a fresh random crop per epoch take ``epoch * len + i`` for item i.
        self.epoch_indices = epoch_indices
        self.start_step_fn: Callable[[], int] = lambda: 0

    @property
    def steps_per_epoch(self) -> int:
        return self.dataset_len // (self.batch_size * self.world_size)

    def _permutation(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))
        return torch.randperm(self.dataset_len, generator=gen)

    def __len__(self) -> int:
        return self.total_steps

    def __iter__(self) -> Iterator[list[int]]:
        global_batch = self.batch_size * self.world_size
        epoch, perm = -1, torch.empty(0, dtype=torch.long)
        for step in range(self.start_step_fn(), self.total_steps):
            e, k = divmod(step, self.steps_per_epoch)
            if e != epoch:
                epoch, perm = e, self._permutation(e)
            start = k * global_batch + self.rank * self.batch_size
            batch = perm[start : start + self.batch_size]
            if self.epoch_indices:
                batch = batch + e * self.dataset_len
            yield batch.tolist()


def step_loader(
    trainer: Any,
    dataset: Dataset,
    *,
    batch_size: int,
    total_steps: int,
    seed: int,
    num_workers: int,
    epoch_indices: bool = False,
) -> DataLoader:
    """The training DataLoader of a run: a :class:`StepBatchSampler` that starts at the trainer's
    (restored) global step, for this process's rank."""
    sampler = StepBatchSampler(
        dataset_len(dataset),
        batch_size,
        total_steps,
        seed=seed,
        rank=trainer.global_rank,
        world_size=trainer.world_size,
        epoch_indices=epoch_indices,
    )
    sampler.start_step_fn = lambda: trainer.global_step
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if num_workers > 0 else None,
    )


def total_steps_for(dataset_len: int, batch_size: int, world_size: int, epochs: float) -> int:
    return max(1, math.floor(epochs * (dataset_len // (batch_size * world_size))))


# ------------------------------------------------------------------------------------------------
# Lightning plumbing
# ------------------------------------------------------------------------------------------------


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
            if not Path(path).is_file():
                raise UserInputError(f"{path}: checkpoint not found")
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)

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
    loggers: list[Any] = [_run_csv_logger(run)]
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


def trainer_from_config(run: Path, config: dict[str, Any], **extra: Any):
    """:func:`make_trainer` with the shared run options of a command's resolved config."""
    devices: Any = config.get("devices", 1)
    devices = int(devices) if str(devices).isdigit() else devices
    return make_trainer(
        run,
        max_steps=-1,
        devices=devices,
        num_nodes=int(config.get("num_nodes", 1)),
        strategy=str(config.get("strategy", "auto")),
        precision=config.get("precision"),
        accelerator=str(config.get("accelerator", "auto")),
        checkpoint_every=int(config["checkpoint_every"]),
        log_every=int(config["log_every"]),
        progress=not config.get("no_progress"),
        deterministic=bool(config.get("deterministic")),
        sync_batchnorm=bool(config.get("sync_batchnorm")),
        **extra,
    )


def _run_csv_logger(run: Path):
    """Lightning's CSV logger writing ``RUN/metrics.csv``, which it keeps (and appends to) on resume.

    Lightning's own deletes an existing metrics file; :func:`trim_metrics` cuts it back to the
    resumed step instead.
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

    return RunCSVLogger(save_dir=str(run), name="", version="")


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


def checkpoint_step(path: Path) -> int:
    """The global step stored in a Lightning checkpoint (read with weights_only=True)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserInputError(f"{path}: not a readable checkpoint ({exc})") from exc
    return int(ckpt.get("global_step", 0))


def check_finite(value: torch.Tensor, name: str, step: int) -> None:
    """Stop with a one-line error when a loss is NaN or infinite (costs a host sync: call rarely)."""
    if not torch.isfinite(value).all():
        raise UserInputError(
            f"{name} is {value.item()} at step {step}: training diverged "
            "(lower the learning rate, check the input data, or use --precision 32-true)"
        )


def dataset_len(dataset: Dataset) -> int:
    try:
        return len(dataset)  # type: ignore[arg-type]
    except TypeError as exc:
        raise UserInputError("the data source has no length") from exc


def print_err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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
