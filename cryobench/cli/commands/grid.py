"""``cryobench grid``: a grid file's cells, cached (finished cells are not recomputed)."""
from __future__ import annotations

from pathlib import Path

from cryobench.cli.common import data_dir, positive, report_interrupted, threads_option
from cryobench.harness.grid import expand, load_grid, run_grid, unplanned
from cryobench.harness.reference import record_references

HELP = "run a TOML grid of tasks × scales × optimizers × values × seeds"
TASK = False


def add_arguments(parser) -> None:
    parser.add_argument("grid", help="grid file, e.g. results/paper-small/grid.toml")
    parser.add_argument("--out", help="results folder (default: the grid file's folder)")
    parser.add_argument("--workers", type=int, help="local processes (default: one per core)")
    parser.add_argument("--threads", type=int, help="BLAS threads per cell (default 1; part of "
                        "each cell's identity, since they change the last bits)")
    parser.add_argument("--scheduler", help="address of a Dask distributed scheduler, e.g. "
                        "tcp://host:8786")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args) -> int:
    threads_option(args.threads)
    positive(args.workers, "--workers", "the number of processes is a positive integer")
    grid = load_grid(args.grid)
    out = Path(args.out) if args.out else grid.path.parent
    plans = expand(grid, data_dir(args), threads=args.threads or 1)
    written = record_references(out, {(p.spec.task, p.spec.scale): p.task_hash for p in plans},
                                data_dir(args))
    if written:
        print(f"wrote the ground truth's test NLL into {written}")
    outcomes = run_grid(plans, out, args.workers, args.scheduler, data_dir(args),
                        progress=not args.quiet)
    status = {cell: o.status for cell, o in outcomes.items()}
    counts = {s: list(status.values()).count(s) for s in sorted(set(status.values()))}
    print(f"{len(plans)} cells in {out / 'cells'}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    extra, other_data = unplanned(plans, out / "cells", {o.cell for o in outcomes.values()})
    if extra:
        print(f"{len(extra)} other finished cells there are no run of this grid ({other_data} "
              f"computed on another definition of its tasks, which reports refuse to read beside "
              f"this grid's runs): {', '.join(extra[:3])}{' …' if len(extra) > 3 else ''}; remove "
              "them once this grid has replaced them")
    return report_interrupted(status, out)
