"""Cost of ``pretrain --monitor`` at the demo's settings: a run with and without the monitor.

Pretrains DRL as ``histodrl demo`` does (a generated GLaS-format set of 16 training images of
256x192, width 0.25, 96 px crops, batch 8, lr 3e-4, lambda 0.5, two loader workers) for
``--steps`` steps, without and with ``--monitor`` at its default ``--monitor-every`` and
``--monitor-images`` (or the ones given), alternating the two runs ``--repeats`` times, and prints
the wall time of each, the time spent in monitor evaluations, the ratio
``(with - without) / without`` (the monitor's target: at most 0.05) and, measured inside the
monitored run alone (robust to a shared machine's changing load), the evaluations' time over the
rest of that run.

    python benchmarks/monitor_overhead.py                      # glas monitor (pixel Dice)
    python benchmarks/monitor_overhead.py --monitor folder     # class folder (kNN, linear probe)
    python benchmarks/monitor_overhead.py --steps 900          # the demo's full length
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from histodrl.commands.pretrain import (
    DEFAULT_MONITOR_EVERY,
    DEFAULT_MONITOR_IMAGES,
    PretrainOptions,
)
from histodrl.data.synth_glas import make_glas
from histodrl.pretext import monitor as monitor_module
from histodrl.pretext.task import run_pretrain
from histodrl.runs.lifecycle import Launch


def _class_folder(root: Path, per_class: int = 160) -> Path:
    """Two classes of 128 px crops of generated tissue: glands (class 'gland') or not."""
    glas = make_glas(root / "src", n_train=24, n_test_a=1, n_test_b=1, size=(256, 192), seed=1)
    from histodrl.data.glas import GlasDataset

    rng = np.random.default_rng(0)
    counts = {"gland": 0, "stroma": 0}
    dataset = GlasDataset(glas, parts=("train",))
    for _ in range(200):
        for k in range(len(dataset)):
            item = dataset[k]
            image, label = item["image"], item["label"]
            top, left = rng.integers(0, 192 - 64), rng.integers(0, 256 - 64)
            share = float((label[top : top + 64, left : left + 64] > 0).mean())
            cls = "gland" if share > 0.5 else "stroma" if share < 0.1 else None
            if cls is None or counts[cls] >= per_class:
                continue
            folder = root / "classes" / cls
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[top : top + 64, left : left + 64]).save(
                folder / f"{counts[cls]}.png"
            )
            counts[cls] += 1
        if min(counts.values()) >= per_class:
            break
    return root / "classes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--monitor", choices=("glas", "folder"), default="glas")
    parser.add_argument("--every", type=int, default=DEFAULT_MONITOR_EVERY)
    parser.add_argument("--images", type=int, default=DEFAULT_MONITOR_IMAGES)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    spent = [0.0]
    evaluate_now = monitor_module.RepresentationMonitor.evaluate_now

    def timed(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        try:
            return evaluate_now(self, trainer, pl_module)
        finally:
            spent[0] += time.perf_counter() - start

    monitor_module.RepresentationMonitor.evaluate_now = timed  # type: ignore[method-assign]

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = make_glas(root / "glas", n_train=16, n_test_a=6, n_test_b=4, size=(256, 192), seed=0)
        spec = f"glas:{data}" if args.monitor == "glas" else f"folder:{_class_folder(root)}"
        base = {
            "method": "drl",
            "data": f"glas:{data}",
            "width": 0.25,
            "crop": 96,
            "batch_size": 8,
            "max_steps": args.steps,
            "lr": 3e-4,
            "lambda_": 0.5,
            "log_every": 5,
            "num_workers": min(2, os.cpu_count() or 1),
            "seed": 0,
            "no_progress": True,
        }
        times: dict[str, list[float]] = {"without": [], "with": []}
        evaluations: list[float] = []
        for r in range(args.repeats):
            for name in ("without", "with"):
                extra = (
                    {"monitor": spec, "monitor_every": args.every, "monitor_images": args.images}
                    if name == "with"
                    else {}
                )
                options = PretrainOptions(out=str(root / f"run-{name}-{r}"), **base, **extra)
                spent[0] = 0.0
                start = time.perf_counter()
                run_pretrain(options, Launch())
                times[name].append(time.perf_counter() - start)
                if name == "with":
                    evaluations.append(spent[0])
                print(f"run {r} {name:7s} monitor: {times[name][-1]:7.1f} s", flush=True)
    without = statistics.median(times["without"])
    with_ = statistics.median(times["with"])
    n_evals = len(range(0, args.steps + 1, args.every)) + (args.steps % args.every != 0)
    spent_eval = statistics.median(evaluations)
    print(
        f"monitor {args.monitor}, {args.steps} steps, every {args.every}, {args.images} images: "
        f"{n_evals} evaluations, {spent_eval:.1f} s in them ({spent_eval / n_evals:.2f} s each); "
        f"runs without {without:.1f} s, with {with_:.1f} s"
    )
    print(f"overhead ratio (with - without) / without = {(with_ - without) / without:.3f}")
    # Robust to a machine whose load changes between the runs: both parts of one monitored run.
    inside = statistics.median(e / (t - e) for e, t in zip(evaluations, times["with"], strict=True))
    print(f"within the monitored run: evaluations / the rest of the run = {inside:.3f}")


if __name__ == "__main__":
    main()
