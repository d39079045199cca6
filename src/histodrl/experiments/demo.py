"""``histodrl demo``: the whole pipeline on generated data, in minutes on a laptop CPU.

1. ``synth glas``: a small GLaS-format data set (H&E-like images, instance-labelled glands).
2. ``pretrain --method drl`` on its training images (no labels used).
3. ``segment`` twice on a fraction of the labels: the encoder initialised from DRL, and at random.
4. Both scored on test A and test B with the GLaS object metrics; ``OUT/report.md`` gets the metric
   table, the pretraining loss curves, a deformation preview and segmentation overlays.

The demo is small by design (a quarter-width trunk, 96 px crops, a few hundred steps): it shows the
pipeline working end to end, not the paper's numbers (``histodrl reproduce --scale paper`` is for a
GPU). ``--minutes`` scales every step budget; the default of 10 fits a 2-core laptop.
"""

from __future__ import annotations

import csv
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from histodrl.errors import UserInputError
from histodrl.io import atomic_path, atomic_write_text
from histodrl.runs.layout import FIGURES_DIR, METRICS_CSV
from histodrl.runs.lifecycle import Launch

MARKER = ".histodrl-demo"

# Step budgets at --minutes 10, measured on a 2-core CPU (see the README's demo timing).
WIDTH = 0.25
CROP = 96
PRETRAIN_STEPS = 900
SEGMENT_STEPS = 450
LABEL_FRACTION = 0.5
# The generated data set: images per part, and their size in px (width, height).
N_TRAIN, N_TEST_A, N_TEST_B = 16, 6, 4
#: Training images of the monitor's separate generated set (``pretrain --monitor``).
N_MONITOR = 8
IMAGE_SIZE = (256, 192)


def _stage(number: int, total: int, text: str) -> float:
    print(f"[{number}/{total}] {text}", flush=True)
    return time.monotonic()


def _done(start: float) -> None:
    print(f"      done in {time.monotonic() - start:.0f} s", flush=True)


def _prepare_out(out: Path) -> None:
    """The demo owns its folder: a previous demo's output is replaced, anything else refused."""
    if out.exists():
        if not out.is_dir():
            raise UserInputError(f"{out}: exists and is not a folder")
        if any(out.iterdir()):
            if not (out / MARKER).is_file():
                raise UserInputError(
                    f"{out}: folder exists and was not written by histodrl demo (use --out)"
                )
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by histodrl demo; replaced by the next demo run\n")


def run_demo(out: Path, minutes: float = 10.0) -> int:
    """Run the demo into ``out`` within about ``minutes``; returns the exit status.

    Each stage calls the library (the functions behind ``histodrl synth glas``, ``pretrain``,
    ``segment`` and ``deform-preview``); a stage's :class:`UserInputError` ends the demo as it is.
    """
    from histodrl.commands.pretrain import PretrainOptions
    from histodrl.commands.segment import SegmentOptions
    from histodrl.data.synth_glas import make_glas
    from histodrl.downstream.segment import run_segment
    from histodrl.experiments.preview import deform_preview
    from histodrl.pretext.task import run_pretrain

    if minutes <= 0:
        raise UserInputError(f"--minutes {minutes}: expected a positive number")
    out = Path(out)
    scale = minutes / 10.0
    pretrain_steps = max(10, round(PRETRAIN_STEPS * scale))
    segment_steps = max(10, round(SEGMENT_STEPS * scale))
    workers = min(2, os.cpu_count() or 1)
    began = time.monotonic()
    _prepare_out(out)
    total = 5

    t = _stage(1, total, "generating a GLaS-format data set (synth glas)")
    data = make_glas(
        out / "data" / "glas",
        n_train=N_TRAIN,
        n_test_a=N_TEST_A,
        n_test_b=N_TEST_B,
        size=IMAGE_SIZE,
        seed=0,
    )
    what = f"{N_TRAIN} train, {N_TEST_A} testA, {N_TEST_B} testB images"
    print(f"histodrl: wrote synthetic glas ({what}) to {data}", flush=True)
    # The monitor's own labelled images: another draw of the generator, never pretrained on.
    monitor_data = make_glas(
        out / "data" / "glas-monitor",
        n_train=N_MONITOR,
        n_test_a=1,
        n_test_b=0,
        size=IMAGE_SIZE,
        seed=1,
    )
    _done(t)

    t = _stage(
        2, total, f"pretraining DRL on the unlabeled training images ({pretrain_steps} steps)"
    )
    pretrain = out / "pretrain-drl"
    common: dict[str, Any] = {"width": WIDTH, "crop": CROP, "num_workers": workers, "seed": 0}
    pretrain_options = PretrainOptions(
        method="drl",
        data=f"glas:{data}",
        out=str(pretrain),
        batch_size=8,
        max_steps=pretrain_steps,
        lr=3e-4,
        log_every=5,
        monitor=f"glas:{monitor_data}",
        monitor_every=max(10, pretrain_steps // 6),
        **common,
    )
    run_pretrain(pretrain_options, Launch())
    _done(t)

    results: dict[str, dict[str, Any]] = {}
    for number, (name, init) in enumerate([("DRL", str(pretrain)), ("random init", "random")], 3):
        t = _stage(
            number,
            total,
            f"segmentation from {name} on {LABEL_FRACTION:.0%} of the labels "
            f"({segment_steps} steps)",
        )
        run = out / ("segment-drl" if name == "DRL" else "segment-random")
        segment_options = SegmentOptions(
            data=f"glas:{data}",
            init=init,
            out=str(run),
            label_fraction=LABEL_FRACTION,
            max_steps=segment_steps,
            batch_size=4,
            min_object_area=30,
            figures=2,
            **common,
        )
        results[name] = {"run": run, "metrics": run_segment(segment_options, Launch())}
        _done(t)

    t = _stage(5, total, "writing the report")
    preview = out / "figures" / "deformation.png"
    sample = sorted(data.glob("train_1.bmp"))[0]
    print(f"histodrl: {deform_preview(sample, preview, size=192)}", flush=True)
    curves = _loss_curves(pretrain, out / "figures" / "pretraining_losses.png")
    table = _metric_table(results)
    minutes_taken = (time.monotonic() - began) / 60
    report = _report(table, results, pretrain, preview, curves, out, minutes_taken, scale)
    atomic_write_text(out / "report.md", report)
    _done(t)
    print()
    print(table)
    print()
    print(f"histodrl demo: {minutes_taken:.1f} min; report: {out / 'report.md'}")
    return 0


def _metric(metrics: dict[str, Any], part: str, name: str) -> float | None:
    value = metrics.get(part, {})
    value = value.get("pooled", value)
    return value.get(name) if isinstance(value, dict) else None


def _metric_table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| encoder init | part | F1 | object Dice | object Hausdorff |",
        "|---|---|---|---|---|",
    ]
    for name, result in results.items():
        for part in ("testA", "testB"):
            vals = [_metric(result["metrics"], part, k) for k in ("f1", "dice", "hausdorff")]
            cells = [
                "n/a" if v is None else f"{v:.3f}" if i < 2 else f"{v:.1f}"
                for i, v in enumerate(vals)
            ]
            lines.append(f"| {name} | {part} | {' | '.join(cells)} |")
    return "\n".join(lines)


#: The pretraining columns the report draws and summarises.
LOSS_KEYS = (
    "train/lsh",
    "train/gch",
    "train/gch_acc",
    "train/prior",
    "train/prior_d",
    "train/sigmoid_pos",
    "train/sigmoid_neg",
)


def _series(run: Path) -> dict[str, list[tuple[float, float]]]:
    """``{key: [(step, value), ...]}`` of :data:`LOSS_KEYS` from ``run/metrics.csv``."""
    series: dict[str, list[tuple[float, float]]] = {}
    path = run / METRICS_CSV
    if not path.is_file():
        return series
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for key in LOSS_KEYS:
                if row.get(key) not in (None, ""):
                    series.setdefault(key, []).append((float(row["step"]), float(row[key])))
    return series


def _loss_curves(run: Path, png: Path) -> Path | None:
    """Plot the logged pretraining losses (L_LSH, L_GCH, prior) against the step."""
    path = run / METRICS_CSV
    if not path.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = _series(run)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    names = {
        "train/lsh": "L_LSH",
        "train/gch": "L_GCH",
        "train/prior": "prior (encoder)",
        "train/prior_d": "prior (discriminator)",
    }
    for key, label in names.items():
        if key in series:
            xs, ys = zip(*series[key])
            ax1.plot(xs, ys, label=label)
    ax1.set_xlabel("step")
    ax1.set_title("pretraining losses")
    ax1.legend()
    for key, label in (("train/sigmoid_pos", "mean σ(T+)"), ("train/sigmoid_neg", "mean σ(T−)")):
        if key in series:
            xs, ys = zip(*series[key])
            ax2.plot(xs, ys, label=label)
    ax2.set_xlabel("step")
    ax2.set_ylim(0, 1)
    ax2.set_title("local discriminator: originals vs deformed")
    ax2.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return png


def _loss_lines(pretrain: Path) -> list[str]:
    """The report's sentence on the loss terms: the first and last logged means of each."""
    series = _series(pretrain)

    def ends(key: str) -> tuple[float, float] | None:
        values = [v for _, v in series.get(key, [])]
        if not values:
            return None
        n = max(1, min(10, len(values) // 4))
        return sum(values[:n]) / n, sum(values[-n:]) / n

    parts = []
    for key, name in (
        ("train/lsh", "L_LSH"),
        ("train/gch", "L_GCH"),
        ("train/gch_acc", "GCH accuracy"),
        ("train/prior_d", "the prior discriminator's loss"),
    ):
        pair = ends(key)
        if pair is not None:
            parts.append(f"{name} {pair[0]:.2f} → {pair[1]:.2f}")
    if not parts:
        return []
    return [
        "First and last logged values (means of up to 10): " + "; ".join(parts) + ". L_GCH at "
        "chance is log 8 ≈ 2.08 (batch 8: one of 8 deformed copies); the prior discriminator "
        "starts at 2 log 2 ≈ 1.39, and near 0 it would have won by a trivial rule.",
        "",
    ]


def _monitor_lines(pretrain: Path, rel: Any) -> list[str]:
    """The report's monitor paragraph: the probe's first and last score and the figure."""
    from histodrl.pretext.monitor import FIGURE_FILE, read_monitor_curves, run_tap

    curves = read_monitor_curves(pretrain)
    figure = pretrain / FIGURES_DIR / FIGURE_FILE
    tap = run_tap(pretrain)
    key = next((k for k in curves if k == "monitor/pixel_dice"), None)
    if key is None or not figure.is_file():
        return []
    steps, values = curves[key]
    verdict = (
        "above the random initialisation"
        if values[-1] > values[0]
        else "not above the random "
        "initialisation: on this run the pretraining did not improve what the probe can read"
    )
    return [
        "The representation while it trained (`pretrain --monitor`): a per-pixel linear probe "
        f"on the frozen encoder's `{tap}` features, fitted on crops of half of a separately "
        "generated labelled set (`data/glas-monitor`, never pretrained on) and scored by gland "
        f"Dice on the other half: {values[0]:.3f} at step {steps[0]} (the random "
        f"initialisation), {values[-1]:.3f} at step {steps[-1]}, {verdict}.",
        "",
        f"![monitor]({rel(figure)})",
        "",
    ]


def _report(
    table: str,
    results: dict[str, dict[str, Any]],
    pretrain: Path,
    preview: Path,
    curves: Path | None,
    out: Path,
    minutes_taken: float,
    scale: float,
) -> str:
    def rel(p: Path) -> str:
        return os.path.relpath(p, out)

    lines = [
        "# histodrl demo",
        "",
        f"Generated GLaS-format data ({N_TRAIN} training, {N_TEST_A} test A, {N_TEST_B} test B "
        f"images of {IMAGE_SIZE[0]}×{IMAGE_SIZE[1]}), a quarter-width VGG-19-BN, {CROP} px crops. "
        "DRL was pretrained on the training images "
        f"without labels, then U-Nets were fine-tuned on {LABEL_FRACTION:.0%} of the "
        "labelled training images from the DRL encoder and from random initialisation, and "
        "scored with the GLaS object metrics (pooled over each test part).",
        "",
        f"Wall time: {minutes_taken:.1f} min (budget scale {scale:.2f}). This is a smoke-sized "
        "run on synthetic data: it shows the pipeline working, not the paper's numbers.",
        "",
        "## Segmentation",
        "",
        table,
        "",
        "## Pretraining",
        "",
        f"Run folder: `{rel(pretrain)}` (encoder: `{rel(pretrain / 'encoder.safetensors')}`).",
        "",
    ]
    if curves is not None:
        lines += [f"![pretraining losses]({rel(curves)})", "", *_loss_lines(pretrain)]
    lines += _monitor_lines(pretrain, rel)
    lines += [
        "The elastic deformations DRL learns to tell apart from the originals "
        "(σ = 0.03S, 0.04S, 0.05S; α = 2S):",
        "",
        f"![deformation preview]({rel(preview)})",
        "",
        "## Segmentation overlays",
        "",
    ]
    for name, result in results.items():
        run = result["run"]
        for png in sorted((run / "figures").glob("*.png"))[:2]:
            lines += [f"{name}: `{png.stem}`", "", f"![{name} {png.stem}]({rel(png)})", ""]
        lines += [f"Full report: `{rel(run / 'report.md')}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_demo(Path("demo")))
