"""Landlock (Linux ≥ 5.13): an unprivileged process takes away its own access to files.

:func:`restrict` makes the calling process (and everything it starts later) unable to read the
``hidden`` folders, to write or create any file but ``/dev/null``, to open TCP connections (ABI ≥
4), to signal processes outside its sandbox or to connect to their abstract UNIX sockets (ABI ≥
6). Landlock also forbids a sandboxed process to ptrace or read the memory of an unsandboxed one
(``/proc/PID/mem``, ``process_vm_readv``, ``/proc/PID/fd``). It is called by the optimizer's
process (:mod:`cryobench.harness.optimizer_process`) in a single thread, before any optimizer
code runs; a process cannot undo it.

Landlock grants access by file hierarchy and has no "deny" rule, so read access is granted to
every entry of every folder on the way from ``/`` down to a hidden folder except the branch that
leads to it (a symbolic link that leads into or above a hidden folder is left out too).

The system calls are made with :mod:`ctypes` (x86-64 and arm64 numbers; the kernel's
``include/uapi/linux/landlock.h`` for the structures).
"""
from __future__ import annotations

import ctypes
import os
import platform
from pathlib import Path

SYSCALLS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446), "arm64": (444, 445, 446)}

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
ALL_FS_V1 = (1 << 13) - 1          # execute … make_sym
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1
RULE_PATH_BENEATH = 1
CREATE_RULESET_VERSION = 1
PR_SET_NO_NEW_PRIVS = 38
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV


class LandlockUnavailable(OSError):
    """The kernel (or the machine's architecture) offers no Landlock here."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _numbers() -> tuple[int, int, int]:
    numbers = SYSCALLS.get(platform.machine())
    if numbers is None:
        raise LandlockUnavailable(f"no Landlock system call numbers for {platform.machine()}")
    return numbers


def abi_version() -> int:
    """The kernel's Landlock ABI version; :class:`LandlockUnavailable` if it has none."""
    create = _numbers()[0]
    version = _libc().syscall(create, None, ctypes.c_size_t(0), ctypes.c_uint32(CREATE_RULESET_VERSION))
    if version < 0:
        err = ctypes.get_errno()
        raise LandlockUnavailable(f"Landlock is not available: {os.strerror(err)}")
    return int(version)


def _contains(outer: Path, inner: Path) -> bool:
    return inner == outer or outer in inner.parents


def readable_roots(hidden: list[Path]) -> list[Path]:
    """The paths to grant read access to so that everything but ``hidden`` can be read: each
    entry of each folder from ``/`` to a hidden folder's parent, except the branches leading to
    hidden folders (and links into or above them)."""
    hidden = [Path(os.path.realpath(h)) for h in hidden]
    roots: list[Path] = []

    def walk(folder: Path) -> None:
        try:
            entries = sorted(os.listdir(folder))
        except OSError:
            return
        for name in entries:
            entry = folder / name
            real = Path(os.path.realpath(entry))
            if any(_contains(h, real) for h in hidden):             # a hidden folder or in one
                continue
            if any(_contains(real, h) for h in hidden):             # on the way to one
                if not entry.is_symlink() and real == entry:
                    walk(entry)
                continue
            roots.append(entry)

    walk(Path("/"))
    return roots


def restrict(hidden: list[Path], writable: tuple[str, ...] = ("/dev/null",)) -> str:
    """Sandbox this process: read everything except ``hidden``, write only in ``writable``
    (files, or folders: anything in them), no TCP,
    no signals or abstract sockets outside the sandbox. Returns a description ("landlock ABI
    7"); raises :class:`LandlockUnavailable` when the kernel has no Landlock."""
    abi = abi_version()
    create, add_rule, restrict_self = _numbers()
    libc = _libc()
    fs = ALL_FS_V1 | (REFER if abi >= 2 else 0) | (TRUNCATE if abi >= 3 else 0) | (
        IOCTL_DEV if abi >= 5 else 0)
    attr = _RulesetAttr(fs, NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
                        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = libc.syscall(create, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise LandlockUnavailable(f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
    try:
        read = READ_FILE | READ_DIR | EXECUTE
        rules = [(p, read) for p in readable_roots(hidden)] + [(Path(w), fs) for w in writable]
        for path, access in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue                                        # vanished or unreachable
            try:
                if not os.path.isdir(path):
                    access &= FILE_RIGHTS
                rule = _PathBeneath(access & fs, fd)
                if libc.syscall(add_rule, ruleset, RULE_PATH_BENEATH, ctypes.byref(rule),
                                ctypes.c_uint32(0)) < 0:
                    raise LandlockUnavailable(f"landlock_add_rule {path}: "
                                              f"{os.strerror(ctypes.get_errno())}")
            finally:
                os.close(fd)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise LandlockUnavailable(f"prctl(NO_NEW_PRIVS): {os.strerror(ctypes.get_errno())}")
        if libc.syscall(restrict_self, ruleset, ctypes.c_uint32(0)) < 0:
            raise LandlockUnavailable(f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)
    return f"landlock ABI {abi}"
