"""Where the shipped files are: the repository's folders in a checkout, the package's copy when
installed from a wheel.

A checkout (an editable install, or ``python -m`` from the repository) keeps ``tasks/``,
``optimizers/`` and ``results/tuned.json`` at the top of the repository, where users look for
them. ``python -m build`` copies the same files into ``cryobench/_shipped/`` inside the wheel
(``setup.py``), read-only: an installed cryobench reads its tasks, optimizers and tuned values
from there, and writes what it makes (tuning runs, tuned values, results) where the user says,
by default under the current directory.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
_SHIPPED = PACKAGE_DIR / "_shipped"          # only in a built wheel (setup.py), never in the tree

#: The repository holding this package, or None when cryobench is installed from a wheel.
REPO_DIR: Path | None = None if _SHIPPED.is_dir() else PACKAGE_DIR.parent
#: The folder holding ``tasks/``, ``optimizers/`` and ``results/tuned.json``.
SHIPPED_DIR = REPO_DIR if REPO_DIR is not None else _SHIPPED
TASKS_DIR = SHIPPED_DIR / "tasks"
OPTIMIZERS_DIR = SHIPPED_DIR / "optimizers"
#: The tuned values of the shipped tasks (read-only in an installed wheel).
TUNED_FILE = SHIPPED_DIR / "results" / "tuned.json"
#: Where results are read and written by default: the repository's ``results/`` in a checkout,
#: ``./results`` (relative to the current directory) when installed.
RESULTS_DIR = REPO_DIR / "results" if REPO_DIR is not None else Path("results")


def installed() -> bool:
    """True when cryobench runs from an installed wheel rather than a repository checkout."""
    return REPO_DIR is None
