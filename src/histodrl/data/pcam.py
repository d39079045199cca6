"""``pcam:DIR``: PatchCamelyon (PCam) from its official HDF5 files.

Layout (DATASETS_AND_METRICS.md §4): ``DIR/camelyonpatch_level_2_split_{split}_{x,y}.h5`` for the
splits ``train``, ``valid`` and ``test`` (262,144 / 32,768 / 32,768 patches in the release), each
``x`` file holding dataset ``x`` of shape (N, 96, 96, 3) uint8 (RGB, HWC) and each ``y`` file
dataset ``y`` of shape (N, 1, 1, 1) with 0/1 labels; optionally
``camelyonpatch_level_2_split_{split}_meta.csv`` (slide provenance). The release ships the HDF5
files gzipped: they must be gunzipped first (h5py cannot read ``.h5.gz``).

Reading rules (pitfalls of §4.1):
* HDF5 files are opened, checked and closed when the dataset is built; reads then open the ``x``
  file lazily in the process that reads (each DataLoader worker opens its own handle, and a handle
  inherited through fork is never used: the owning process id is tracked).
* Batched reads (:meth:`PCamDataset.__getitems__`, which torch's DataLoader calls with a whole
  batch) sort and de-duplicate the indices, read each patch once in file order (or one
  contiguous slice when the indices are dense), and put the patches back in the requested order.
  (h5py fancy indexing, ``x[indices]``, would need strictly increasing unique indices too, and is
  several times slower than one read per patch.)
* Patches are transposed HWC -> CHW (never reshaped).
* The labels (``y``, 32 kB for train) are read into memory when the dataset is built.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from histodrl.data.crops import EpochSeeded, center_crop_box, random_crop_box
from histodrl.errors import UserInputError

PCAM_SPLITS = ("train", "valid", "test")
PATCH_SHAPE = (96, 96, 3)
# A read touching fewer rows than this many times the number of patches wanted reads the whole
# row range in one contiguous slice instead of one read per patch.
_CONTIGUOUS_READ_FACTOR = 4


def pcam_path(root: str | os.PathLike[str], split: str, part: str) -> Path:
    """Path of a PCam file: ``part`` is ``"x"``, ``"y"`` (HDF5) or ``"meta"`` (CSV)."""
    if split not in PCAM_SPLITS:
        raise ValueError(f"split {split!r}: expected one of {', '.join(PCAM_SPLITS)}")
    suffix = {"x": "x.h5", "y": "y.h5", "meta": "meta.csv"}.get(part)
    if suffix is None:
        raise ValueError(f"part {part!r}: expected 'x', 'y' or 'meta'")
    return Path(root) / f"camelyonpatch_level_2_split_{split}_{suffix}"


def _require_file(path: Path) -> None:
    if path.is_file():
        return
    gz = path.with_name(path.name + ".gz")
    if gz.is_file():
        raise UserInputError(
            f"{path}: not found, but {gz.name} is there: decompress it first (gunzip -k {gz})"
        )
    raise UserInputError(f"{path}: file not found (expected the PCam HDF5 file)")


def _open_h5(path: Path) -> h5py.File:
    _require_file(path)
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise UserInputError(f"{path}: not a readable HDF5 file ({exc})") from exc


def _dataset(file: h5py.File, path: Path, key: str) -> h5py.Dataset:
    obj = file.get(key)
    if not isinstance(obj, h5py.Dataset):
        keys = ", ".join(sorted(file.keys())) or "none"
        raise UserInputError(f"{path}: no dataset {key!r} (found keys: {keys})")
    return obj


def check_pcam_x(path: str | os.PathLike[str]) -> int:
    """Validate a PCam ``x`` file and return its number of patches.

    Raises:
        UserInputError: missing file (with a gunzip hint when the ``.gz`` is there), not HDF5,
            no dataset ``x``, a shape other than (N, 96, 96, 3) or a dtype other than uint8.
    """
    path = Path(path)
    with _open_h5(path) as f:
        x = _dataset(f, path, "x")
        if x.ndim != 4 or tuple(x.shape[1:]) != PATCH_SHAPE or x.dtype != np.uint8:
            raise UserInputError(
                f"{path}: dataset 'x' is {x.dtype} {tuple(x.shape)} "
                f"(expected uint8 (N, {', '.join(map(str, PATCH_SHAPE))}))"
            )
        return int(x.shape[0])


def read_pcam_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a PCam ``y`` file as an int64 vector of 0/1 labels.

    Accepts dataset ``y`` of shape (N, 1, 1, 1) (the release) or any (N, 1, ..., 1).

    Returns:
        int64 array. Shape: (N,).

    Raises:
        UserInputError: missing or non-HDF5 file, no dataset ``y``, another shape, a non-integer
            dtype, or labels other than 0 and 1.
    """
    path = Path(path)
    with _open_h5(path) as f:
        y = _dataset(f, path, "y")
        if y.ndim < 1 or any(s != 1 for s in y.shape[1:]) or y.dtype.kind not in "iub":
            raise UserInputError(
                f"{path}: dataset 'y' is {y.dtype} {tuple(y.shape)} (expected integer (N, 1, 1, 1))"
            )
        labels = np.asarray(y[()]).reshape(-1).astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > 1):
        raise UserInputError(f"{path}: labels outside {{0, 1}} (expected tumour 1 / normal 0)")
    return labels


def _parse_column(values: list[str]) -> list[Any]:
    """Column values as ints, else floats, else booleans (``True``/``False``), else strings."""
    for convert in (int, float):
        try:
            return [convert(v) for v in values]
        except ValueError:
            continue
    if all(v in ("True", "False") for v in values):
        return [v == "True" for v in values]
    return values


def read_pcam_meta(path: str | os.PathLike[str]) -> dict[str, list[Any]]:
    """Read a PCam ``*_meta.csv`` as ``{column: values}`` (no pandas).

    The release's unnamed first column (the row index) is called ``"index"``. Columns whose values
    are all integers / numbers / ``True``-``False`` are converted, others stay strings; e.g.
    ``coord_y``, ``coord_x`` (int), ``tumor_patch``, ``center_tumor_patch`` (bool), ``wsi`` (str).

    Raises:
        UserInputError: an empty file or a row whose length differs from the header's.
    """
    path = Path(path)
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f) if row]
    if not rows:
        raise UserInputError(f"{path}: empty file (expected a CSV header)")
    header = [name.strip() or "index" for name in rows[0]]
    for line, row in enumerate(rows[1:], 2):
        if len(row) != len(header):
            raise UserInputError(f"{path} line {line}: {len(row)} fields (expected {len(header)})")
    columns = list(zip(*rows[1:])) if len(rows) > 1 else [() for _ in header]
    return {name: _parse_column(list(col)) for name, col in zip(header, columns)}


class PCamDataset(Dataset):
    """One PCam split: patches as uint8 CHW tensors, with their labels.

    Args:
        root: the folder holding the (gunzipped) PCam files.
        split: ``"train"``, ``"valid"`` or ``"test"``.
        cache_ram: read all patches into memory when the dataset is built (7.25 GB for train) and
            serve them from there. DataLoader workers started by fork share that memory; with the
            spawn start method every worker would receive a copy, so use fork (Linux's default).
        with_labels: read the ``y`` file and return ``(patch, label)``; when False the ``y`` file
            is not needed and items are patches alone (unlabelled pretraining).

    Attributes:
        labels: int64 numpy array (N,) of 0/1 labels, or ``None`` without labels.
        meta: the split's meta CSV as ``{column: values}`` (:func:`read_pcam_meta`), or ``None``
            when the file is absent.

    Shape:
        item: ``(uint8 tensor (3, 96, 96), int label)``, or the tensor alone without labels.

    Raises:
        UserInputError: a missing file (with a gunzip hint for ``.h5.gz``), a wrong key, shape or
            dtype, ``x`` and ``y`` (or the meta CSV) of different lengths, naming the file.
        ValueError: an unknown split.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        cache_ram: bool = False,
        with_labels: bool = True,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.x_path = pcam_path(root, split, "x")
        self.y_path = pcam_path(root, split, "y")
        self.with_labels = bool(with_labels)
        self.length = check_pcam_x(self.x_path)
        self.labels: np.ndarray | None = None
        if self.with_labels:
            self.labels = read_pcam_labels(self.y_path)
            if len(self.labels) != self.length:
                raise UserInputError(
                    f"{self.y_path}: {len(self.labels)} labels, expected {self.length} "
                    f"(one per patch of {self.x_path.name})"
                )
        meta_path = pcam_path(root, split, "meta")
        self.meta: dict[str, list[Any]] | None = None
        if meta_path.is_file():
            self.meta = read_pcam_meta(meta_path)
            rows = len(next(iter(self.meta.values()), []))
            if rows != self.length:
                raise UserInputError(
                    f"{meta_path}: {rows} rows, expected {self.length} (one per patch)"
                )
        self._cache: np.ndarray | None = None
        if cache_ram:
            with _open_h5(self.x_path) as f:
                self._cache = np.asarray(f["x"][()])
        self._file: h5py.File | None = None
        self._file_x: h5py.Dataset | None = None
        self._file_pid: int | None = None
        self.description = f"pcam:{self.root} {split} ({self.length} patches 96x96)"

    def __len__(self) -> int:
        return self.length

    def __getstate__(self) -> dict[str, Any]:
        # An open h5py handle cannot be pickled (spawned workers) and must not be shared.
        state = dict(self.__dict__)
        state["_file"] = None
        state["_file_x"] = None
        state["_file_pid"] = None
        return state

    def _x(self) -> h5py.Dataset:
        """The ``x`` dataset through a handle owned by this process (opened on first use)."""
        pid = os.getpid()
        if self._file_x is None or self._file_pid != pid:
            # A handle inherited through fork is replaced: HDF5 handles must not cross processes.
            self._file = _open_h5(self.x_path)
            self._file_x = self._file["x"]  # looked up once: a lookup costs more than a read
            self._file_pid = pid
        return self._file_x

    def read_patches(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Read several patches at once, in the order given (repeats allowed).

        Args:
            indices: patch indices in ``[-N, N)``.

        Returns:
            uint8 tensor, contiguous. Shape: (len(indices), 3, 96, 96).

        Raises:
            IndexError: an index out of range.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -self.length or idx.max() >= self.length):
            raise IndexError(f"index out of range for {self.length} patches")
        idx = np.where(idx < 0, idx + self.length, idx)
        if self._cache is not None:
            patches = self._cache[idx]
        elif idx.size == 0:
            patches = np.empty((0, *PATCH_SHAPE), dtype=np.uint8)
        else:
            unique, inverse = np.unique(idx, return_inverse=True)
            x = self._x()
            first, last = int(unique[0]), int(unique[-1])
            if last - first + 1 <= _CONTIGUOUS_READ_FACTOR * len(unique):
                block = x[first : last + 1]
                patches = block[unique - first][inverse]
            else:
                # One read per patch, in file order: several times faster than h5py's point
                # selection x[unique] (measured in benchmarks/loaders.py).
                patches = np.empty((len(unique), *PATCH_SHAPE), dtype=np.uint8)
                for k, i in enumerate(unique.tolist()):
                    patches[k] = x[i]
                patches = patches[inverse]
        return torch.from_numpy(np.ascontiguousarray(patches.transpose(0, 3, 1, 2)))

    def __getitem__(self, index: int) -> Any:
        patch = self.read_patches([index])[0]
        if self.labels is None:
            return patch
        return patch, int(self.labels[index])

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """Batched fetch for torch's DataLoader: one HDF5 read for the whole batch."""
        patches = self.read_patches(indices)
        if self.labels is None:
            return list(patches)
        return [(p, int(self.labels[i])) for p, i in zip(patches, indices)]


class PCamPatches(EpochSeeded, Dataset):
    """PCam patches for pretraining: one split's ``x`` only, cropped to ``crop``.

    Args:
        root: the PCam folder.
        crop: output side, 1..96. At 96 patches are returned whole.
        crop_mode: ``"center"`` (the centred window) or ``"random"`` (a window drawn from
            :func:`histodrl.data.crops.item_rng` ``(seed, epoch, index)``, top row first).
        seed: seed of the random crops (>= 0).
        split: which split to read (pretraining uses ``"train"``, METHOD.md E18).
        cache_ram: as in :class:`PCamDataset`.

    Shape:
        item: uint8 tensor (3, crop, crop).

    Raises:
        UserInputError: as :class:`PCamDataset` (the ``y`` file is not needed).
        ValueError: ``crop`` outside 1..96, an unknown ``crop_mode``, a negative ``seed``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        crop: int = 96,
        crop_mode: str = "center",
        seed: int = 0,
        split: str = "train",
        cache_ram: bool = False,
    ) -> None:
        if not 1 <= crop <= PATCH_SHAPE[0]:
            raise ValueError(f"crop={crop}: expected 1..{PATCH_SHAPE[0]} (PCam patches are 96x96)")
        if crop_mode not in ("center", "random"):
            raise ValueError(f"crop_mode={crop_mode!r}: expected 'center' or 'random'")
        if seed < 0:
            raise ValueError(f"seed={seed}: expected a non-negative seed")
        self.patches = PCamDataset(root, split, cache_ram=cache_ram, with_labels=False)
        self.crop = int(crop)
        self.crop_mode = crop_mode
        self.seed = int(seed)
        crop_text = "whole" if crop == PATCH_SHAPE[0] else f"{crop_mode} crops {crop}x{crop}"
        self.description = (
            f"pcam:{self.patches.root} {split} x ({len(self.patches)} patches 96x96, {crop_text})"
        )

    def __len__(self) -> int:
        return len(self.patches)

    def _crop(self, patch: torch.Tensor, index: int) -> torch.Tensor:
        size = PATCH_SHAPE[0]
        if self.crop == size:
            return patch
        if self.crop_mode == "center":
            top, left = center_crop_box(size, size, self.crop)
        else:
            _, rng = self.rng(index)
            top, left = random_crop_box(size, size, self.crop, rng)
        return patch[:, top : top + self.crop, left : left + self.crop].clone()

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[torch.Tensor]:
        items = [self.split_index(i)[1] for i in indices]
        patches = self.patches.read_patches(items)
        return [self._crop(p, i) for p, i in zip(patches, indices)]
