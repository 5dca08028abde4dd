"""``cryobench speed-gate``: kernel time over GEMM time, interleaved, against the committed
reference."""
from __future__ import annotations

import math
from pathlib import Path

from cryobench.checks.speedgate import DEFAULT_REFERENCE, speed_gate
from cryobench.cli.common import data_dir
from cryobench.errors import InputError

HELP = ("speed check: kernel time over SGEMM time on the same shapes, interleaved, vs the "
        "committed reference; exit 1 if slower than allowed")
TASK = False


def add_arguments(parser) -> None:
    parser.add_argument("--reference", help="reference file (default results/gate/speed.json)")
    parser.add_argument("--update", action="store_true", help="rewrite the reference on this machine")
    parser.add_argument("--tolerance", type=float, help="fail above this × the reference ratio "
                        "(default: the reference's, 1.4)")
    parser.add_argument("--task", action="append", help="with --update: task (repeatable; default both)")
    parser.add_argument("--scale", help="with --update: scale (default small)")


def main(args) -> int:
    if args.tolerance is not None and not (math.isfinite(args.tolerance) and args.tolerance > 1):
        raise InputError(f"--tolerance {args.tolerance}: a tolerance is a finite ratio above 1 "
                         "(a gate that can never fail is no gate)")
    return speed_gate(Path(args.reference or DEFAULT_REFERENCE), args.update,
                      tolerance=args.tolerance, tasks=args.task, scale=args.scale,
                      data_dir=data_dir(args))
