"""``cryobench simulate``: simulate a task's dataset into the cache, or into ``--out``."""
from __future__ import annotations

from pathlib import Path

from cryobench.cli.common import data_dir
from cryobench.data.datasets import simulate_task

HELP = "simulate a task's dataset (cached unless --out)"
TASK = True


def add_arguments(parser) -> None:
    parser.add_argument("--out", help="write the dataset into this folder instead of the cache")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args) -> None:
    name, scale, n_images, folder = simulate_task(args.task, args.scale, data_dir(args),
                                                  Path(args.out) if args.out else None,
                                                  progress=not args.quiet)
    print(f"{name} ({scale}): {n_images} images in {folder}")
