"""The ``cryobench`` command line. ``cryobench COMMAND --help`` says the rest."""
from __future__ import annotations

import sys

from cryobench.cli.parser import build_parser
from cryobench.errors import InputError
from cryobench.harness.grid import GridInterrupted


def os_problem(exc: OSError) -> str:
    """An operating-system error as one line: ``path: problem`` (the path first, as the other
    errors name their file first)."""
    reason = exc.strerror or str(exc)
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{' → '.join(paths)}: {reason}" if paths else reason


def main(argv=None) -> int:
    """Run one command; returns the exit status (2 for bad input, 130 when interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (InputError, ValueError) as exc:
        print(f"cryobench: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:          # a path that is a file, a folder, read-only, missing, full
        print(f"cryobench: error: {os_problem(exc)}", file=sys.stderr)
        return 2
    except GridInterrupted as exc:
        print(f"cryobench: {exc}", file=sys.stderr)
        return 130

