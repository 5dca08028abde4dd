"""``cryobench report``: figures, tables and profiles of one or more results folders."""
from __future__ import annotations

from pathlib import Path

from cryobench.harness.results import load_results
from cryobench.report.figures import write_report
from cryobench.report.progress import planned_runs

HELP = "figures 3 and 4, the 5K/50K/Final table, FSC, profiles"
TASK = False


def add_arguments(parser) -> None:
    parser.add_argument("results", nargs="+", help="results folders (holding cells/)")
    parser.add_argument("--out", help="output folder (default: RESULTS/report)")


def main(args) -> None:
    out = Path(args.out) if args.out else Path(args.results[0]) / "report"
    planned = planned_runs(args.results[0]) if len(args.results) == 1 else None
    paths = write_report(load_results(*args.results), out, planned=planned)
    print(f"wrote {len(paths)} files into {out} (start with {out / 'report.md'})")
