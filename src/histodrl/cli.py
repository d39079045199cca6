"""The ``histodrl`` command.

Each subcommand is declared by an ``_add_<name>`` function that builds its parser and names its
handler. Handlers import the heavy libraries (torch, Lightning) lazily so that ``histodrl --help`` and
the pure-numpy commands start fast. Bad input raises :class:`histodrl.errors.UserInputError`, which
is printed as one line with exit status 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from histodrl import __version__
from histodrl.errors import UserInputError

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def load_config_defaults(parser: argparse.ArgumentParser, config_path: str) -> dict[str, Any]:
    """Read a YAML config written by a run (or by hand) and return it as parser defaults.

    Keys may use dashes or underscores; an unknown key is an error naming it.
    """
    import yaml

    path = Path(config_path)
    if not path.is_file():
        raise UserInputError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserInputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: expected a mapping of option names to values")
    known = {a.dest for a in parser._actions}
    # Values a run derives and records for the reader (not options): skipped when reused.
    derived = {"total_steps", "data_description"}
    defaults: dict[str, Any] = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest in derived:
            continue
        if dest not in known:
            raise UserInputError(f"{path}: unknown option {key!r}")
        defaults[dest] = value
    return defaults


def _config_argument(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _parse_with_config(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace:
    """Parse ``argv``; when a subcommand has ``--config FILE``, its values become the defaults.

    Options given on the command line always win over the file; an option the file gives is no
    longer required on the command line.
    """
    argv = list(argv or [])
    config = _config_argument(argv)
    if config is not None:
        # Descend through (nested) subcommands, e.g. "synth glas", to the parser that owns --config.
        sub: argparse.ArgumentParser | None = None
        current, rest = parser, list(argv)
        while True:
            choices = next(
                (a.choices for a in current._actions if isinstance(a, argparse._SubParsersAction)),
                None,
            )
            command = next((a for a in rest if choices and a in choices), None)
            if command is None:
                break
            current = sub = choices[command]
            rest = rest[rest.index(command) + 1 :]
        if sub is not None:
            defaults = load_config_defaults(sub, config)
            for action in sub._actions:
                if action.dest in defaults:
                    action.required = False
            sub.set_defaults(**defaults)
    args = parser.parse_args(argv)
    sub = getattr(args, "_subparser", None)
    if sub is not None:
        args._explicit = _explicit_dests(sub, argv)
    return args


def _explicit_dests(sub: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The options the user typed (as opposed to defaults): a resumed run keeps its own values."""
    given = {a.split("=", 1)[0] for a in argv if a.startswith("-")}
    return {a.dest for a in sub._actions if given & set(a.option_strings)}


def _add(
    sub: argparse._SubParsersAction,
    name: str,
    help: str,
    handler: Callable[[argparse.Namespace], int | None],
) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help)
    p.set_defaults(_handler=handler, _subparser=p)
    return p


# ---------------------------------------------------------------------------------------------
# Subcommands. Keep each handler thin: parse, call the library, print.
# ---------------------------------------------------------------------------------------------

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def subcommand(fn: Callable[[argparse._SubParsersAction], None]):
    """Register an ``_add_<name>`` function; the help lists subcommands in registration order."""
    SUBCOMMANDS.append(fn)
    return fn


# --- pipeline: demo, pretrain, export, deform-preview -------------------------------------------


@subcommand
def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = _add(sub, "demo", "run the whole pipeline on generated data (minutes on a CPU)", _run_demo)
    p.add_argument("--out", default="demo", help="output folder (default: demo)")
    p.add_argument("--minutes", type=float, default=10.0, help="time budget (default: 10)")


def _run_demo(args: argparse.Namespace) -> int:
    from histodrl.experiments.demo import run_demo

    return run_demo(out=Path(args.out), minutes=args.minutes)


@subcommand
def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    from histodrl.pretext.options import add_pretrain_arguments

    p = _add(
        sub,
        "pretrain",
        "pretrain an encoder on unlabeled images (DRL or a baseline)",
        _run_pretrain,
    )
    add_pretrain_arguments(p)


def _run_pretrain(args: argparse.Namespace) -> int:
    from histodrl.pretext.train import run_pretrain
    from histodrl.training import config_dict

    options = config_dict(args)
    options.update(resume=args.resume, overwrite=args.overwrite, explicit=sorted(args._explicit))
    return run_pretrain(options)


@subcommand
def _add_export(sub: argparse._SubParsersAction) -> None:
    p = _add(sub, "export", "write RUN/encoder.safetensors and RUN/MODEL_CARD.md", _run_export)
    p.add_argument("run", help="a pretraining run folder")


def _run_export(args: argparse.Namespace) -> int:
    from histodrl.pretext.base import export_run

    path = export_run(Path(args.run))
    print(f"histodrl: wrote {path} and {path.parent / 'MODEL_CARD.md'}")
    return 0


# --- deform-preview (histodrl.deform) ------------------------------------------------------------


@subcommand
def _add_deform_preview(sub: argparse._SubParsersAction) -> None:
    p = _add(
        sub,
        "deform-preview",
        "write a PNG grid of an image and its elastic deformations at sigma = 0.03, 0.04, 0.05 S",
        _run_deform_preview,
    )
    p.add_argument("image", metavar="IMAGE", help="an image file Pillow can read")
    p.add_argument("--out", required=True, metavar="PNG", help="the PNG file to write")
    p.add_argument(
        "--size",
        type=int,
        default=256,
        help="side S of the centre crop that is deformed; a side of the image shorter than S is "
        "kept whole (default: 256)",
    )
    p.add_argument("--seed", type=int, default=0, help="noise seed, shared by the three panels")


def _run_deform_preview(args: argparse.Namespace) -> int:
    from histodrl.experiments.preview import deform_preview

    message = deform_preview(args.image, Path(args.out), size=args.size, seed=args.seed)
    print(f"histodrl: {message}")
    return 0


# --- data: synth --------------------------------------------------------------------------------


@subcommand
def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = _add(
        sub, "synth", "write synthetic GLaS or PCam data in the real on-disk formats", _run_synth
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND", parser_class=_Parser, required=True)
    glas = kinds.add_parser(
        "glas",
        help="H&E colon glands: train/testA/testB BMPs, instance _anno.bmp, Grade.csv",
        description="Write a synthetic GLaS folder (readable as glas:DIR).",
    )
    glas.add_argument("dir", metavar="DIR", help="output folder")
    glas.add_argument("--n-train", type=int, default=85, help="train images (default: 85)")
    glas.add_argument("--n-test-a", type=int, default=60, help="testA images (default: 60)")
    glas.add_argument("--n-test-b", type=int, default=20, help="testB images (default: 20)")
    glas.add_argument(
        "--size",
        default="775x522",
        help="WIDTHxHEIGHT of most images; 1 in 20 is smaller, as in GLaS (default: 775x522)",
    )
    pcam = kinds.add_parser(
        "pcam",
        help="96x96 lymph-node patches: the six PCam HDF5 files and three meta CSVs",
        description="Write a synthetic PCam folder (readable as pcam:DIR).",
    )
    pcam.add_argument("dir", metavar="DIR", help="output folder")
    pcam.add_argument("--n-train", type=int, default=2048, help="train patches (default: 2048)")
    pcam.add_argument("--n-valid", type=int, default=256, help="valid patches (default: 256)")
    pcam.add_argument("--n-test", type=int, default=256, help="test patches (default: 256)")
    for q in (glas, pcam):
        q.add_argument("--seed", type=int, default=0, help="same seed, same files (default: 0)")
        q.add_argument("--overwrite", action="store_true", help="replace a dataset already in DIR")
        q.add_argument("--config", help="YAML file of option values (command-line options win)")
        q.set_defaults(_subparser=q)


def _run_synth(args: argparse.Namespace) -> int:
    minimum = 0 if args.kind == "glas" else 1
    counts = {k: v for k, v in vars(args).items() if k.startswith("n_")}
    for name, n in counts.items():
        if not isinstance(n, int) or n < minimum:
            option = "--" + name.replace("_", "-")
            raise UserInputError(f"{option} {n!r}: expected an integer >= {minimum}")
    if args.kind == "glas":
        from histodrl.data.synth_glas import make_glas, parse_size

        if sum(counts.values()) == 0:
            raise UserInputError("--n-train, --n-test-a, --n-test-b: expected at least one image")
        out = make_glas(
            args.dir, **counts, size=parse_size(args.size), seed=args.seed, overwrite=args.overwrite
        )
        what = f"{args.n_train} train, {args.n_test_a} testA, {args.n_test_b} testB images"
    else:
        from histodrl.data.synth_pcam import make_pcam

        out = make_pcam(args.dir, **counts, seed=args.seed, overwrite=args.overwrite)
        what = f"{args.n_train} train, {args.n_valid} valid, {args.n_test} test patches"
    print(f"histodrl: wrote synthetic {args.kind} ({what}) to {out}")
    return 0


# --- metrics: glas-metrics ----------------------------------------------------------------------


@subcommand
def _add_glas_metrics(sub: argparse._SubParsersAction) -> None:
    p = _add(
        sub,
        "glas-metrics",
        "score predicted instance label images with the GLaS object F1, Dice and Hausdorff",
        _run_glas_metrics,
    )
    p.add_argument("pred_dir", metavar="PRED_DIR", help="predicted label images (testA_1*.png ...)")
    p.add_argument("gt_dir", metavar="GT_DIR", help="annotations (testA_1_anno.bmp ...)")
    p.add_argument(
        "--aggregate",
        choices=["pooled", "mean"],
        default="pooled",
        help="pooled: the challenge's set-level definition (default); mean: mean of per-image scores",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _run_glas_metrics(args: argparse.Namespace) -> int:
    import json

    from histodrl.metrics.label_files import evaluate_glas_folders, format_glas_table

    results = evaluate_glas_folders(args.pred_dir, args.gt_dir, aggregate=args.aggregate)
    if args.json:
        print(json.dumps({"aggregate": args.aggregate, "parts": results}, indent=2))
    else:
        print(format_glas_table(results, args.aggregate))
    return 0


# --- downstream: segment, classify, probe -------------------------------------------------------


def _add_encoder_arguments(p: argparse.ArgumentParser) -> None:
    """Options naming the trunk and its weights (classify and probe)."""
    p.add_argument("--data", required=True, help="pcam:DIR, the PCam HDF5 files (train/valid/test)")
    p.add_argument(
        "--init",
        default="random",
        help="trunk weights: random (default), a pretraining RUN, FILE.safetensors, imagenet:FILE",
    )
    p.add_argument("--arch", choices=("vgg19_bn", "vgg19"), default="vgg19_bn", help="trunk")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (as pretrained)")
    p.add_argument(
        "--label-fraction",
        type=float,
        default=1.0,
        help="seeded share of the labelled training split, in (0, 1] (paper: 0.0001 ... 1)",
    )
    p.add_argument("--cache-ram", action="store_true", help="read the PCam splits into memory")


@subcommand
def _add_classify(sub: argparse._SubParsersAction) -> None:
    from histodrl.pretext.options import add_training_arguments

    p = _add(
        sub,
        "classify",
        "fine-tune a PCam patch classifier on a fraction of the labels (Table III)",
        _run_classify,
    )
    _add_encoder_arguments(p)
    add_training_arguments(p)
    g = p.add_argument_group("classification")
    g.add_argument("--epochs", type=float, default=30.0, help="passes over the labelled subset")
    g.add_argument("--min-steps", type=int, default=1000, help="train at least this many steps")
    g.add_argument("--max-steps", type=int, default=None, help="train at most this many steps")
    g.add_argument("--batch-size", type=int, default=128, help="per process; capped by the subset")
    g.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    g.add_argument("--dropout", type=float, default=0.5, help="dropout before the Linear layer")
    g.add_argument(
        "--val-every",
        type=int,
        default=None,
        help="steps between validations (default: 20 per run)",
    )


def _run_classify(args: argparse.Namespace) -> int:
    from histodrl.downstream.classify import run_classify
    from histodrl.training import config_dict

    options = config_dict(args)
    options.update(resume=args.resume, overwrite=args.overwrite, explicit=sorted(args._explicit))
    return run_classify(options)


@subcommand
def _add_probe(sub: argparse._SubParsersAction) -> None:
    p = _add(
        sub,
        "probe",
        "linear classifiers on frozen, pooled block features of a trunk (Fig. 4(a))",
        _run_probe,
    )
    _add_encoder_arguments(p)
    p.add_argument(
        "--blocks",
        default="conv2,conv3,conv4",
        help="blocks to probe: conv1..conv5 or 1..5, comma-separated (default: conv2,conv3,conv4)",
    )
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and the probes")
    p.add_argument("--overwrite", action="store_true", help="replace an existing RUN")
    p.add_argument("--config", help="YAML file of options (a run's config.yaml works)")
    p.add_argument("--epochs", type=int, default=30, help="epochs of each linear classifier")
    p.add_argument("--batch-size", type=int, default=256, help="batch of the linear classifiers")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    p.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (one device)")
    p.add_argument(
        "--precision",
        default=None,
        help="trunk precision: bf16-mixed or 32-true (default: bf16-mixed on GPU, else 32-true)",
    )
    p.add_argument(
        "--num-workers", type=int, default=None, help="DataLoader workers (default: min(4, CPUs))"
    )


def _run_probe(args: argparse.Namespace) -> int:
    from histodrl.downstream.probe import run_probe
    from histodrl.training import config_dict

    options = config_dict(args)
    options.update(overwrite=args.overwrite)
    return run_probe(options)


@subcommand
def _add_segment(sub: argparse._SubParsersAction) -> None:
    from histodrl.downstream.segment_options import add_segment_arguments

    p = _add(
        sub,
        "segment",
        "fine-tune a U-Net on GLaS glands and score test A / test B (Table I)",
        _run_segment,
    )
    add_segment_arguments(p)


def _run_segment(args: argparse.Namespace) -> int:
    from histodrl.downstream.segment import REPORT_FILE, run_segment
    from histodrl.training import config_dict

    options = config_dict(args)
    options.update(
        resume=args.resume,
        overwrite=args.overwrite,
        explicit=sorted(getattr(args, "_explicit", ())),
    )
    metrics = run_segment(options)
    for part, values in metrics.items():
        s = values["pooled"]
        print(
            f"histodrl: {part} ({values['n_images']} images, pooled): F1 {s['f1']:.4f}, "
            f"object Dice {s['dice']:.4f}, object Hausdorff {s['hausdorff']:.2f}"
        )
    if metrics:
        print(f"histodrl: wrote {Path(args.out) / REPORT_FILE}")
    return 0


# --- experiments: reproduce ---------------------------------------------------------------------


@subcommand
def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    p = _add(
        sub,
        "reproduce",
        "run the paper's tables and figures (every method x seed) and write OUT/<name>/report.md",
        _run_reproduce,
    )
    p.add_argument(
        "names",
        nargs="+",
        metavar="NAME",
        help="table1, table2, table3, table4, fig4, fig5, or all",
    )
    p.add_argument("--out", required=True, help="output folder; finished runs in it are reused")
    p.add_argument("--glas", help="GLaS folder (tables 1, 2, 4 and fig5)")
    p.add_argument("--pcam", help="PCam folder (tables 3, 4 and fig4)")
    p.add_argument(
        "--imagenet", help="torchvision vgg19_bn .pth: adds the ImageNet row (--scale paper)"
    )
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per row (default: 5)")
    p.add_argument(
        "--scale",
        default="smoke",
        help="smoke: 1/8-wide trunk, tiny crops, a few steps (tests the harness on a CPU); "
        "paper: the paper's settings, for a GPU (default: smoke)",
    )
    p.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (every run)")
    p.add_argument(
        "--num-workers", type=int, default=None, help="DataLoader workers (default: per scale)"
    )
    p.add_argument("--dry-run", action="store_true", help="list the runs (reused or to run) only")


def _run_reproduce(args: argparse.Namespace) -> int:
    from histodrl.experiments.reproduce import reproduce

    return reproduce(
        args.names,
        out=args.out,
        glas=args.glas,
        pcam=args.pcam,
        imagenet=args.imagenet,
        seeds=args.seeds,
        scale=args.scale,
        accelerator=args.accelerator,
        num_workers=args.num_workers,
        dry_run=args.dry_run,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="histodrl",
        description="Deformation Representation Learning for histopathology images.",
    )
    parser.add_argument("--version", action="version", version=f"histodrl {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


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
        args = _parse_with_config(parser, argv)
        if getattr(args, "_handler", None) is None:
            parser.print_help()
            return EXIT_BAD_INPUT
        return int(args._handler(args) or 0)
    except UserInputError as exc:
        if debug:
            raise
        print(f"histodrl: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("histodrl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
