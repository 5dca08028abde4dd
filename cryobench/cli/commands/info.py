"""``cryobench info``: the sizes of a task at a scale."""
from __future__ import annotations

from cryobench.cli.common import data_dir
from cryobench.task import describe

HELP = "sizes of a task at a scale: images, r_max, quadrature, flops"
TASK = True


def add_arguments(parser) -> None:
    """Only the task, its scale and the dataset folder."""


def main(args) -> None:
    for key, value in describe(args.task, args.scale, data_dir(args)).items():
        print(f"{key:34s} {value}")
