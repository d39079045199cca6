"""The ``histodrl`` command: parse, dispatch, exit codes.

Every subcommand's parser is generated from its typed options class (:mod:`histodrl.commands`);
``--config FILE.yaml`` supplies values and typed options win. A handler builds the options object
and calls the library; handlers import torch and Lightning lazily so that ``histodrl --help`` and
the pure-numpy commands start fast. Bad input raises :class:`histodrl.errors.UserInputError`,
printed as one line with exit status 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histodrl import __version__
from histodrl.commands import classify as classify_options
from histodrl.commands import embed as embed_options
from histodrl.commands import label_efficiency as label_efficiency_options
from histodrl.commands import options as om
from histodrl.commands import tools
from histodrl.commands.pretrain import PretrainOptions
from histodrl.commands.segment import SegmentOptions
from histodrl.errors import UserInputError

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


@dataclass(frozen=True)
class Command:
    """One subcommand: its options class and the handler that runs it.

    ``run(options, launch)`` for a command that writes a run folder (``launch`` is ``True``:
    ``--resume`` and ``--overwrite`` are added), else ``run(options)``.
    """

    name: str
    help: str
    options: type
    run: Callable[..., Any]
    launch: bool = False
    resume: bool = True
    subcommands: tuple[Command, ...] = field(default=())


# --- handlers: build nothing but what the library call needs, print its result -----------------


def _pretrain(options: PretrainOptions, launch: Any) -> int:
    from histodrl.pretext.task import run_pretrain

    return run_pretrain(options, launch)


def _segment(options: SegmentOptions, launch: Any) -> int:
    from histodrl.downstream.segment import run_segment

    run_segment(options, launch)
    return 0


def _classify(options: Any, launch: Any) -> int:
    from histodrl.downstream.classify import run_classify

    return run_classify(options, launch)


def _probe(options: Any, launch: Any) -> int:
    from histodrl.downstream.probe import run_probe

    return run_probe(options, launch)


def _demo(options: tools.DemoOptions) -> int:
    from histodrl.experiments.demo import run_demo

    return run_demo(out=Path(options.out), minutes=options.minutes)


def _export(options: tools.ExportOptions) -> int:
    from histodrl.pretext.base import export_run

    path = export_run(Path(options.run))
    print(f"histodrl: wrote {path} and {path.parent / 'MODEL_CARD.md'}")
    return 0


def _deform_preview(options: tools.DeformPreviewOptions) -> int:
    from histodrl.experiments.preview import deform_preview

    message = deform_preview(options.image, Path(options.out), size=options.size, seed=options.seed)
    print(f"histodrl: {message}")
    return 0


def _synth_glas(options: tools.SynthGlasOptions) -> int:
    from histodrl.data.synth_glas import make_glas, parse_size

    if options.n_train + options.n_test_a + options.n_test_b == 0:
        raise UserInputError("--n-train, --n-test-a, --n-test-b: expected at least one image")
    out = make_glas(
        options.dir,
        n_train=options.n_train,
        n_test_a=options.n_test_a,
        n_test_b=options.n_test_b,
        size=parse_size(options.size),
        seed=options.seed,
        overwrite=options.overwrite,
    )
    what = f"{options.n_train} train, {options.n_test_a} testA, {options.n_test_b} testB images"
    print(f"histodrl: wrote synthetic glas ({what}) to {out}")
    return 0


def _synth_pcam(options: tools.SynthPcamOptions) -> int:
    from histodrl.data.synth_pcam import make_pcam

    out = make_pcam(
        options.dir,
        n_train=options.n_train,
        n_valid=options.n_valid,
        n_test=options.n_test,
        seed=options.seed,
        overwrite=options.overwrite,
    )
    what = f"{options.n_train} train, {options.n_valid} valid, {options.n_test} test patches"
    print(f"histodrl: wrote synthetic pcam ({what}) to {out}")
    return 0


def _glas_metrics(options: tools.GlasMetricsOptions) -> int:
    import json

    from histodrl.metrics.label_files import evaluate_glas_folders, format_glas_table

    kwargs: dict[str, Any] = {"aggregate": options.aggregate}
    if options.part is not None:
        kwargs["parts"] = [p.strip() for p in options.part.split(",") if p.strip()]
    results = evaluate_glas_folders(options.pred_dir, options.gt_dir, **kwargs)
    if options.json:
        print(json.dumps({"aggregate": options.aggregate, "parts": results}, indent=2))
    else:
        print(format_glas_table(results, options.aggregate))
    return 0


def _embed(options: embed_options.EmbedOptions) -> int:
    from histodrl.downstream.embed import run_embed

    return run_embed(options)


def _wsi_preview(options: embed_options.WsiPreviewOptions) -> int:
    from histodrl.experiments.wsi_preview import wsi_preview

    message = wsi_preview(
        options.slide,
        options.out,
        crop=options.crop,
        level=options.level,
        mpp=options.mpp,
        min_tissue=options.min_tissue,
        max_tiles=options.max_tiles,
        seed=options.seed,
    )
    print(f"histodrl: {message}")
    return 0


def _reproduce(options: tools.ReproduceOptions) -> int:
    from histodrl.experiments.reproduce import reproduce

    return reproduce(
        list(options.names),
        out=options.out,
        glas=options.glas,
        pcam=options.pcam,
        imagenet=options.imagenet,
        seeds=options.seeds,
        scale=options.scale,
        preset=options.preset,
        accelerator=options.accelerator,
        num_workers=options.num_workers,
        dry_run=options.dry_run,
    )


def _label_efficiency(options: label_efficiency_options.LabelEfficiencyOptions) -> int:
    from histodrl.experiments.label_efficiency import label_efficiency

    return label_efficiency(options)


COMMANDS: tuple[Command, ...] = (
    Command(
        "demo",
        "run the whole pipeline on generated data (minutes on a CPU)",
        tools.DemoOptions,
        _demo,
    ),
    Command(
        "pretrain",
        "pretrain an encoder on unlabeled images (DRL or a baseline)",
        PretrainOptions,
        _pretrain,
        launch=True,
    ),
    Command(
        "export",
        "write RUN/encoder.safetensors and RUN/MODEL_CARD.md",
        tools.ExportOptions,
        _export,
    ),
    Command(
        "deform-preview",
        "write a PNG grid of an image and its elastic deformations at sigma = 0.03, 0.04, 0.05 S",
        tools.DeformPreviewOptions,
        _deform_preview,
    ),
    Command(
        "synth",
        "write synthetic GLaS or PCam data in the real on-disk formats",
        object,
        lambda options: 0,
        subcommands=(
            Command(
                "glas",
                "H&E colon glands: train/testA/testB BMPs, instance _anno.bmp, Grade.csv",
                tools.SynthGlasOptions,
                _synth_glas,
            ),
            Command(
                "pcam",
                "96x96 lymph-node patches: the six PCam HDF5 files and three meta CSVs",
                tools.SynthPcamOptions,
                _synth_pcam,
            ),
        ),
    ),
    Command(
        "glas-metrics",
        "score predicted instance label images with the GLaS object F1, Dice and Hausdorff",
        tools.GlasMetricsOptions,
        _glas_metrics,
    ),
    Command(
        "classify",
        "fine-tune a patch classifier on a fraction of the labels (Table III)",
        classify_options.ClassifyOptions,
        _classify,
        launch=True,
    ),
    Command(
        "probe",
        "linear classifiers on frozen, pooled block features of a trunk (Fig. 4(a))",
        classify_options.ProbeOptions,
        _probe,
        launch=True,
        resume=False,
    ),
    Command(
        "segment",
        "fine-tune a U-Net on labelled masks (GLaS glands, Table I) and score the objects",
        SegmentOptions,
        _segment,
        launch=True,
    ),
    Command(
        "embed",
        "pooled encoder features of every image or tissue tile of a source, in one HDF5 file",
        embed_options.EmbedOptions,
        _embed,
    ),
    Command(
        "wsi-preview",
        "write a PNG of a slide with its tissue mask and the tiles a wsi: source draws from it",
        embed_options.WsiPreviewOptions,
        _wsi_preview,
    ),
    Command(
        "reproduce",
        "run the paper's tables and figures (every method x seed) and write OUT/<name>/report.md",
        tools.ReproduceOptions,
        _reproduce,
    ),
    Command(
        "label-efficiency",
        "pretraining methods against random init at several label budgets, over seeds, on any "
        "labelled source; writes OUT/report.md",
        label_efficiency_options.LabelEfficiencyOptions,
        _label_efficiency,
    ),
)


def _add_command(sub: argparse._SubParsersAction, command: Command) -> None:
    p = sub.add_parser(command.name, help=command.help, description=command.help)
    p.set_defaults(_command=command)
    if command.subcommands:
        kinds = p.add_subparsers(dest="_kind", metavar="KIND", parser_class=_Parser, required=True)
        for child in command.subcommands:
            _add_command(kinds, child)
        return
    om.add_arguments(p, command.options)
    if command.launch:
        g = p.add_argument_group("starting the run")
        if command.resume:
            g.add_argument(
                "--resume",
                action="store_true",
                help="continue RUN from checkpoints/last.ckpt with its own options (runtime "
                "options and a larger --max-steps may change)",
            )
        g.add_argument("--overwrite", action="store_true", help="replace an existing RUN")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="histodrl",
        description="Deformation Representation Learning for histopathology images.",
    )
    parser.add_argument("--version", action="version", version=f"histodrl {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        _add_command(sub, command)
    return parser


def options_from_args(command: Command, args: argparse.Namespace) -> tuple[Any, Any]:
    """The typed options (and the launch flags) of a parsed command line.

    For ``--resume`` the run's own ``config.yaml`` supplies every option not typed.
    """
    from histodrl.runs.lifecycle import Launch

    typed = om.typed_from_namespace(command.options, args)
    if not command.launch:
        return om.from_sources(command.options, typed), None
    launch = Launch(
        resume=bool(getattr(args, "resume", False)),
        overwrite=bool(getattr(args, "overwrite", False)),
    )
    base: dict[str, Any] = {}
    if launch.resume:
        if "out" not in typed.values:
            raise UserInputError("--resume: expected --out RUN, the run to continue")
        config = Path(typed.values["out"]) / "config.yaml"
        if not config.is_file():
            raise UserInputError(f"{config}: not found (is it a histodrl run folder?)")
        base = om.to_values(om.from_config(command.options, config))
    return om.from_sources(command.options, typed, base), launch


def _one_line(exc: BaseException) -> str:
    """The message of a UserInputError, also when a DataLoader worker re-raised it with a traceback."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(exc).__name__
    last = lines[-1]
    prefix = f"{UserInputError.__module__}.{UserInputError.__name__}: "
    return last.removeprefix(prefix)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = parser.parse_args(argv)
        command = getattr(args, "_command", None)
        if command is None:
            parser.print_help()
            return EXIT_BAD_INPUT
        if command.subcommands:
            command = next(c for c in command.subcommands if c.name == args._kind)
        options, launch = options_from_args(command, args)
        result = command.run(options, launch) if command.launch else command.run(options)
        return int(result or 0)
    except UserInputError as exc:
        if debug:
            raise
        print(f"histodrl: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("histodrl: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from histodrl.runs.watch import RunInterrupted  # only a training run raises it

        if not isinstance(exc, RunInterrupted) or debug:
            raise
        print(f"histodrl: {exc}", file=sys.stderr)
        return exc.exit_status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
