"""``cryobench tune``: choose hyper-parameters on the validation split and record them."""
from __future__ import annotations

from pathlib import Path

from cryobench.cli.common import (MAX_BUDGET, SCALE_HELP, data_dir, oracle_option, parse_ranges,
                                  positive)
from cryobench.errors import InputError
from cryobench.harness.tuning import tune

HELP = "choose hyper-parameters on the validation split"
TASK = False


def add_arguments(parser) -> None:
    parser.add_argument("task", nargs="+", help="task names or .toml paths")
    parser.add_argument("--scale", help=SCALE_HELP + "; without it each task uses its own")
    parser.add_argument("--optimizers", default="sgd,momentum,nesterov,adagrad,tonga,olbfgs,hessian-free",
                        help="comma-separated (default: the paper's seven)")
    parser.add_argument("--params", default="lr", help="hyper-parameters to search (default lr)")
    parser.add_argument("--points", type=int, default=9, help="values per hyper-parameter (default 9)")
    parser.add_argument("--seeds", type=int, default=2, help="training streams per candidate; the "
                        "median decides (default 2, at least 2)")
    parser.add_argument("--budget", type=int, help="gradient evaluations per candidate (default 1 epoch)")
    parser.add_argument("--per-decade", type=int, default=5, help="validation checkpoints per "
                        "decade of evaluations (default 5; the choice uses the first and the last)")
    parser.add_argument("--range", action="append", default=[], metavar="NAME=LOW,HIGH",
                        help="search NAME over [LOW, HIGH] instead of its declared range "
                             "(repeatable; recorded with the choice)")
    parser.add_argument("--around", metavar="SCALE",
                        help="search each method a decade either side of its value tuned at SCALE "
                             "(e.g. small), and once more over the next two decades past an end "
                             "where the choice sits; not with --range")
    parser.add_argument("--out", help="folder for the candidate runs (default: results/tune/SCALE "
                        "for a shipped task, ./results/tune/SCALE when installed from a wheel; "
                        "TASK.tune/SCALE beside any other task file)")
    parser.add_argument("--record", help="tuned values file to update (default: results/tuned.json "
                        "for a shipped task in a checkout, required for one when installed from a "
                        "wheel; TASK.tuned.json beside any other task file, never the repository's "
                        "results/)")
    parser.add_argument("--workers", type=int, help="local processes (default: one per core)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    oracle_option(parser)


def main(args) -> None:
    names = args.params.split(",")
    positive(args.points, "--points", "tuning needs at least 2 values per hyper-parameter", 100)
    if args.points < 2:
        raise InputError(f"--points {args.points}: tuning needs at least 2 values per hyper-parameter")
    positive(args.budget, "--budget", "a budget is a positive number of gradient evaluations",
             MAX_BUDGET)
    positive(args.workers, "--workers", "the number of processes is a positive integer")
    positive(args.seeds, "--seeds", "tuning needs at least 2 seeds per candidate", 100)
    if args.record and Path(args.record).exists() and not Path(args.record).is_file():
        raise InputError(f"--record {args.record}: not a regular file")
    chosen = tune(args.task, args.scale, args.optimizers.split(","), names, args.points,
                  args.budget, args.out, args.record, args.workers, data_dir(args),
                  progress=not args.quiet, seeds=args.seeds, per_decade=args.per_decade,
                  ranges=parse_ranges(args.range), oracle=args.oracle, around=args.around)
    for (task, name), entry in sorted(chosen.items()):
        values = ", ".join(f"{k}={v:g}" for k, v in entry["params"].items() if k in names)
        edge = "; ".join(f"{k} blew up at {v['value']:g} ({v['ratio']:.3g}×)" if v["value"] is not None
                         else f"no {k} blew up in the range" for k, v in entry["nearest_blow_up"].items())
        print(f"{task:20s} {name:14s} {values}  (median validation NLL {entry['validation_nll']:.6g}"
              f" over {len(entry['seeds'])} seeds; {edge})")
    print("recorded in " + ", ".join(sorted({e["recorded_in"] for e in chosen.values()})))
