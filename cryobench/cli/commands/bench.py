"""``cryobench bench``: kernel and SGEMM throughput, SGD epoch, test NLL, peak memory."""
from __future__ import annotations

from cryobench.checks.bench import DEFAULT_TASKS
from cryobench.checks.benches import run_benches
from cryobench.cli.common import data_dir, positive, threads_option
from cryobench.data.spec import SCALES

HELP = "kernel vs SGEMM throughput, SGD epoch, test NLL, peak memory"
TASK = False


def add_arguments(parser) -> None:
    parser.add_argument("--task", action="append", help="task to bench (repeatable; default: "
                        "synthetic-cylinder and thermus-style)")
    parser.add_argument("--scale", default="ci", help=f"a scale of the benched tasks: "
                        f"{', '.join(SCALES)}, or a --task's own [scales.NAME] (default ci)")
    parser.add_argument("--epoch-batches", type=int, metavar="N",
                        help="time N SGD minibatches and extrapolate to the epoch (default: the "
                             "whole epoch; 50 at paper scale)")
    parser.add_argument("--threads", type=int, help="BLAS and numba threads (default: all cores)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timings are the best of this many (default 5)")


def main(args) -> None:
    threads_option(args.threads)
    positive(args.epoch_batches, "--epoch-batches", "a number of minibatches is a positive integer")
    positive(args.repeats, "--repeats", "a number of repeats is a positive integer")
    run_benches(args.task or DEFAULT_TASKS, args.scale, data_dir(args), threads=args.threads,
                epoch_batches=args.epoch_batches, repeats=args.repeats)
