"""Randomness as a function of ``(seed, step)``: the step-indexed batch sampler and generators.

Resuming is exact: the batches drawn at step ``t`` and every random number used in step ``t`` are
functions of ``(seed, t)`` only (:class:`StepBatchSampler`, :func:`step_generator`), so a run killed
at any point and continued with ``--resume`` from its last checkpoint computes the same updates as a
run that was never interrupted.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from histodrl.errors import UserInputError


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


def planned_steps(per_epoch: int, epochs: float | None, max_steps: int | None) -> int:
    """The length of a run: ``--max-steps`` alone sets it; with ``--epochs`` it caps it.

    Args:
        per_epoch: steps in one epoch (>= 1).
        epochs: epochs, or ``None`` when only ``max_steps`` is given.
        max_steps: a number of steps or a cap (``None``: none).
    """
    if epochs is None:
        if max_steps is None:
            raise ValueError("epochs and max_steps are both None")
        return int(max_steps)
    total = max(1, math.floor(epochs * per_epoch))
    return min(total, int(max_steps)) if max_steps is not None else total


def dataset_len(dataset: Dataset) -> int:
    try:
        return len(dataset)  # type: ignore[arg-type]
    except TypeError as exc:
        raise UserInputError("the data source has no length") from exc
