"""scoredistill: distil diffusion teachers (exact testbeds or diffusers folders), optimise with
score distillation, distil classifiers; presets, baselines and benchmarks.

Every command that runs work writes one folder (``--out``) with ``config.json``, machine-readable
results and PNG figures. Bad input ends with a one-line message on stderr and exit code 2
(``docs/errors.md``). The CLI only parses and dispatches: the work is in ``runs`` and below.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..errors import EXIT_USAGE, check_flag_values, report
from .common import Parser, UsageError
from .runs import add_run_commands
from .teachers import add_teacher_commands

__all__ = ["UsageError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = Parser(prog="scoredistill", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    add_teacher_commands(sub)
    add_run_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (``docs/errors.md``): 0 success, 1 internal error (the
    traceback and a request to report it), 2 bad input (one line), 3 the non-finite stop (one
    line), 130 interrupted. ``SCOREDISTILL_DEBUG=1`` re-raises instead."""
    try:
        args = build_parser().parse_args(argv)
        check_flag_values(vars(args))
        return args.func(args)
    except KeyboardInterrupt:
        print("scoredistill: interrupted; the last checkpoint is intact", file=sys.stderr)
        return 130
    except Exception as err:  # the one error boundary
        if os.environ.get("SCOREDISTILL_DEBUG"):
            raise
        if isinstance(err, UsageError):
            print(f"scoredistill: error: {str(err).splitlines()[0]}", file=sys.stderr)
            return EXIT_USAGE
        return report(err)


if __name__ == "__main__":
    raise SystemExit(main())
