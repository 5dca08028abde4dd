"""``cryobench leaderboard``: the leaderboard (markdown, HTML page, figures) from committed results."""
from __future__ import annotations

from pathlib import Path

from cryobench.base.paths import RESULTS_DIR
from cryobench.report.figures import write_leaderboard

HELP = "regenerate results/LEADERBOARD.md and .html from committed results"
TASK = False


def add_arguments(parser) -> None:
    parser.add_argument("--results", default=str(RESULTS_DIR),
                        help="the results folder (default: the repository's results/)")


def main(args) -> None:
    paths = write_leaderboard(Path(args.results))
    print(f"wrote {len(paths)} files; see {Path(args.results) / 'LEADERBOARD.md'} and .html")
