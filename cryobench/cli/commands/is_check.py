"""``cryobench is-check``: the importance-sampled gradient against the exact one along an SGD run."""
from __future__ import annotations

import json

from cryobench.checks.is_check import is_check
from cryobench.cli.common import data_dir, parse_sets, positive
from cryobench.errors import InputError
from cryobench.model.importance import oracle_settings

HELP = "importance-sampled vs exact gradient at checkpoints of an SGD run"
TASK = True


def add_arguments(parser) -> None:
    parser.add_argument("--at", default="1,2,4", help="checkpoints in epochs, comma-separated "
                        "(default 1,2,4; the first visits, in epoch 1, are exact)")
    parser.add_argument("--draws", type=int, default=8, help="independent draws per checkpoint "
                        "(default 8)")
    parser.add_argument("--oracle", default="importance", help="the importance oracle's "
                        "settings (default: importance, its defaults)")
    parser.add_argument("--set", action="append", metavar="NAME=VALUE",
                        help="a hyper-parameter of the SGD run (repeatable; else tuned or default)")
    parser.add_argument("--json", help="also write the rows to this JSON file")


def main(args) -> int:
    positive(args.draws, "--draws", "a number of draws is a positive integer")
    try:
        at = [float(v) for v in args.at.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--at {args.at}: checkpoints are numbers of epochs, e.g. 1,2,4") from None
    if not at or min(at) <= 0:
        raise InputError(f"--at {args.at}: checkpoints are positive numbers of epochs")
    if oracle_settings(args.oracle) is None:
        raise InputError("--oracle: is-check measures the importance oracle, not the exact one")
    rows = is_check(args.task, args.scale, at, args.draws, args.oracle, data_dir(args),
                    params=parse_sets(args.set))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0
