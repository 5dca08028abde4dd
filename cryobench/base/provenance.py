"""Where the running code comes from: the git commit of the repository holding cryobench."""
from __future__ import annotations

import subprocess

from cryobench.base.paths import REPO_DIR


def git_commit() -> tuple[str | None, bool]:
    """(commit of the repository holding cryobench, whether its tree has changes) or (None, …)."""
    if REPO_DIR is None:                # installed from a wheel: no repository
        return None, False

    def git(*args) -> str:
        return subprocess.run(["git", "-C", str(REPO_DIR), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    try:
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None, False
