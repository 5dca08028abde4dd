"""The ``cryobench`` command line (SPEC §6). ``cryobench COMMAND --help`` says the rest."""
from __future__ import annotations

import argparse

from cryobench.base.paths import RESULTS_DIR
from cryobench.cli.commands import (cmd_bench, cmd_gate, cmd_grid, cmd_info, cmd_leaderboard,
                                    cmd_list, cmd_report, cmd_run, cmd_simulate, cmd_speed_gate,
                                    cmd_tune, cmd_verify)
from cryobench.data.spec import SCALES

SCALE_HELP = (f"a scale of the task: {', '.join(SCALES)} for the shipped tasks, or any scale the "
              "task's own [scales.NAME] tables declare (default: the task's default_scale, else "
              "its only scale, else ci)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(prog="cryobench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, func, help_text, task=True):
        p = sub.add_parser(name, help=help_text, description=help_text)
        if task:
            p.add_argument("task", help="task name (see `cryobench list`) or path to a .toml")
            p.add_argument("--scale", help=SCALE_HELP)
        p.add_argument("--data-dir", help="dataset cache (default $CRYOBENCH_DATA or "
                                          "~/.cache/cryobench)")
        p.set_defaults(func=func)
        return p

    add("list", cmd_list, "list tasks and optimizers", task=False)
    add("info", cmd_info, "sizes of a task at a scale: images, r_max, quadrature, flops")
    p = add("simulate", cmd_simulate, "simulate a task's dataset (cached unless --out)")
    p.add_argument("--out", help="write the dataset into this folder instead of the cache")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = add("run", cmd_run, "run one optimizer on one task: trace, status, densities, FSC")
    p.add_argument("optimizer", help="registered name, module:attr, path/file.py:attr, or another "
                   "library's: torch:torch.optim.AdamW, optax:optax.lion (extras torch, jax)")
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="a hyper-parameter value (repeatable); others come from --tuned or defaults")
    p.add_argument("--seed", type=int, default=0, help="training stream and optimizer RNG (default 0)")
    p.add_argument("--budget", type=int, help="gradient evaluations (default: the task's 10 epochs)")
    p.add_argument("--time-limit", type=float, help="stop after this many seconds of optimizer time, "
                                                    "inside a step too (default 6 hours)")
    p.add_argument("--tuned", help="tuned values file (default: results/tuned.json for a shipped "
                   "task, TASK.tuned.json beside any other task file); 'none' for defaults")
    p.add_argument("--threads", type=int, help="BLAS threads (default 1; part of the run's "
                                                "identity, since they change the last bits)")
    p.add_argument("--out", default="runs", help="results folder (default ./runs)")

    p = add("grid", cmd_grid, "run a TOML grid of tasks × scales × optimizers × values × seeds",
            task=False)
    p.add_argument("grid", help="grid file, e.g. results/paper-small/grid.toml")
    p.add_argument("--out", help="results folder (default: the grid file's folder)")
    p.add_argument("--workers", type=int, help="local processes (default: one per core)")
    p.add_argument("--threads", type=int, help="BLAS threads per cell (default 1; part of each "
                                                "cell's identity, since they change the last bits)")
    p.add_argument("--scheduler", help="address of a Dask distributed scheduler, e.g. tcp://host:8786")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = add("tune", cmd_tune, "choose hyper-parameters on the validation split", task=False)
    p.add_argument("task", nargs="+", help="task names or .toml paths")
    p.add_argument("--scale", help=SCALE_HELP + "; without it each task uses its own")
    p.add_argument("--optimizers", default="sgd,momentum,nesterov,adagrad,tonga,olbfgs,hessian-free",
                   help="comma-separated (default: the paper's seven)")
    p.add_argument("--params", default="lr", help="hyper-parameters to search (default lr)")
    p.add_argument("--points", type=int, default=9, help="values per hyper-parameter (default 9)")
    p.add_argument("--seeds", type=int, default=2, help="training streams per candidate; the "
                                                       "median decides (default 2, at least 2)")
    p.add_argument("--budget", type=int, help="gradient evaluations per candidate (default 1 epoch)")
    p.add_argument("--per-decade", type=int, default=5, help="validation checkpoints per decade of "
                   "evaluations (default 5; the choice uses the first and the last)")
    p.add_argument("--range", action="append", default=[], metavar="NAME=LOW,HIGH",
                   help="search NAME over [LOW, HIGH] instead of its declared range (repeatable; "
                        "recorded with the choice)")
    p.add_argument("--out", help="folder for the candidate runs (default: results/tune/SCALE for "
                   "a shipped task, ./results/tune/SCALE when installed from a wheel; "
                   "TASK.tune/SCALE beside any other task file)")
    p.add_argument("--record", help="tuned values file to update (default: results/tuned.json for "
                   "a shipped task in a checkout, required for one when installed from a wheel; "
                   "TASK.tuned.json beside any other task file, never the repository's results/)")
    p.add_argument("--workers", type=int, help="local processes (default: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = add("report", cmd_report, "figures 3 and 4, the 5K/50K/Final table, FSC, profiles",
            task=False)
    p.add_argument("results", nargs="+", help="results folders (holding cells/)")
    p.add_argument("--out", help="output folder (default: RESULTS/report)")

    p = add("leaderboard", cmd_leaderboard, "regenerate results/LEADERBOARD.md and .html from committed results",
            task=False)
    p.add_argument("--results", default=str(RESULTS_DIR),
                   help="the results folder (default: the repository's results/)")

    p = add("verify", cmd_verify, "recompute stored cells (or their trace prefixes) and compare: "
                                  "bit-identical on the same platform, within the seed spread elsewhere",
            task=False)
    p.add_argument("results", nargs="+", help="results folders (holding cells/)")
    p.add_argument("--sample", type=int, help="verify this many cells, spread over the methods "
                                              "(default: all)")
    p.add_argument("--prefix", type=int, metavar="EVALS",
                   help="recompute each trace up to this many evaluations (default: whole runs)")

    p = add("bench", cmd_bench, "kernel vs SGEMM throughput, SGD epoch, test NLL, peak memory",
            task=False)
    p.add_argument("--task", action="append", help="task to bench (repeatable; default: "
                                                  "synthetic-cylinder and thermus-style)")
    p.add_argument("--scale", default="ci", help=f"a scale of the benched tasks: "
                   f"{', '.join(SCALES)}, or a --task's own [scales.NAME] (default ci)")
    p.add_argument("--epoch-batches", type=int, metavar="N",
                   help="time N SGD minibatches and extrapolate to the epoch (default: the whole "
                        "epoch; 50 at paper scale)")
    p.add_argument("--threads", type=int, help="BLAS and numba threads (default: all cores)")
    p.add_argument("--repeats", type=int, default=5, help="timings are the best of this many "
                                                         "(default 5)")

    p = add("gate", cmd_gate, "quality gate: each optimizer on the ci tasks vs committed reference "
                              "values; exit 1 if one got worse beyond its seed noise", task=False)
    p.add_argument("--reference", help="reference file (default results/gate/reference.json)")
    p.add_argument("--update", action="store_true", help="rewrite the reference from this tree")
    p.add_argument("--budget", type=int, help="with --update: gradient evaluations (default 2000)")
    p.add_argument("--seeds", type=int, help="with --update: seeds per method (default 5)")

    p = add("speed-gate", cmd_speed_gate, "speed check: kernel time over SGEMM time on the same "
            "shapes, interleaved, vs the committed reference; exit 1 if slower than allowed",
            task=False)
    p.add_argument("--reference", help="reference file (default results/gate/speed.json)")
    p.add_argument("--update", action="store_true", help="rewrite the reference on this machine")
    p.add_argument("--tolerance", type=float, help="fail above this × the reference ratio "
                                                   "(default: the reference's, 1.4)")
    p.add_argument("--task", action="append", help="with --update: task (repeatable; default both)")
    p.add_argument("--scale", help="with --update: scale (default small)")
    return parser
