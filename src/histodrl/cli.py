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


def _parse_with_config(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace:
    """Parse ``argv``; when a subcommand has ``--config FILE``, its values become the defaults.

    Options given on the command line always win over the file.
    """
    args = parser.parse_args(argv)
    config = getattr(args, "config", None)
    sub = getattr(args, "_subparser", None)
    if config and sub is not None:
        sub.set_defaults(**load_config_defaults(sub, config))
        args = parser.parse_args(argv)
    return args


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
    options.update(resume=args.resume, overwrite=args.overwrite)
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


# --- data: synth --------------------------------------------------------------------------------


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


# --- experiments: reproduce ---------------------------------------------------------------------


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
        print(f"histodrl: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("histodrl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
