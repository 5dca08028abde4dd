"""``cryobench gate``: the quality gate, every optimizer on the ci tasks against the committed
gate reference."""
from __future__ import annotations

from pathlib import Path

from cryobench.checks.gate import DEFAULT_REFERENCE, gate
from cryobench.cli.common import MAX_BUDGET, data_dir, positive

HELP = ("quality gate: each optimizer on the ci tasks vs committed reference values; exit 1 if one "
        "got worse beyond its seed noise")
TASK = False


def add_arguments(parser) -> None:
    parser.add_argument("--reference", help="reference file (default results/gate/reference.json)")
    parser.add_argument("--update", action="store_true", help="rewrite the reference from this tree")
    parser.add_argument("--budget", type=int, help="with --update: gradient evaluations (default 2000)")
    parser.add_argument("--seeds", type=int, help="with --update: seeds per method (default 5)")


def main(args) -> int:
    positive(args.budget, "--budget", "a budget is a positive number of gradient evaluations",
             MAX_BUDGET)
    positive(args.seeds, "--seeds", "the gate needs at least 2 seeds (its noise is their spread)")
    return gate(reference=Path(args.reference or DEFAULT_REFERENCE), update=args.update,
                budget=args.budget, seeds=args.seeds, data_dir=data_dir(args))
