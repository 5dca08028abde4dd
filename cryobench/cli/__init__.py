"""The ``cryobench`` command line. ``cryobench COMMAND --help`` says the rest."""
from __future__ import annotations

import sys

from cryobench.cli.parser import build_parser
from cryobench.errors import InputError
from cryobench.harness.grid import GridInterrupted


def main(argv=None) -> int:
    """Run one command; returns the exit status (2 for bad input, 130 when interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (InputError, ValueError, FileNotFoundError) as exc:
        print(f"cryobench: error: {exc}", file=sys.stderr)
        return 2
    except GridInterrupted as exc:
        print(f"cryobench: {exc}", file=sys.stderr)
        return 130

