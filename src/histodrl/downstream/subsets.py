"""Seeded label-fraction subsets, so that runs can be compared on the same labelled examples."""

from __future__ import annotations

import math

import numpy as np

from histodrl.errors import UserInputError


def subset_indices(
    n: int, fraction: float, seed: int, labels: np.ndarray | None = None
) -> np.ndarray:
    """Indices of a seeded subset holding ``fraction`` of ``n`` examples (sorted, at least one).

    With ``labels``, the subset is stratified by class (each class keeps ``fraction`` of its
    examples, rounded, with at least one example of every class present), so that 0.01% of PCam's
    262,144 patches gives 26 patches with both classes.
    """
    if not 0 < fraction <= 1:
        raise UserInputError(f"--label-fraction {fraction}: expected a number in (0, 1]")
    if n < 1:
        raise UserInputError("no labelled examples to take a fraction of")
    rng = np.random.default_rng(seed)
    if labels is None:
        k = max(1, round(fraction * n))
        return np.sort(rng.permutation(n)[:k])
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels has shape {labels.shape}, expected ({n},)")
    total = max(1, round(fraction * n))
    classes = np.unique(labels)
    chosen = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        # Proportional share, at least one per class.
        k = max(1, math.floor(total * len(members) / n + 0.5))
        chosen.append(rng.permutation(members)[:k])
    return np.sort(np.concatenate(chosen))
