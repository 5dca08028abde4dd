"""Keeping the dataset cache honest: files checked against their manifest, killed writers cleaned.

A simulated dataset's folder holds ``manifest.json``, the SHA-256 of every file; the task's content
hash covers that manifest, so a cell computed from a folder whose files differ from it would carry
the clean data's id. :func:`manifest_problem` therefore checks the files whenever a task loads.

Hashing a paper-scale stack (3.3 GB) costs seconds, so the full SHA-256 of a file is computed once
per version of the file: ``verified.json`` remembers, for each file whose digest matched, its size,
inode, mtime and ctime. A later check whose ``stat`` shows the same values trusts the file; any
write, truncation, replacement or ``touch`` changes the ctime (which no user can set back), so the
file is hashed again. A file is remembered only if its ctime is older than that of a probe file
written into the folder just before hashing (so by the file system's own clock): a write in the
same clock tick as the hash need not change the times (git's "racily clean" entries).

Folders and files being written carry their writer's host and pid
(``.<name>.tmp-<pid>-<host>-…``); :func:`remove_dead_temporaries` deletes those whose writer on
this host no longer runs (a killed simulation), and leaves the others alone.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

from cryobench.base.files import remove_if_dead

MANIFEST = "manifest.json"
STAMPS = "verified.json"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(folder: Path, names) -> dict | None:
    """The manifest {file: SHA-256} of ``folder`` if it is readable and lists ``names``; else None."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(manifest, dict) and all(
        isinstance(manifest.get(n), str) and len(manifest[n]) == 64 for n in names)
    return manifest if ok else None


def _key(st: os.stat_result, digest: str) -> list:
    return [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, digest]


def _read_stamps(folder: Path) -> dict:
    try:
        stamps = json.loads((folder / STAMPS).read_text())
        return stamps if isinstance(stamps, dict) else {}
    except (OSError, ValueError):
        return {}


def _stamp_tmp(folder: Path) -> Path:
    return folder / f".{STAMPS}.tmp-{os.getpid()}-{socket.gethostname()}"


def fs_now(folder: Path) -> int | None:
    """The file system's current time at ``folder`` (the ctime of a probe written there), in ns;
    None if the folder is not writable (then nothing is remembered as verified)."""
    probe = _stamp_tmp(Path(folder))
    try:
        probe.write_text("")
        return probe.stat().st_ctime_ns
    except OSError:
        return None


def _write_stamps(folder: Path, stamps: dict) -> None:
    """Write ``verified.json`` atomically; a read-only cache just stays unstamped."""
    tmp = _stamp_tmp(folder)
    try:
        tmp.write_text(json.dumps(stamps, indent=1, sort_keys=True))
        os.replace(tmp, folder / STAMPS)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def record_verified(folder: Path, digests: dict, since: int | None) -> None:
    """Remember the files of ``folder`` whose SHA-256 ``digests`` were computed after the file
    system time ``since`` (from :func:`fs_now`) and that last changed before it."""
    folder = Path(folder)
    if since is None:
        return
    stamps = _read_stamps(folder)
    for name, digest in digests.items():
        try:
            st = os.stat(folder / name)
        except OSError:
            continue
        if st.st_ctime_ns < since:
            stamps[name] = _key(st, digest)
        else:
            stamps.pop(name, None)
    _write_stamps(folder, stamps)


def manifest_problem(folder: Path, names) -> str | None:
    """None if every file ``names`` of ``folder`` matches its manifest; else what is wrong.

    Files already verified in their current version (see the module doc) are not hashed again.
    """
    folder = Path(folder)
    manifest = read_manifest(folder, names)
    if manifest is None:
        return f"{MANIFEST} is missing, unreadable or incomplete"
    stamps, fresh, since = _read_stamps(folder), {}, None
    for name in names:
        try:
            st = os.stat(folder / name)
        except FileNotFoundError:
            return f"{name} is missing"
        if stamps.get(name) == _key(st, manifest[name]):
            continue
        since = since or fs_now(folder)
        try:
            digest = file_sha256(folder / name)
        except OSError as exc:           # removed or unreadable while we looked
            return f"{name} cannot be read ({exc.strerror or exc})"
        if digest != manifest[name]:
            return (f"{name} ({st.st_size:,} bytes) has SHA-256 {digest[:12]}…, but {MANIFEST} "
                    f"says {manifest[name][:12]}…")
        fresh[name] = digest
    if fresh:
        record_verified(folder, fresh, since)
    return None


def _marker() -> str:
    return f"tmp-{os.getpid()}-{socket.gethostname()}-"


def temporary_dir(parent: Path, name: str) -> Path:
    """A new empty folder ``.<name>.tmp-<pid>-<host>-XXXX`` in ``parent`` for a writer, readable
    by every user (mkdtemp's 0700 would make a shared cache unreadable to the others)."""
    folder = Path(tempfile.mkdtemp(prefix=f".{name}.{_marker()}", dir=parent))
    os.chmod(folder, 0o755)
    return folder


def discard(folder: Path) -> None:
    """Remove a cache folder: first renamed as a temporary of this process, so a kill midway
    leaves something :func:`remove_dead_temporaries` cleans, never a half-deleted dataset."""
    folder = Path(folder)
    aside = folder.with_name(f".{folder.name}.{_marker()}discarded")
    try:
        os.rename(folder, aside)
    except FileNotFoundError:       # another process discarded it first
        return
    except OSError:                 # a stale ``aside`` of a reused pid, or not a folder
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(folder, aside)
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)


def remove_dead_temporaries(parent: Path) -> list[Path]:
    """Delete ``.*.tmp-<pid>-<host>-*`` entries of ``parent`` whose writer on this host no longer
    runs; returns what was removed. Other hosts' temporaries (a shared cache) are left alone."""
    return [tmp for tmp in Path(parent).glob(".*.tmp-*")
            if remove_if_dead(tmp, tmp.name.split(".tmp-", 1)[1])]
