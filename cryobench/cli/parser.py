"""The ``cryobench`` command line: one subcommand per module of :mod:`cryobench.cli.commands`.
``cryobench COMMAND --help`` says the rest."""
from __future__ import annotations

import argparse

from cryobench.cli.commands import (bench, gate, grid, info, is_check, leaderboard, report, run,
                                    simulate, speed_gate, tune, verify)
from cryobench.cli.commands import list as list_
from cryobench.cli.common import add_task

COMMANDS = {"list": list_, "info": info, "simulate": simulate, "run": run, "grid": grid,
            "tune": tune, "report": report, "leaderboard": leaderboard, "verify": verify,
            "bench": bench, "gate": gate, "speed-gate": speed_gate, "is-check": is_check}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(prog="cryobench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        if module.TASK:
            add_task(p)
        module.add_arguments(p)
        p.add_argument("--data-dir", help="dataset cache (default $CRYOBENCH_DATA or "
                                          "~/.cache/cryobench)")
        p.set_defaults(func=module.main)
    return parser
