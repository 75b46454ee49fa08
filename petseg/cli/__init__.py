"""``petseg`` command line: one module per group of commands, each with ``add_parsers`` and a
handler per command; the work is the library's (:mod:`petseg.folders`, :mod:`petseg.evaluate`,
:mod:`petseg.interactive`, :mod:`petseg.model`, :mod:`petseg.train`). Importing it loads no
torch, MONAI or SimpleITK: ``petseg --help`` is fast."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import petseg
from petseg.cli import evaluate, predict, report, tools, train
from petseg.frontend import ArgumentParser, configure_threads, run_guarded, setup_logging

COMMANDS = (predict, evaluate, report, tools, train)


def build_parser() -> argparse.ArgumentParser:
    # -v/-q before or after the subcommand; SUPPRESS keeps a subcommand from resetting the other
    common = ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    common.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="warnings and errors only"
    )
    parser = _Parser(prog="petseg", description="PET/CT lesion segmentation (autoPET III).", parents=[common])
    parser.add_argument("--version", action="version", version=f"petseg {petseg.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    sub_add = sub.add_parser
    sub.add_parser = lambda *a, **kw: sub_add(*a, parents=[common], **kw)
    for module in COMMANDS:
        module.add_parsers(sub)
    return parser


class _Parser(ArgumentParser):
    """The top parser: -v/-q False when given nowhere. (Not ``set_defaults``: the parents share
    their action objects, so a default set here would reach the subcommands, and a subcommand
    parsed after ``petseg -q`` would reset it.)"""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        for name in ("verbose", "quiet"):
            setattr(namespace, name, getattr(namespace, name, False))
        return namespace, extras


def main(argv: Sequence[str] | None = None) -> int:
    configure_threads()  # torch and SimpleITK are imported later, by the command
    args = build_parser().parse_args(argv)
    setup_logging(verbose=args.verbose, quiet=args.quiet)
    return run_guarded("petseg", lambda: args.func(args), verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
