"""Owns the ``segtune`` command: argument parsing, logging set-up, and turning errors into exit codes.

Each subcommand lives in its own module and is a thin shell over the Python API.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
import warnings

from segtune.version import __version__
from segtune.cli import benchmark as benchmark_cmd
from segtune.cli import data as data_cmd
from segtune.cli import evaluate as evaluate_cmd
from segtune.cli import export as export_cmd
from segtune.cli import models as models_cmd
from segtune.cli import predict as predict_cmd
from segtune.cli import report as report_cmd
from segtune.cli import train as train_cmd
from segtune.errors import SegtuneError
from segtune.machine import is_terminal
from segtune.threads import configure_threads

COMMANDS = (train_cmd, evaluate_cmd, predict_cmd, export_cmd, benchmark_cmd, report_cmd, data_cmd, models_cmd)


class _TqdmSafeHandler(logging.StreamHandler):
    """Writes log lines through tqdm on a terminal so progress bars are not torn."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno < logging.WARNING else f"{record.levelname}: {message}"


def setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    handler: logging.Handler = _TqdmSafeHandler() if is_terminal() else logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter("%(message)s"))
    handler.setLevel(level)
    root = logging.getLogger("segtune")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if level > logging.DEBUG else logging.DEBUG)
    root.propagate = False
    logging.captureWarnings(True)
    # torchvision and faster-coco-eval warnings go through logging too, once each.
    warnings.simplefilter("default")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segtune",
        description="Fine-tune, evaluate and run torchvision detection / instance-segmentation models.",
    )
    parser.add_argument("--version", action="version", version=f"segtune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(-1 if args.quiet else 1 if args.debug else 0)
    configure_threads()
    try:
        return int(args.run(args) or 0)
    except SegtuneError as e:
        if args.debug:
            traceback.print_exc()
        print(f"segtune: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("segtune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
