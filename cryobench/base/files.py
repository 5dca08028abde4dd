"""Writing files so that a reader never sees half of one: atomic replacement, canonical JSON."""
from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np

from cryobench.errors import InputError


#: what a temporary written beside ``<name>`` is called: ``.<name>.cryobench.tmp-<pid>-<host>-…``
MARK = ".cryobench.tmp-"


def temporary_prefix(path) -> str:
    """The name a temporary for ``path`` starts with: the target, cryobench's mark, this process's
    pid and host (so a later process can tell a killed writer's leftover from a live one's)."""
    return f".{Path(path).name}{MARK}{os.getpid()}-{socket.gethostname()}-"


def writer_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (another user's live process counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_if_dead(tmp: Path, tail: str) -> bool:
    """Delete the temporary ``tmp``, whose name ends ``<pid>-<host>-…`` (``tail``), if its writer
    ran on this host and no longer runs; whether it was deleted. Another host's or a live
    writer's is left alone."""
    pid, _, rest = tail.partition("-")
    if not pid.isdigit() or not rest.startswith(f"{socket.gethostname()}-") or writer_alive(int(pid)):
        return False
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)
    return True


def remove_dead_temporaries_of(path) -> list[Path]:
    """Delete the temporaries cryobench's writers of ``path`` left when they were killed
    (``.<name>.cryobench.tmp-<pid>-<host>-…`` beside it, whose writer on this host no longer runs);
    nothing else is touched: not another file's, not another host's, not a live writer's."""
    path = Path(path)
    prefix = f".{path.name}{MARK}"
    return [path.parent / name for name in glob.glob(glob.escape(prefix) + "*", root_dir=path.parent)
            if remove_if_dead(path.parent / name, name[len(prefix):])]


def atomic_write(path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename; a
    path that exists and is not a regular file (a folder, a device) is refused, never replaced.
    A symbolic link is followed (its target is written, the link stays); a write that fails
    (a full disk) removes its temporary and leaves ``path`` as it was; a temporary of ``path``
    left by a killed writer is removed first (:func:`remove_dead_temporaries_of`)."""
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    if path.exists() and not path.is_file():
        raise InputError(f"{path}: not a regular file; cryobench writes files only over files")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries_of(path)
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), dir=path.parent)
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
