"""The CPU label-efficiency benchmark: DRL and DIM against random init on real MoNuSeg tiles.

Runs ``histodrl label-efficiency`` on the 30 MoNuSeg 2018 training tiles in
``../shared/data/real/monuseg-train/`` (beside the repository; 1000x1000 px at 0.25 µm/px, nucleus
masks), split with the default split seed and ``--test-fraction 0.33`` into 20 tiles for
pretraining and fine-tuning and 10 for scoring, at ``--scale cpu`` (quarter-width trunk, 128 px
crops; steps sized so that drl, dim, random x 5 seeds x 2-4 label counts take 30-60 min on 2
CPU cores), and prints the table of mean ± sd over seeds with Welch and paired p-values. Finished
runs in ``--out`` are reused, so an interrupted benchmark continues where it stopped.

    python benchmarks/label_efficiency.py --dry-run            # the plan and its estimated time
    python benchmarks/label_efficiency.py                      # the whole benchmark (30-40 min)
    python benchmarks/label_efficiency.py --seeds 1 --labels 2 # one seed, one label count
    python benchmarks/label_efficiency.py --scale smoke --seeds 2 --methods drl,random
                                                               # the harness (10 runs; scoring
                                                               # 10 full tiles dominates)

Machine load matters on a shared machine: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

MONUSEG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / "monuseg-train"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="label-efficiency-monuseg", help="output folder")
    parser.add_argument("--scale", default="cpu", choices=("smoke", "cpu", "paper"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--labels", default="2,4", help="label counts (training tiles)")
    parser.add_argument("--methods", default="drl,dim,random")
    parser.add_argument("--data", default=str(MONUSEG), help="the MoNuSeg folder")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and its time")
    args = parser.parse_args(argv)
    if not Path(args.data).is_dir():
        print(f"skipped: no MoNuSeg tiles at {args.data} (the shared folder beside the repository)")
        return 0

    from histodrl.commands.label_efficiency import LabelEfficiencyOptions
    from histodrl.errors import UserInputError
    from histodrl.experiments.label_efficiency import label_efficiency

    options = LabelEfficiencyOptions(
        data=f"monuseg:{args.data}",
        labels=args.labels,
        methods=args.methods,
        seeds=args.seeds,
        out=args.out,
        scale=args.scale,
        test_fraction=0.33,
        dry_run=args.dry_run,
    )
    print(f"load average before: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)", flush=True)
    start = time.monotonic()
    try:
        status = label_efficiency(options)
    except UserInputError as exc:
        print(f"label_efficiency: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wall time {time.monotonic() - start:.0f} s; load average after: {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
