"""``histodrl pretrain``: resolve the options, build data and method, train, export."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from histodrl.data.crops import EpochSeeded
from histodrl.errors import UserInputError
from histodrl.training import (
    checkpoint_step,
    dataset_len,
    prepare_run_dir,
    resumed_config,
    step_loader,
    total_steps_for,
    trainer_from_config,
    trim_metrics,
    write_config,
)


def is_launcher_process() -> bool:
    """True in the process the user started; False in the extra processes a DDP launcher starts.

    Only the launcher prepares (or empties) the run folder and writes its config.
    """
    for var in ("SLURM_PROCID", "RANK"):
        if os.environ.get(var, "0") != "0":
            return False
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def resolve_config(options: dict[str, Any]) -> dict[str, Any]:
    """Fill the defaults that depend on the data source (crop, epochs, λ) and on the machine."""
    from histodrl.data.sources import parse_source

    # How the command was started is not part of the run's configuration.
    c = {k: v for k, v in options.items() if k not in ("resume", "overwrite", "explicit")}
    kind, _ = parse_source(c["data"])
    if c.get("crop") is None:
        c["crop"] = 96 if kind == "pcam" else 256
    if c.get("epochs") is None:
        c["epochs"] = 20.0 if kind == "pcam" else 200.0
    if c.get("num_workers") is None:
        c["num_workers"] = min(4, os.cpu_count() or 1)
    if isinstance(c.get("sigma_range"), tuple):
        c["sigma_range"] = list(c["sigma_range"])
    if c["batch_size"] < 2 and c.get("method") in ("drl", "dim"):
        raise UserInputError(f"--batch-size {c['batch_size']}: needs at least 2 images")
    if c["crop"] < 32:
        raise UserInputError(
            f"--crop {c['crop']}: expected at least 32 (the trunk halves it 5 times)"
        )
    return c


def run_pretrain(options: dict[str, Any]) -> int:
    import lightning as L

    from histodrl.data.sources import pretrain_dataset
    from histodrl.pretext import method_class
    from histodrl.pretext.base import export_run

    run = Path(options["out"])
    launcher = is_launcher_process()
    if options.get("resume"):
        config = resumed_config(run, options, launcher=launcher)
        if launcher:
            prepare_run_dir(run, overwrite=False, resume=True)
            trim_metrics(run, checkpoint_step(run / "checkpoints" / "last.ckpt"))
    else:
        config = resolve_config(options)
        if launcher:
            prepare_run_dir(run, overwrite=bool(options.get("overwrite")), resume=False)
    cls = method_class(config["method"])

    dataset = pretrain_dataset(
        config["data"],
        crop=int(config["crop"]),
        seed=int(config["seed"]),
        min_tissue=config.get("min_tissue", 0.5),
        mpp=config.get("mpp"),
        level=config.get("level"),
    )
    n = dataset_len(dataset)
    trainer = trainer_from_config(run, config)
    if options.get("resume"):
        total = int(config["total_steps"])
    else:
        total = total_steps_for(
            n, int(config["batch_size"]), trainer.world_size, float(config["epochs"])
        )
        if config.get("max_steps"):
            # --max-steps alone sets the length; with an explicit --epochs it caps it.
            cap = int(config["max_steps"])
            total = cap if options.get("epochs") is None else min(total, cap)
        config["total_steps"] = total
    config["data_description"] = getattr(dataset, "description", config["data"])
    trainer.fit_loop.epoch_loop.max_steps = total
    if launcher and not options.get("resume"):
        write_config(run, config)

    L.seed_everything(int(config["seed"]), workers=True, verbose=False)
    torch.use_deterministic_algorithms(bool(config.get("deterministic")), warn_only=True)
    module = cls(config)
    module.loader_factory = lambda m: _loader(m, dataset, config, total)
    ckpt = str(run / "checkpoints" / "last.ckpt") if options.get("resume") else None
    trainer.fit(module, ckpt_path=ckpt)
    # Lightning checkpoints every N steps; the last step must be saved whatever N is.
    trainer.save_checkpoint(run / "checkpoints" / "last.ckpt", weights_only=False)
    if trainer.is_global_zero:
        path = export_run(run)
        print(f"histodrl: wrote {path} and {run / 'MODEL_CARD.md'}")
    return 0


def _loader(module: Any, dataset: Any, config: dict[str, Any], total: int) -> DataLoader:
    dataset = module.training_dataset(dataset)
    return step_loader(
        module.trainer,
        dataset,
        batch_size=int(config["batch_size"]),
        total_steps=total,
        seed=int(config["seed"]),
        num_workers=int(config["num_workers"]),
        epoch_indices=isinstance(dataset, EpochSeeded),
    )
