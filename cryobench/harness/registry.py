"""Finding optimizers: the repository's ``optimizers/`` folder, installed packages (entry-point
group ``cryobench.optimizers``), and ``module:attr`` or ``path/file.py:attr`` references.

A file of ``optimizers/`` that cannot be imported (a syntax error, a missing import, an exception
at import) breaks only itself: :func:`scan` lists it with its one-line error, the other
optimizers still resolve, and resolving it (by its file's name) reports that error. Two sources
registering one name (two files, or an entry point and a file) are an :class:`InputError` naming
both, never a silent replacement.

The folder and the entry points are scanned once per process: a scan is reused while the
folder's files (names, sizes, modification times) and the installed entry points are unchanged.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import traceback
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path

from cryobench import external
from cryobench.base.paths import OPTIMIZERS_DIR
from cryobench.errors import InputError
from cryobench.optim import Method

ENTRY_POINT_GROUP = "cryobench.optimizers"


def import_error(path: Path, exc: BaseException) -> str:
    """One line for an exception raised while importing ``path``: ``file:line: Type: message``
    (the line of the file where it happened, or of the syntax error)."""
    path = Path(path)
    if isinstance(exc, SyntaxError) and exc.filename and Path(exc.filename).name == path.name:
        return f"{path}:{exc.lineno}: {type(exc).__name__}: {exc.msg}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if Path(f.filename).resolve() == path.resolve()]
    where = f"{path}:{frames[-1].lineno}" if frames else str(path)
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"{where}: {type(exc).__name__}{': ' + message if message else ''}"


def _load_file(path: Path):
    """Import a Python file as a fresh module; any failure is one InputError line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: optimizer file not found")
    spec = importlib.util.spec_from_file_location(f"cryobench_optimizers.{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:   # the user's code: any failure, SyntaxError too
        raise InputError(import_error(path, exc)) from None
    return module


def _methods_in(module) -> list[Method]:
    unique = {id(v): v for v in vars(module).values() if isinstance(v, Method)}
    return list(unique.values())


def _origin(m: Method) -> tuple:
    """Where a method's factory is defined: equal origins are the same optimizer."""
    try:
        source = str(Path(inspect.getsourcefile(m.factory)).resolve())
    except (TypeError, OSError):
        source = getattr(m.factory, "__module__", "?")
    return source, getattr(m.factory, "__qualname__", repr(m.factory))


@dataclass
class Registry:
    """The optimizers found (name → method, name → source) and the sources that failed."""

    methods: dict[str, Method] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)      # source → one-line error
    broken_names: dict[str, str] = field(default_factory=dict)  # likely name → broken source

    def add(self, m: Method, source: str) -> None:
        """Register ``m`` from ``source``; a name taken by another optimizer is an InputError."""
        other = self.methods.get(m.name)
        if other is not None and _origin(other) != _origin(m):
            raise InputError(f"optimizer name {m.name!r} is registered twice: by "
                             f"{self.sources[m.name]} and by {source}; rename one")
        self.methods.setdefault(m.name, m)
        self.sources.setdefault(m.name, source)


def scan(optimizers_dir: Path | None = None) -> Registry:
    """Every optimizer in ``optimizers/*.py`` (default :data:`OPTIMIZERS_DIR`) and in installed
    entry points, and the sources that failed to import; scanned once while neither changes."""
    folder = Path(optimizers_dir or OPTIMIZERS_DIR).resolve()
    files = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                  for p in sorted(folder.glob("*.py")) if not p.name.startswith("_"))
    points = tuple(entry_points(group=ENTRY_POINT_GROUP))
    return _scan(folder, files, points)


@lru_cache(maxsize=8)
def _scan(folder: Path, files: tuple, points: tuple) -> Registry:
    """The registry of ``folder``'s ``files`` (name, size, mtime) and the entry ``points``."""
    reg = Registry()
    for name, _, _ in files:
        path = folder / name
        try:
            module = _load_file(path)
        except InputError as exc:
            reg.broken[str(path)] = str(exc)
            for alias in {path.stem, path.stem.replace("_", "-")}:
                reg.broken_names[alias] = str(path)
            continue
        for m in _methods_in(module):
            reg.add(m, str(path))
    for ep in points:
        source = (f"entry point {getattr(ep, 'name', '?')} = {getattr(ep, 'value', '?')} "
                  f"(group {ENTRY_POINT_GROUP})")
        try:
            obj = ep.load()
        except (Exception, SystemExit) as exc:    # an installed package's import failed
            reg.broken[source] = f"{source}: {type(exc).__name__}: {exc}"
            reg.broken_names[str(getattr(ep, "name", ""))] = source
            continue
        for m in ([obj] if isinstance(obj, Method) else _methods_in(obj)):
            reg.add(m, source)
    return reg


def discover(optimizers_dir: Path | None = None) -> dict[str, Method]:
    """Every optimizer that imports, by name (files that fail are left out: see :func:`scan`)."""
    return scan(optimizers_dir).methods


def resolve(reference: str, optimizers_dir: Path | None = None) -> Method:
    """An optimizer by registered name, ``module:attr`` or ``path/file.py:attr``, or another
    library's: ``torch:…``, ``optax:…`` (:mod:`cryobench.external`)."""
    if external.handles(reference):
        return external.resolve(reference)
    if ":" in reference:
        where, attr = reference.rsplit(":", 1)
        if where.endswith(".py"):
            module = _load_file(Path(where))
        else:
            try:
                module = importlib.import_module(where)
            except (Exception, SystemExit) as exc:
                raise InputError(f"cannot import optimizer {reference!r}: "
                                 f"{type(exc).__name__}: {exc}") from None
        obj = getattr(module, attr, None)
        if not isinstance(obj, Method):
            raise InputError(f"{reference!r} is not an optimizer declared with "
                             f"@cryobench.optim.method")
        return obj
    reg = scan(optimizers_dir)
    if reference in reg.methods:
        return reg.methods[reference]
    if reference in reg.broken_names:
        error = reg.broken[reg.broken_names[reference]]
        raise InputError(f"optimizer {reference!r} cannot be loaded: {error}")
    broken = f"; broken: {', '.join(Path(s).name for s in reg.broken)}" if reg.broken else ""
    raise InputError(f"unknown optimizer {reference!r}; known: "
                     f"{', '.join(sorted(reg.methods))}{broken}")
