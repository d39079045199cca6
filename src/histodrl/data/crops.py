"""Crop indexing: sliding windows that cover an image, and random crops reproducible per item.

Two jobs that every reader shares:

* :func:`window_starts` / :func:`sliding_windows`: the deterministic crops of GLaS pretraining
  (METHOD.md E19). The windows cover the whole image: they start at ``0, stride, 2*stride, ...``
  and, when the last of those stops short of the border, one more window is placed flush with the
  border. For the usual 775x522 GLaS image at crop 256, stride 64 that gives 10 x 6 = 60 windows
  (E19's "45 crops per image" is 9 x 5, the count without the flush windows, which leaves the
  right-most 7 columns and bottom-most 10 rows of every image unseen).
* :class:`EpochSeeded`: datasets whose items are random (random crops, random slide tiles) draw
  item ``i`` of epoch ``e`` from a numpy generator seeded with ``(seed, e, i)``. The draw therefore
  depends on nothing else: not on the worker that reads it, the number of workers, or the order of
  reads. The epoch is either set with :meth:`EpochSeeded.set_epoch` or carried in the index itself
  (``index = e * len(dataset) + i``), which lets a step-indexed sampler draw fresh crops every epoch
  without any state shared with the workers.
"""

from __future__ import annotations

import numpy as np


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets of windows of side ``crop`` that cover ``[0, length)`` at step ``stride``.

    Starts are ``0, stride, 2*stride, ...`` while the window fits, plus ``length - crop`` when the
    last regular window does not reach the border (so the last window is always flush with it).
    With ``stride <= crop`` every pixel is in some window; a longer stride leaves gaps between
    windows (but still reaches the border).

    Args:
        length: image side in pixels.
        crop: window side in pixels (1 <= crop <= length).
        stride: step between windows in pixels (>= 1).

    Returns:
        Increasing, unique start offsets; ``ceil((length - crop) / stride) + 1`` of them.

    Raises:
        ValueError: ``crop`` or ``stride`` below 1, or ``crop`` larger than ``length``.
    """
    if crop < 1 or stride < 1:
        raise ValueError(f"crop={crop}, stride={stride}: expected positive integers")
    if crop > length:
        raise ValueError(f"crop={crop}: larger than the image side {length}")
    starts = list(range(0, length - crop + 1, stride))
    if starts[-1] != length - crop:
        starts.append(length - crop)
    return starts


def sliding_windows(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners ``(top, left)`` of the covering windows of a ``height x width`` image.

    Row-major order (all windows of the first row of windows first). See :func:`window_starts`.
    A 775x522 (WxH) image at crop 256, stride 64 gives 6 rows x 10 columns = 60 windows.
    """
    return [
        (top, left)
        for top in window_starts(height, crop, stride)
        for left in window_starts(width, crop, stride)
    ]


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The numpy generator of item ``index`` in epoch ``epoch`` for a dataset seeded with ``seed``.

    Seeded with ``SeedSequence([seed, epoch, index])``: different (seed, epoch, index) triples give
    independent streams, equal triples give equal draws. All three must be non-negative.
    """
    if seed < 0 or epoch < 0 or index < 0:
        raise ValueError(f"seed={seed}, epoch={epoch}, index={index}: expected non-negative values")
    return np.random.default_rng([seed, epoch, index])


def random_crop_box(
    height: int, width: int, crop: int, rng: np.random.Generator
) -> tuple[int, int]:
    """Top-left corner ``(top, left)`` of a uniformly random ``crop x crop`` window.

    ``top`` is drawn first, then ``left``, each uniform over every position where the window fits.
    """
    if crop > height or crop > width:
        raise ValueError(f"crop={crop}: larger than the image ({width}x{height})")
    top = int(rng.integers(0, height - crop + 1))
    left = int(rng.integers(0, width - crop + 1))
    return top, left


def center_crop_box(height: int, width: int, crop: int) -> tuple[int, int]:
    """Top-left corner of the centred ``crop x crop`` window (rounded towards the top-left)."""
    if crop > height or crop > width:
        raise ValueError(f"crop={crop}: larger than the image ({width}x{height})")
    return (height - crop) // 2, (width - crop) // 2


class EpochSeeded:
    """Mixin for map-style datasets whose item ``i`` is a random draw seeded by (seed, epoch, i).

    A subclass sets ``self.seed`` and implements ``__len__``; it calls :meth:`split_index` on the
    incoming index to get ``(epoch, i)`` and :func:`item_rng` (or :meth:`rng`) for its draws.

    The epoch of an index ``k`` is ``self.epoch + k // len(self)``; its item is ``k % len(self)``.
    So a sampler may either call :meth:`set_epoch` before each epoch (it reaches DataLoader
    workers that start after the call, i.e. ``persistent_workers=False``, torch's default), or
    emit ``epoch * len(dataset) + i`` and leave the dataset's epoch at 0 (works with any workers).
    """

    seed: int
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the indices in ``[0, len(self))`` from now on."""
        if epoch < 0:
            raise ValueError(f"epoch={epoch}: expected a non-negative epoch")
        self.epoch = int(epoch)

    def split_index(self, index: int) -> tuple[int, int]:
        """``(epoch, item)`` of a possibly epoch-carrying index; negative indices are an error."""
        index = int(index)
        if index < 0:
            raise IndexError(f"index {index}: expected a non-negative index")
        epoch, item = divmod(index, len(self))  # type: ignore[arg-type]
        return self.epoch + epoch, item

    def rng(self, index: int) -> tuple[int, np.random.Generator]:
        """``(item, generator)`` for an incoming index: see :meth:`split_index` and :func:`item_rng`."""
        epoch, item = self.split_index(index)
        return item, item_rng(self.seed, epoch, item)
