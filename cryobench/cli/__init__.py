"""The ``cryobench`` command line (SPEC §6). ``cryobench COMMAND --help`` says the rest."""
from __future__ import annotations

import sys

from cryobench.cli.parser import build_parser
from cryobench.errors import InputError


def main(argv=None) -> int:
    """Run one command; returns the exit status (2 for bad input, 130 when interrupted)."""
    from cryobench.harness.grid import GridInterrupted
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (InputError, ValueError, FileNotFoundError) as exc:
        print(f"cryobench: error: {exc}", file=sys.stderr)
        return 2
    except GridInterrupted as exc:
        print(f"cryobench: {exc}", file=sys.stderr)
        return 130

