"""The committed leaderboard must be what `cryobench leaderboard` makes of the committed results."""
import shutil
from pathlib import Path

from cryobench.report.figures import result_sets, write_leaderboard

RESULTS = Path(__file__).resolve().parent.parent / "results"


def test_committed_leaderboard_is_regenerated_from_committed_results(tmp_path):
    sets = result_sets(RESULTS)
    assert "paper-small" in sets, "the small-scale comparison's results are not committed"
    copy = tmp_path / "results"
    for name in sets:
        shutil.copytree(RESULTS / name, copy / name, ignore=shutil.ignore_patterns("*.mrc"))
    written = write_leaderboard(copy)                                       # as the CLI does
    stale = [p.relative_to(copy) for p in written
             if not (RESULTS / p.relative_to(copy)).is_file()
             or (RESULTS / p.relative_to(copy)).read_bytes() != p.read_bytes()]
    extra = sorted({p.relative_to(RESULTS) for p in (RESULTS / "figures").glob("*")}
                   - {p.relative_to(copy) for p in written})
    assert not stale and not extra, (f"results/LEADERBOARD.md is stale ({stale or extra}): run "
                                     "`cryobench leaderboard` and commit what it writes")
