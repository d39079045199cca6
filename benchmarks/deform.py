"""Throughput of the elastic deformation against a plain scipy implementation, in one run.

Run: ``.venv/bin/python benchmarks/deform.py [--batch 8] [--size 256] [--seconds 4] [--device cpu]``

Prints images/s of :func:`histodrl.deform.elastic_deform` (exact, and the approximate mode) and of
the canonical scipy recipe (``gaussian_filter(mode="constant")`` + ``map_coordinates(order=1)``,
one image at a time), with sigma = 0.04 S and alpha = 2 S, and the ratios against scipy. The
scipy baseline always runs on the CPU, so on a GPU the ratio mixes devices; the images/s are what
matters there.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from scipy.ndimage import gaussian_filter, map_coordinates

from histodrl.deform import elastic_deform


def scipy_elastic_deform(
    images: np.ndarray, sigma: float, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    """The canonical per-image recipe; ``mode="mirror"`` is ``grid_sample``'s reflection."""
    out = np.empty_like(images)
    _, channels, height, width = images.shape
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    for b in range(images.shape[0]):
        dx = gaussian_filter(rng.uniform(-1, 1, (height, width)), sigma, mode="constant") * alpha
        dy = gaussian_filter(rng.uniform(-1, 1, (height, width)), sigma, mode="constant") * alpha
        coords = np.stack((rows + dy, cols + dx))
        for c in range(channels):
            out[b, c] = map_coordinates(images[b, c], coords, order=1, mode="mirror")
    return out


def images_per_second(
    methods: dict[str, Callable[[], object]],
    batch: int,
    seconds: float,
    sync: Callable,
    rounds: int,
) -> dict[str, float]:
    """Time the methods in interleaved bursts, so a change of machine load hits them all alike."""
    for fn in methods.values():
        fn()  # warm-up: first-call allocations and kernel selection
    sync()
    elapsed = dict.fromkeys(methods, 0.0)
    done = dict.fromkeys(methods, 0)
    for _ in range(rounds):
        for name, fn in methods.items():
            start = time.perf_counter()
            while True:
                fn()
                done[name] += batch
                sync()
                if time.perf_counter() - start >= seconds / rounds:
                    break
            elapsed[name] += time.perf_counter() - start
    return {name: done[name] / elapsed[name] for name in methods}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=4.0, help="time per method")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved bursts per method")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: all)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    size, batch = args.size, args.batch
    sigma, alpha = 0.04 * size, 2.0 * size
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.rand((batch, 3, size, size), generator=generator, device=device)
    images_np = images.cpu().numpy()
    rng = np.random.default_rng(0)

    methods = {
        "scipy gaussian_filter + map_coordinates": lambda: scipy_elastic_deform(
            images_np, sigma, alpha, rng
        ),
        "elastic_deform exact": lambda: elastic_deform(images, sigma, alpha, generator=generator),
        "elastic_deform approximate": lambda: elastic_deform(
            images, sigma, alpha, generator=generator, approximate=True
        ),
    }
    rates = images_per_second(methods, batch, args.seconds, sync, args.rounds)
    baseline = rates["scipy gaussian_filter + map_coordinates"]
    print(
        f"elastic deformation, {batch}x3x{size}x{size}, sigma={sigma:g} alpha={alpha:g}, "
        f"device={device}, torch threads={torch.get_num_threads()}"
    )
    for name, rate in rates.items():
        print(f"  {name:42s} {rate:8.1f} img/s   {rate / baseline:5.2f}x scipy")


if __name__ == "__main__":
    main()
