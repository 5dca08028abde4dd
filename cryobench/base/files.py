"""Writing files so that a reader never sees half of one: atomic replacement, canonical JSON."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from cryobench.errors import InputError


def atomic_write(path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename; a
    path that exists and is not a regular file (a folder, a device) is refused, never replaced.
    A symbolic link is followed (its target is written, the link stays); a write that fails
    (a full disk) removes its temporary and leaves ``path`` as it was."""
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    if path.exists() and not path.is_file():
        raise InputError(f"{path}: not a regular file; cryobench writes files only over files")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)                # mkstemp's 0600 would hide results from others
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def locked(path):
    """Hold an exclusive lock for writing ``path`` (on its folder, so no lock file is left behind):
    two processes that read, change and write it one after the other, never interleaved."""
    folder = Path(path).parent
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)                    # closing releases the lock


def to_json(obj) -> str:
    """Canonical JSON (sorted keys, numpy scalars as numbers, NaN as null)."""
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)
    text = json.dumps(obj, indent=1, sort_keys=True, default=default, allow_nan=True)
    return text.replace("NaN", "null") + "\n"
