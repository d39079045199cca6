"""Throughput of the dataset readers through a torch DataLoader, in one run.

Run: ``.venv/bin/python benchmarks/loaders.py [--patches 32768] [--batch 128] [--glas-images 85]``

PCam: writes an ``x`` file of ``--patches`` random 96x96x3 uint8 patches (and its ``y``) with h5py
in a temporary folder, then reads one shuffled epoch in batches of ``--batch`` with 0 and 2
DataLoader workers, three ways: per-item reads (the baseline: one HDF5 read per patch, as
torchvision's PCAM does, with ``__getitems__`` hidden), batched reads (:class:`PCamDataset`'s
``__getitems__``: one sorted read per batch) and ``cache_ram=True``. Prints patches/s and the
ratio to the per-item baseline with the same number of workers.

GLaS: writes ``--glas-images`` (default 85, as GLaS) random 775x522 train images in the GLaS layout, builds
:class:`GlasCrops` (crop 256, stride 64: 60 crops an image) and reads one shuffled epoch in
batches of 8 (the paper's batch) with 0 and 2 workers. Prints crops/s and the build time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from histodrl.data.glas import GlasCrops
from histodrl.data.pcam import PCamDataset, pcam_path


class PerItem(Dataset):
    """A dataset seen without its ``__getitems__``: the DataLoader fetches item by item."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index]


def write_pcam(root: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with h5py.File(pcam_path(root, "train", "x"), "w") as f:
        x = f.create_dataset("x", shape=(n, 96, 96, 3), dtype=np.uint8)
        for start in range(0, n, 4096):
            stop = min(n, start + 4096)
            x[start:stop] = rng.integers(0, 256, (stop - start, 96, 96, 3), dtype=np.uint8)
    with h5py.File(pcam_path(root, "train", "y"), "w") as f:
        f.create_dataset("y", data=rng.integers(0, 2, (n, 1, 1, 1), dtype=np.uint8))


def write_glas(root: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for k in range(1, n + 1):
        image = rng.integers(0, 256, (522, 775, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / f"train_{k}.bmp")
        Image.fromarray(np.zeros((522, 775), np.uint8)).save(root / f"train_{k}_anno.bmp")


def items_per_second(dataset: Dataset, batch: int, workers: int, seed: int) -> float:
    loader = DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
    )
    start = time.perf_counter()
    count = 0
    for data in loader:
        count += len(data[0]) if isinstance(data, list) else len(data)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=32768)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--glas-images", type=int, default=85)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        write_pcam(root, args.patches, args.seed)
        print(f"PCam: wrote {args.patches} patches in {time.perf_counter() - start:.1f} s")
        batched = PCamDataset(root, "train")
        start = time.perf_counter()
        cached = PCamDataset(root, "train", cache_ram=True)
        print(f"PCam: cache_ram load {time.perf_counter() - start:.1f} s")
        for workers in (0, 2):
            base = items_per_second(PerItem(batched), args.batch, workers, args.seed)
            print(f"PCam workers={workers} per-item reads  {base:9.0f} patches/s   1.00x")
            for name, data in (("batched reads ", batched), ("cache_ram     ", cached)):
                rate = items_per_second(data, args.batch, workers, args.seed)
                print(f"PCam workers={workers} {name}   {rate:9.0f} patches/s  {rate / base:5.2f}x")
        del cached

        glas = root / "glas"
        glas.mkdir()
        write_glas(glas, args.glas_images, args.seed)
        start = time.perf_counter()
        crops = GlasCrops(glas, crop=256, stride=64)
        print(
            f"GLaS: {len(crops)} crops of {args.glas_images} images built in "
            f"{time.perf_counter() - start:.2f} s"
        )
        for workers in (0, 2):
            rate = items_per_second(crops, 8, workers, args.seed)
            print(f"GLaS workers={workers} crops 256/64 batch 8 {rate:9.0f} crops/s")


if __name__ == "__main__":
    main()
