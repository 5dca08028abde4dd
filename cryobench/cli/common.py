"""What several commands share: the dataset folder, ``--set`` and ``--range`` values, the scale
help, and the line for cells that were interrupted."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from cryobench.data.datasets import default_data_dir
from cryobench.data.spec import SCALES
from cryobench.errors import InputError

SCALE_HELP = (f"a scale of the task: {', '.join(SCALES)} for the shipped tasks, or any scale the "
              "task's own [scales.NAME] tables declare (default: the task's default_scale, else "
              "its only scale, else ci)")


def add_task(parser) -> None:
    """The TASK argument and ``--scale``."""
    parser.add_argument("task", help="task name (see `cryobench list`) or path to a .toml")
    parser.add_argument("--scale", help=SCALE_HELP)


def data_dir(args) -> Path:
    """``--data-dir``, else ``$CRYOBENCH_DATA``, else ``~/.cache/cryobench``."""
    return Path(args.data_dir) if args.data_dir else default_data_dir()


#: the most gradient evaluations a budget can mean (a year of kernel time at paper scale is ~10¹⁰)
MAX_BUDGET = 10**12


def positive(value, option: str, what: str, most: float | None = None) -> None:
    """Refuse, in one line, a value below 1 (or above ``most``) of a numeric option."""
    if value is not None and (value < 1 or (most is not None and value > most)):
        bound = f" (at most {most:,})" if most is not None and value > most else ""
        raise InputError(f"{option} {value}: {what}{bound}")


def threads_option(value, option: str = "--threads") -> None:
    """Refuse a thread count below 1 or above four per core of this machine."""
    positive(value, option, "the thread count is a positive integer", 4 * (os.cpu_count() or 1))


def parse_sets(items) -> dict:
    """``["lr=0.5", "momentum=0.9"]`` → {"lr": 0.5, "momentum": 0.9} (values as numbers)."""
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InputError(f"--set {item!r}: expected NAME=VALUE, e.g. --set lr=0.5")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise InputError(f"--set {item!r}: {value!r} is not a number") from None
    return out


def parse_ranges(items: list[str]) -> dict:
    """``--range NAME=LOW,HIGH`` arguments as {name: (low, high)}, one error line for a bad one."""
    out = {}
    for item in items:
        name, _, bounds = item.partition("=")
        try:
            low, high = (float(v) for v in bounds.split(","))
        except ValueError:
            raise InputError(f"--range {item}: expected NAME=LOW,HIGH with two numbers") from None
        out[name.strip()] = (low, high)
    return out


def report_interrupted(status: dict, out: Path) -> int:
    """Exit status 1 with one line when some cells have no result (they were interrupted)."""
    lost = [c for c, s in status.items() if s == "interrupted"]
    if lost:
        print(f"cryobench: error: {len(lost)} of {len(status)} cells were interrupted and have no "
              f"result in {out / 'cells'} (the reason is printed above); run the same command "
              "again to compute them", file=sys.stderr)
        return 1
    return 0


def oracle_option(parser) -> None:
    """``--oracle``: exact (the default) or importance[:NAME=VALUE,…] (docs/model.md)."""
    parser.add_argument("--oracle", help="the oracle the optimizer sees: exact (default) or "
                        "importance[:ess_scale=10,uniform=0.05,temperature=1,exact_above=0.25,"
                        "anneal=2] (importance sampling over poses, annealed over each image's "
                        "first A visits, anneal=0 off; part of the run's identity and label)")
