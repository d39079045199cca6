"""The report of a reproduction: ``report.md``, ``runs.csv`` and ``figures/*.png`` in ``OUT/<name>/``.

Each report puts "ours" (mean ± sample standard deviation over seeds, ``ddof=1``, with the number
of seeds) beside the paper's published value (:mod:`histodrl.experiments.paper_numbers`), gives
two-sided Welch t-test p-values over seeds for the comparisons the paper makes (DRL vs DIM; each
ablation variant vs the baseline), and states the scale, the data, the seeds and the commit.
Figures are matplotlib PNGs written atomically; ``runs.csv`` has one row per value of every
finished run, with its run folder.
"""

from __future__ import annotations

import csv
import io
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from histodrl.experiments import paper_numbers as paper
from histodrl.experiments.jobs import Job, Record, Settings
from histodrl.experiments.stats import (
    Summary,
    WelchTest,
    format_p,
    format_summary,
    summarize,
    welch_t_test,
)
from histodrl.experiments.tables import (
    PROBE_BLOCKS,
    Experiment,
    lambda_variant,
    method_variants,
    tap_resolution,
)
from histodrl.io import atomic_path, atomic_write_text
from histodrl.pretext.options import PRESET_TEXT

REPORT_FILE = "report.md"
CSV_FILE = "runs.csv"
FIGURES_DIR = "figures"
PARTS = ("testA", "testB")
SEGMENTATION = ("f1", "dice", "hausdorff")
# metric -> (column name, decimals, factor shown)
METRICS: dict[str, tuple[str, int, float]] = {
    "f1": ("F1", 3, 1.0),
    "dice": ("Obj. Dice", 3, 1.0),
    "hausdorff": ("Obj. Hausdorff", 2, 1.0),
    "accuracy": ("Accuracy (%)", 2, 100.0),
    "pair_retrieval_accuracy": ("Pair retrieval (%)", 1, 100.0),
    "positive_cosine": ("cos(g_i, ĝ_i)", 3, 1.0),
    "negative_cosine": ("cos(g_i, ĝ_j), i ≠ j", 3, 1.0),
}


# ------------------------------------------------------------------------------------------------
# Values by (variant, task, part, metric)
# ------------------------------------------------------------------------------------------------


class Results:
    """The per-seed values of a reproduction, looked up by variant, task, part and metric."""

    def __init__(self, records: Sequence[Record]) -> None:
        self._values: dict[tuple[str, str, str, str], list[tuple[int, float]]] = {}
        for r in records:
            self._values.setdefault((r.variant, r.task, r.part, r.metric), []).append(
                (r.seed, r.value)
            )

    def values(self, variant: str, task: str, part: str, metric: str) -> list[float]:
        """The values in seed order (empty when no run has finished)."""
        return [v for _, v in sorted(self._values.get((variant, task, part, metric), []))]

    def summary(self, variant: str, task: str, part: str, metric: str) -> Summary | None:
        values = self.values(variant, task, part, metric)
        return summarize(values) if values else None

    def welch(self, a: str, b: str, task: str, part: str, metric: str) -> WelchTest | None:
        """Welch's test of variant ``a`` against ``b`` (``None`` when either has no value)."""
        x, y = self.values(a, task, part, metric), self.values(b, task, part, metric)
        return welch_t_test(x, y) if x and y else None


def ours(results: Results, variant: str, task: str, part: str, metric: str) -> str:
    _, digits, factor = METRICS[metric]
    return format_summary(results.summary(variant, task, part, metric), digits, factor)


def paper_cell(value: paper.Value | None, digits: int) -> str:
    """``"0.900 ± 0.006"``, ``"0.870"`` (no std printed) or ``"—"``."""
    if value is None:
        return "—"
    mean, std = value
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Section:
    """Markdown of the results (printed on the console too), figures, and notes on the method."""

    results: list[str] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (file name, caption)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------


def _figure(ncols: int, nrows: int = 1, size: tuple[float, float] = (5.0, 3.8)):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = np.atleast_1d(figure.subplots(nrows, ncols, squeeze=False)).reshape(-1)
    return figure, axes


def save_figure(figure: Any, path: Path) -> None:
    """Write a PNG atomically."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)


def _mean_std(summaries: Sequence[Summary | None], factor: float) -> tuple[np.ndarray, np.ndarray]:
    mean = np.array([s.mean * factor if s else np.nan for s in summaries])
    std = np.array([s.std * factor if s and s.n > 1 else 0.0 for s in summaries])
    return mean, np.nan_to_num(std)


def bar_panel(
    ax: Any,
    labels: Sequence[str],
    summaries: Sequence[Summary | None],
    paper_values: Sequence[paper.Value | None],
    title: str,
    factor: float = 1.0,
) -> None:
    """Bars of mean ± std per row (error bars: sample std over seeds), the paper's means as ◆."""
    x = np.arange(len(labels))
    mean, std = _mean_std(summaries, factor)
    ax.bar(x, np.nan_to_num(mean), yerr=std, capsize=3, color="#4c72b0", label="ours")
    marks = np.array([v[0] if v else np.nan for v in paper_values], dtype=float)
    if np.isfinite(marks).any():
        ax.plot(x, marks, "D", color="black", markersize=4, label="paper", linestyle="none")
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)


def line_panel(
    ax: Any,
    x: Sequence[float],
    xlabels: Sequence[str],
    series: dict[str, Sequence[Summary | None]],
    title: str,
    factor: float = 1.0,
    paper_series: dict[str, Sequence[paper.Value | None]] | None = None,
    log_x: bool = False,
) -> None:
    """One line per series with error bars (sample std); the paper's values dashed."""
    colours = {label: f"C{i % 10}" for i, label in enumerate(series)}
    for label, summaries in series.items():
        mean, std = _mean_std(summaries, factor)
        ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=label, color=colours[label])
    for label, values in (paper_series or {}).items():
        marks = [v[0] if v else np.nan for v in values]
        colour = colours.get(label, "black")
        ax.plot(x, marks, linestyle="--", marker="x", color=colour, label=f"{label} (paper)")
    if log_x:
        ax.set_xscale("log")
    ax.set_xticks(list(x), list(xlabels))
    ax.minorticks_off()
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)


def grouped_bar_panel(
    ax: Any,
    groups: Sequence[str],
    series: dict[str, Sequence[Summary | None]],
    title: str,
    factor: float = 1.0,
) -> None:
    """Groups of bars (one bar per series in each group) with error bars (sample std)."""
    n = max(1, len(series))
    width = 0.8 / n
    x = np.arange(len(groups))
    for i, (label, summaries) in enumerate(series.items()):
        mean, std = _mean_std(summaries, factor)
        ax.bar(
            x + (i - (n - 1) / 2) * width,
            np.nan_to_num(mean),
            width,
            yerr=std,
            capsize=2,
            label=label,
        )
    ax.set_xticks(x, list(groups))
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=6, ncols=2)


# ------------------------------------------------------------------------------------------------
# One renderer per experiment
# ------------------------------------------------------------------------------------------------


def _label_of(exp: Experiment, key: str) -> str:
    return next((a.variant.label for a in exp.arms if a.variant.key == key), key)


def _keys(exp: Experiment) -> list[str]:
    return [a.variant.key for a in exp.arms]


def render_table1(exp: Experiment, results: Results, settings: Settings, folder: Path) -> Section:
    s = Section()
    run = set(_keys(exp))
    figure, axes = _figure(3, 2)
    for row, part in enumerate(PARTS):
        header = ["Method"]
        for m in SEGMENTATION:
            header += [f"{METRICS[m][0]} (ours)", f"{METRICS[m][0]} (paper)"]
        table = [
            ["Supervised UNet† [2] (paper only)"]
            + [
                c
                for m in SEGMENTATION
                for c in ("—", paper_cell(paper.TABLE1["supervised_unet"][m], METRICS[m][1]))
            ]
        ]
        for v in method_variants(imagenet=True):
            label = v.label if v.key in run else f"{v.label} (not run: give --imagenet FILE)"
            cells = []
            for m in SEGMENTATION:
                cells += [
                    ours(results, v.key, "segment", part, m),
                    paper_cell(paper.TABLE1[v.key][m], METRICS[m][1]),
                ]
            table.append([label, *cells])
        p_row = ["p-value, DRL vs DIM"]
        for m in SEGMENTATION:
            p_row += [
                format_p(results.welch("drl", "dim", "segment", part, m)),
                f"{paper.TABLE1_P_VALUES[m]:.4f}",
            ]
        table.append(p_row)
        s.results.append(f"### Test {part[-1]}\n\n" + markdown_table(header, table))
        keys = _keys(exp)
        for col, m in enumerate(SEGMENTATION):
            bar_panel(
                axes[row * 3 + col],
                [_label_of(exp, k).split(" [")[0] for k in keys],
                [results.summary(k, "segment", part, m) for k in keys],
                [paper.TABLE1[k][m] for k in keys],
                f"{METRICS[m][0]}, test {part[-1]}",
            )
    save_figure(figure, folder / FIGURES_DIR / "table1.png")
    s.figures.append(("table1.png", "Table I: mean ± std over seeds per method, paper means as ◆"))
    s.notes += [
        "The paper reports one value per metric for the whole GLaS test set; it is shown beside "
        "both test A and test B.",
        "Supervised UNet† (a supervised U-Net with elastic deformation as augmentation) is the "
        "paper's number only.",
        "Every encoder is pretrained on the GLaS training images (DRL with λ = 0.01, the paper's "
        "segmentation setting), then fine-tuned with all training labels.",
    ]
    return s


def render_table2(exp: Experiment, results: Results, settings: Settings, folder: Path) -> Section:
    s = Section()
    crop = settings.scale.glas_crop
    taps = list(paper.TABLE2_TAP_M)
    columns = [
        f"{tap}, M = {tap_resolution(tap, crop)} (paper M = {paper.TABLE2_TAP_M[tap]})"
        for tap in taps
    ]
    figure, axes = _figure(2)
    for i, part in enumerate(PARTS):
        header = ["Method"] + [c for col in columns for c in (f"{col} (ours)", "paper")]
        table = []
        for method, label in (("dim", "DIM [14]"), ("drl", "DRL")):
            cells = []
            for tap in taps:
                cells += [
                    ours(results, f"{method}-{tap}", "segment", part, "dice"),
                    paper_cell(paper.TABLE2[method][tap], 3),
                ]
            table.append([label, *cells])
        p_row = ["p-value, DRL vs DIM"]
        for tap in taps:
            p_row += [
                format_p(results.welch(f"drl-{tap}", f"dim-{tap}", "segment", part, "dice")),
                "—",
            ]
        table.append(p_row)
        s.results.append(f"### Object Dice, test {part[-1]}\n\n" + markdown_table(header, table))
        line_panel(
            axes[i],
            list(range(len(taps))),
            [f"{t}\nM={tap_resolution(t, crop)}" for t in taps],
            {
                m.upper(): [results.summary(f"{m}-{t}", "segment", part, "dice") for t in taps]
                for m in ("dim", "drl")
            },
            f"Obj. Dice, test {part[-1]}",
            paper_series={m.upper(): [paper.TABLE2[m][t] for t in taps] for m in ("dim", "drl")},
        )
    save_figure(figure, folder / FIGURES_DIR / "table2.png")
    s.figures.append(
        ("table2.png", "Table II: object Dice by encoder tap (ours with error bars, paper dashed)")
    )
    s.notes += [
        f"Columns are labelled by the tapped VGG layer and the map side M it gives at the {crop} px "
        "crops used here (M = crop / stride); the paper's M refers to 256 px crops.",
        "The DRL rows are full DRL (FEM + hard GCH, λ = 0.01) with only `--tap` changed; the DIM "
        "rows are DIM with the same tap. The paper's Table II is probably a reduced setting (its "
        "best DRL Dice, 0.882, is below Table I's 0.896; METHOD.md E21).",
        "The paper gives no p-values for Table II; ours are Welch tests of DRL vs DIM per tap.",
    ]
    return s


def render_table3(exp: Experiment, results: Results, settings: Settings, folder: Path) -> Section:
    s = Section()
    fractions = paper.TABLE3_FRACTIONS
    run = set(_keys(exp))
    header = ["Method"] + [c for f in fractions for c in (f"{f * 100:g}% (ours)", "paper")]
    table = []
    for v in method_variants(imagenet=True):
        label = v.label if v.key in run else f"{v.label} (not run: give --imagenet FILE)"
        cells = []
        for f in fractions:
            cells += [
                ours(results, v.key, "classify", f"{f:g}", "accuracy"),
                paper_cell(paper.TABLE3[v.key][f], 2),
            ]
        table.append([label, *cells])
    p_row = ["p-value, DRL vs DIM"]
    for f in fractions:
        p_row += [
            format_p(results.welch("drl", "dim", "classify", f"{f:g}", "accuracy")),
            f"{paper.TABLE3_P_VALUES[f]:.4f}",
        ]
    table.append(p_row)
    s.results.append("### Test accuracy (%)\n\n" + markdown_table(header, table))
    figure, axes = _figure(1, size=(7.0, 4.5))
    line_panel(
        axes[0],
        list(fractions),
        [f"{f * 100:g}%" for f in fractions],
        {
            _label_of(exp, k).split(" [")[0]: [
                results.summary(k, "classify", f"{f:g}", "accuracy") for f in fractions
            ]
            for k in _keys(exp)
        },
        "PCam test accuracy (%) by label fraction",
        factor=100.0,
        log_x=True,
    )
    save_figure(figure, folder / FIGURES_DIR / "table3.png")
    s.figures.append(
        ("table3.png", "Table III: test accuracy by label fraction (mean ± std over seeds)")
    )
    s.notes += [
        "Every encoder is pretrained on the PCam training split without labels (DRL with λ = 0.5, "
        "the paper's classification setting), then the whole network is fine-tuned on a seeded, "
        "class-stratified label fraction of the training split (`histodrl classify`; at least one "
        "patch per class) and the validation-selected model is tested.",
    ]
    return s


def render_table4(exp: Experiment, results: Results, settings: Settings, folder: Path) -> Section:
    s = Section()
    keys = _keys(exp)
    figure, axes = _figure(3)
    for i, part in enumerate(PARTS):
        header = ["Variant"]
        for m in SEGMENTATION:
            header += [f"{METRICS[m][0]} (ours)", "paper", "p vs baseline", "paper p"]
        table = []
        for arm in exp.arms:
            v = arm.variant
            cells = []
            for m in SEGMENTATION:
                test = (
                    None
                    if v.key == "baseline"
                    else results.welch(v.key, "baseline", "segment", part, m)
                )
                paper_p = paper.TABLE4_P_VALUES.get(str(v.paper), {}).get(m)
                cells += [
                    ours(results, v.key, "segment", part, m),
                    paper_cell(paper.TABLE4[str(v.paper)][m], METRICS[m][1]),
                    format_p(test),
                    "—" if paper_p is None else f"{paper_p:.4f}",
                ]
            table.append([v.label, *cells])
        s.results.append(f"### Segmentation, test {part[-1]}\n\n" + markdown_table(header, table))
        bar_panel(
            axes[i],
            [_label_of(exp, k) for k in keys],
            [results.summary(k, "segment", part, "dice") for k in keys],
            [paper.TABLE4[str(a.variant.paper)]["dice"] for a in exp.arms],
            f"Obj. Dice, test {part[-1]}",
        )
    header = ["Variant", "Accuracy % (ours)", "paper", "p vs baseline", "paper p"]
    table = []
    for arm in exp.arms:
        v = arm.variant
        test = (
            None
            if v.key == "baseline"
            else results.welch(v.key, "baseline", "classify", "1", "accuracy")
        )
        paper_p = paper.TABLE4_P_VALUES.get(str(v.paper), {}).get("accuracy")
        table.append(
            [
                v.label,
                ours(results, v.key, "classify", "1", "accuracy"),
                paper_cell(paper.TABLE4[str(v.paper)]["accuracy"], 2),
                format_p(test),
                "—" if paper_p is None else f"{paper_p:.4f}",
            ]
        )
    s.results.append(
        "### Classification, PCam test accuracy with all labels\n\n" + markdown_table(header, table)
    )
    bar_panel(
        axes[2],
        [_label_of(exp, k) for k in keys],
        [results.summary(k, "classify", "1", "accuracy") for k in keys],
        [paper.TABLE4[str(a.variant.paper)]["accuracy"] for a in exp.arms],
        "PCam accuracy (%)",
        factor=100.0,
    )
    save_figure(figure, folder / FIGURES_DIR / "table4.png")
    s.figures.append(
        ("table4.png", "Table IV: each variant, mean ± std over seeds, paper means as ◆")
    )
    s.notes += [
        "Variants: the baseline is random init (no pretraining); + L_LSH is `drl --gch none "
        "--no-fem`, + L_GCH^H `drl --gch hard --no-fem`, + L_GCH^S `drl --gch soft --no-fem`, "
        "+ FEM full DRL (hard GCH). Without FEM the local discriminator sees the tiled global "
        "vector (METHOD.md E9).",
        "Each variant is pretrained twice per seed: on GLaS with λ = 0.01 for segmentation "
        "(`pretrain-glas`) and on PCam with λ = 0.5 for classification (`pretrain-pcam`), the "
        "paper's per-task settings (IV-B). Classification fine-tunes with all labels.",
    ]
    return s


def render_fig4(exp: Experiment, results: Results, settings: Settings, folder: Path) -> Section:
    s = Section()
    probed = [a.variant.key for a in exp.arms if any(t.kind == "probe" for t in a.tasks)]
    header = ["Method"] + [f"{b} (ours)" for b in PROBE_BLOCKS]
    table = [
        [_label_of(exp, k), *(ours(results, k, "probe", b, "accuracy") for b in PROBE_BLOCKS)]
        for k in probed
    ]
    table.append(
        ["p-value, DRL vs DIM"]
        + [format_p(results.welch("drl", "dim", "probe", b, "accuracy")) for b in PROBE_BLOCKS]
    )
    table.append(
        ["p-value, DRL vs DIM (paper)"] + [f"{paper.FIG4A_P_VALUES[b]:.4f}" for b in PROBE_BLOCKS]
    )
    s.results.append(
        "### (a) Linear separability: test accuracy (%) of a linear probe per block\n\n"
        + markdown_table(header, table)
    )

    lambdas = paper.FIG4B_LAMBDAS
    header = ["λ", "hard GCH (ours)", "soft GCH (ours)"]
    series: dict[str, list[Summary | None]] = {"λ_H (hard)": [], "λ_S (soft)": []}
    table = []
    for lam in lambdas:
        row = [f"{lam:g}"]
        for gch, name in (("hard", "λ_H (hard)"), ("soft", "λ_S (soft)")):
            key = lambda_variant(gch, lam).key
            row.append(ours(results, key, "classify", "1", "accuracy"))
            series[name].append(results.summary(key, "classify", "1", "accuracy"))
        table.append(row)
    s.results.append(
        "### (b) GCH weight λ: PCam test accuracy (%) after fine-tuning with all labels\n\n"
        + markdown_table(header, table)
        + f"\n\nThe paper prints no values for Fig. 4(b); its text says λ = {paper.FIG4B_BEST_LAMBDA:g} "
        "is best for both hard and soft GCH."
    )
    figure, axes = _figure(2, size=(6.0, 4.2))
    grouped_bar_panel(
        axes[0],
        PROBE_BLOCKS,
        {
            _label_of(exp, k).split(" [")[0]: [
                results.summary(k, "probe", b, "accuracy") for b in PROBE_BLOCKS
            ]
            for k in probed
        },
        "(a) linear probe accuracy (%)",
        factor=100.0,
    )
    line_panel(
        axes[1],
        list(lambdas),
        [f"{lam:g}" for lam in lambdas],
        series,
        "(b) accuracy (%) by λ",
        factor=100.0,
        log_x=True,
    )
    save_figure(figure, folder / FIGURES_DIR / "fig4.png")
    s.figures.append(
        (
            "fig4.png",
            "Fig. 4: (a) probe accuracy per block, (b) accuracy by λ; error bars: sample std over seeds",
        )
    )
    s.notes += [
        "(a): every encoder is pretrained on PCam (DRL with λ = 0.5); the trunk is frozen, the "
        "outputs of blocks conv2, conv3 and conv4 (taps conv2_2, conv3_4, conv4_4) are globally "
        "average-pooled and one linear classifier per block is trained (`histodrl probe`).",
        "(b): full DRL (FEM) pretrained on PCam with hard or soft GCH at each λ, then fine-tuned with "
        "all labels (`histodrl classify`); λ_H = 0.5 is DRL's own run from (a). The GCH loss is a "
        "mean over the batch (METHOD.md E11), so λ is not directly the paper's if it summed.",
    ]
    return s


def render_fig5(exp: Experiment, results: Results, settings: Settings, folder: Path) -> Section:
    from histodrl.experiments.embedding import FEATURES_FILE, tsne_2d

    s = Section()
    keys = _keys(exp)
    metrics = ("pair_retrieval_accuracy", "positive_cosine", "negative_cosine")
    header = ["Encoder"] + [METRICS[m][0] for m in metrics]
    table = [
        [_label_of(exp, k), *(ours(results, k, "embed", "", m) for m in metrics)] for k in keys
    ]
    table.append(
        ["p-value, w/ vs w/o L_GCH"]
        + [format_p(results.welch(keys[1], keys[0], "embed", "", m)) for m in metrics]
    )
    s.results.append(
        "### Each image's descriptor against its deformed copy's\n\n"
        + markdown_table(header, table)
    )

    figure, axes = _figure(2, size=(5.5, 5.0))
    shown = False
    for ax, key in zip(axes, keys):
        path = settings.out / exp.name / "runs" / key / "seed0" / "embed" / FEATURES_FILE
        ax.set_title(_label_of(exp, key), fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        if not path.is_file():
            ax.text(0.5, 0.5, "no finished seed-0 run", ha="center", transform=ax.transAxes)
            continue
        with np.load(path) as data:
            g, g_hat = data["g"], data["g_hat"]
        n = g.shape[0]
        xy = tsne_2d(np.concatenate([g, g_hat]), seed=0)
        colours = _pair_colours(n)
        for i in range(n):
            ax.plot(
                xy[[i, n + i], 0], xy[[i, n + i], 1], color=colours[i], linewidth=0.6, alpha=0.6
            )
        ax.scatter(xy[:n, 0], xy[:n, 1], c=colours, marker="o", s=22, label="image")
        ax.scatter(xy[n:, 0], xy[n:, 1], c=colours, marker="x", s=22, label="deformed copy")
        ax.legend(fontsize=7)
        shown = True
    if shown:
        save_figure(figure, folder / FIGURES_DIR / "fig5.png")
        s.figures.append(
            (
                "fig5.png",
                "Fig. 5: t-SNE of seed 0's descriptors; ○ image, × its deformed copy, a line and one colour per pair",
            )
        )
    s.notes += [
        f"Descriptors: F_G = L2norm(GAP(FEM(conv4_4))) (eq. 7, the space L_GCH acts on) of "
        f"{settings.scale.fig5_crops} random GLaS test crops (test A and B, at the pretraining crop "
        "size) and of one fresh elastic deformation of each (the run's σ range and α), the encoder "
        "in eval mode. Both encoders are full DRL pretrained on GLaS (λ = 0.01), one with "
        "`--gch none`.",
        "Pair retrieval: share of images whose nearest deformed descriptor (largest dot product) is "
        "their own copy's (chance: 1 / number of crops). The t-SNE (sklearn, PCA init, perplexity "
        "min(30, (P-1)/3)) is drawn for seed 0 only; the table is over all seeds.",
    ]
    return s


def _pair_colours(n: int) -> np.ndarray:
    from matplotlib import colormaps

    return colormaps["hsv"](np.linspace(0.0, 1.0, n, endpoint=False))


RENDERERS = {
    "table1": render_table1,
    "table2": render_table2,
    "table3": render_table3,
    "table4": render_table4,
    "fig4": render_fig4,
    "fig5": render_fig5,
}


# ------------------------------------------------------------------------------------------------
# The files
# ------------------------------------------------------------------------------------------------


def git_commit() -> str:
    """``git rev-parse HEAD`` of the checkout this package runs from, or ``"unknown"``.

    ``" (with uncommitted changes)"`` is appended when tracked files differ from that commit.
    """
    package = Path(__file__).resolve().parent.parent

    def git(*args: str) -> subprocess.CompletedProcess[str] | None:
        try:
            return subprocess.run(
                ["git", *args], cwd=package, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None

    # The package must itself be tracked: an installed copy inside some other repository is not.
    tracked = git("ls-files", "--error-unmatch", "__init__.py")
    head = git("rev-parse", "HEAD")
    if tracked is None or tracked.returncode or head is None or head.returncode:
        return "unknown"
    commit = head.stdout.strip()
    status = git("status", "--porcelain", "--untracked-files=no")
    if status is not None and status.returncode == 0 and status.stdout.strip():
        commit += " (with uncommitted changes)"
    return commit


def write_csv(path: Path, records: Sequence[Record]) -> None:
    """``runs.csv``: one row per value, columns as :class:`Record`'s fields, atomically."""
    names = [f.name for f in fields(Record)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(names)
    for r in records:
        writer.writerow([getattr(r, n) for n in names])
    atomic_write_text(path, buffer.getvalue())


def write_report(
    exp: Experiment,
    settings: Settings,
    jobs: Sequence[Job],
    records: Sequence[Record],
    data: dict[str, str],
) -> tuple[Path, str]:
    """Write ``report.md``, ``runs.csv`` and the figures of ``exp``.

    Args:
        exp: the experiment.
        settings: the reproduction's settings.
        jobs: its runs (finished or not).
        records: the values of its finished runs (:func:`histodrl.experiments.jobs.job_records`).
        data: one description per data set used.

    Returns:
        ``(path of report.md, the results tables as markdown, for the console)``.
    """
    folder = settings.out / exp.name
    results = Results(records)
    section = RENDERERS[exp.name](exp, results, settings, folder)
    write_csv(folder / CSV_FILE, records)
    finished = sum(j.finished for j in jobs)
    seeds = ", ".join(str(k) for k in range(settings.seeds))
    lines = [
        f"# {exp.title}: reproduction",
        "",
        f"- **Scale**: {settings.scale.description}.",
        f"- **Preset**: `--preset {settings.preset}` for every DRL and DIM pretraining run "
        f"({PRESET_TEXT[settings.preset]}).",
        f"- **Data**: {'; '.join(data.values())}.",
        f"- **Seeds**: {seeds} ({settings.seeds} per row); seed k drives the pretraining, the "
        "fine-tuning and the label subset of its runs.",
        f"- **Commit**: {git_commit()}.",
        f"- **Runs**: {finished} of {len(jobs)} finished, under `runs/<variant>/seed<k>/`; "
        f"`{CSV_FILE}` has every value with its run folder (relative to this folder).",
        '- **Statistics**: "ours" is the mean ± sample standard deviation (ddof = 1) over seeds, '
        "with the number of seeds in brackets; p-values are two-sided Welch t-tests (unequal "
        'variances) over the per-seed values: "n/a (fewer than 2 seeds)" when a side has fewer '
        'than two finished seeds, "n/a (zero variance)" when both sides are constant. "paper" '
        "is the published mean ± std over five runs (Xu, Hou et al., BIBM 2020); the paper does "
        "not name its test.",
        "- Segmentation scores are the GLaS challenge's pooled object F1, object Dice and object "
        "Hausdorff (px) per test part; accuracies are percentages.",
        "",
        "## Results",
        "",
        *(block + "\n" for block in section.results),
    ]
    if section.figures:
        lines += ["## Figures", ""]
        lines += [
            f"![{caption}]({FIGURES_DIR}/{name})\n\n{caption}\n"
            for name, caption in section.figures
        ]
    lines += ["## How these numbers were made", ""]
    lines += [f"- {note}" for note in section.notes]
    lines += [
        "- Every run is an ordinary `histodrl` command (its options in the run's `config.yaml`, "
        "its output in `logs/`); a run with its final artefact is reused by the next "
        "`histodrl reproduce`.",
        "",
    ]
    report = folder / REPORT_FILE
    atomic_write_text(report, "\n".join(lines))
    return report, "\n\n".join(section.results)
