"""``cryobench verify``: recompute committed cells (or their trace prefixes) and compare."""
from __future__ import annotations

from cryobench.cli.common import positive
from cryobench.harness.verify import verify

HELP = ("recompute stored cells (or their trace prefixes) and compare: bit-identical on the same "
        "platform, within the seed spread elsewhere")
TASK = False


def add_arguments(parser) -> None:
    parser.add_argument("results", nargs="+", help="results folders (holding cells/)")
    parser.add_argument("--sample", type=int, help="verify this many cells, spread over the "
                        "methods (default: all)")
    parser.add_argument("--prefix", type=int, metavar="EVALS",
                        help="recompute each trace up to this many evaluations (default: whole runs)")


def main(args) -> int:
    positive(args.sample, "--sample", "the number of cells is a positive integer")
    positive(args.prefix, "--prefix", "a prefix is a positive number of evaluations")
    return verify(args.results, args.sample, args.prefix)
