"""``cryobench run``: one optimizer on one task → one cell folder (trace, record, densities, FSC)."""
from __future__ import annotations

from pathlib import Path

from cryobench.cli.common import (oracle_option, MAX_BUDGET, data_dir, parse_sets, positive, report_interrupted,
                                  threads_option)
from cryobench.errors import InputError
from cryobench.harness.grid import run_grid
from cryobench.harness.plan import EACH_TASKS_OWN, Planner
from cryobench.harness.results import load_results

HELP = "run one optimizer on one task: trace, status, densities, FSC"
TASK = True


def add_arguments(parser) -> None:
    parser.add_argument("optimizer", help="registered name, module:attr, path/file.py:attr, or "
                        "another library's: torch:torch.optim.AdamW, optax:optax.lion (extras "
                        "torch, jax)")
    parser.add_argument("--set", action="append", metavar="NAME=VALUE",
                        help="a hyper-parameter value (repeatable); others come from --tuned or "
                             "defaults")
    parser.add_argument("--seed", type=int, default=0,
                        help="training stream and optimizer RNG (default 0)")
    parser.add_argument("--budget", type=int,
                        help="gradient evaluations (default: the task's 10 epochs)")
    parser.add_argument("--time-limit", type=float, help="stop after this many seconds of "
                        "optimizer time, inside a step too (default 6 hours)")
    parser.add_argument("--tuned", help="tuned values file (default: results/tuned.json for a "
                        "shipped task, TASK.tuned.json beside any other task file); 'none' for "
                        "defaults")
    parser.add_argument("--threads", type=int, help="BLAS threads (default 1; part of the run's "
                        "identity, since they change the last bits)")
    parser.add_argument("--out", default="runs", help="results folder (default ./runs)")
    oracle_option(parser)


def tuned_option(value):
    """``--tuned``: 'none' for defaults only; a named file must exist; else each task's own."""
    if value == "none":
        return None
    if value is not None and not Path(value).is_file():
        raise InputError(f"--tuned {value}: no such tuned-values file")
    return value or EACH_TASKS_OWN


def main(args) -> int:
    positive(args.budget, "--budget", "a budget is a positive number of gradient evaluations",
             MAX_BUDGET)
    threads_option(args.threads)
    if args.time_limit is not None and not args.time_limit > 0:
        raise InputError(f"--time-limit {args.time_limit}: a time limit is a positive number of seconds")
    if args.seed < 0:
        raise InputError(f"--seed {args.seed}: a seed is a training stream index ≥ 0")
    planner = Planner(data_dir(args), args.threads or 1, tuned_option(args.tuned))
    plan = planner.plan(planner.task(args.task, args.scale), args.optimizer, parse_sets(args.set),
                        args.seed, args.budget, time_limit=args.time_limit, oracle=args.oracle)
    out = Path(args.out)
    outcome = run_grid([plan], out, workers=1, data_dir=data_dir(args), progress=False)[plan.cell]
    print("hyper-parameters: " + ", ".join(f"{k}={v:g} ({plan.sources[k]})"
                                           for k, v in plan.spec.params.items()))
    if outcome.status == "interrupted":
        return report_interrupted({plan.cell: outcome.status}, out)
    row = load_results(out / "cells" / outcome.cell).cells.iloc[0]
    print(f"status {row.status}{': ' + row.message if row.message else ''}; {row.evals:,} evaluations "
          f"in {row.wall_s or 0:.1f} s; final test NLL {row.final_nll:.6g}; FSC 0.5 at "
          f"{row.resolution_A:.3g} Å")
    print(f"results: {out / 'cells' / outcome.cell}")
    return 0
