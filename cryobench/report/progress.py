"""Whether a results set is complete: the runs its grid file (``grid.toml`` beside ``cells/``)
names, against the runs that are there. A grid at paper scale takes several sessions; what is
committed between them is a set in progress, and its report and leaderboard section say so."""
from __future__ import annotations

import tomllib
from pathlib import Path

from cryobench.errors import InputError
from cryobench.harness.results import Results


def planned_runs(folder) -> int | None:
    """How many runs ``folder/grid.toml`` names (None without one): tasks × scales × seeds ×
    Σ over its optimizers of the product of their ``[params.NAME]`` axes' lengths, as
    ``cryobench grid`` expands it (scales default to ``["ci"]``, ``seeds = n`` means streams
    0…n−1; a value repeated in an axis counts twice)."""
    path = Path(folder) / "grid.toml"
    if not path.is_file():
        return None
    try:
        raw = tomllib.loads(path.read_text())
        seeds = raw.get("seeds", 1)
        per_task = 0
        for optimizer in raw["optimizers"]:
            combos = 1
            for v in raw.get("params", {}).get(optimizer, {}).values():
                combos *= len(v) if isinstance(v, list) else 1
            per_task += combos
        return (len(raw["tasks"]) * len(raw.get("scales", ["ci"]))
                * (seeds if isinstance(seeds, int) else len(seeds)) * per_task)
    except (tomllib.TOMLDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{path}: not a grid file cryobench can count the runs of "
                         f"({type(exc).__name__}: {exc}); `cryobench grid` says what is wrong") from None


def in_progress(results: Results, planned: int | None) -> bool:
    """Whether the set holds fewer runs than its grid file names (``planned``, None: unknown)."""
    return planned is not None and len(results.cells) < planned


def runs_summary(results: Results, planned: int | None = None) -> str:
    """The runs line of a results set: how many runs, by status, and where its grid file plans
    more (``planned``) than are there, that the set is still in progress."""
    c = results.cells
    counts = ", ".join(f"{n} {s}" for s, n in c["status"].value_counts().sort_index().items())
    if in_progress(results, planned):
        return (f"In progress: {len(c)} of the {planned} runs its grid file plans are here "
                f"({counts}); the rest are still to be computed.")
    return f"{len(c)} runs: {counts}."
