"""Finding optimizers: the repository's ``optimizers/`` folder, installed packages (entry-point
group ``cryobench.optimizers``), and ``module:attr`` or ``path/file.py:attr`` references.

A file of ``optimizers/`` that cannot be imported (a syntax error, a missing import, an exception
at import) breaks only itself: :func:`scan` lists it with its one-line error, the other
optimizers still resolve, and resolving it (by its file's name) reports that error. Two sources
registering one name (two files, or an entry point and a file) are an :class:`InputError` naming
both, never a silent replacement.

No optimizer's code runs in this process, not even its import: each source is imported in a
sandboxed process (:func:`cryobench.harness.isolation.declarations`: the dataset caches hidden,
nothing writable), which answers with its methods' declarations
(:class:`~cryobench.harness.declared.Declared`: name, hyper-parameters, docstring, the file
fingerprinted, a reference from which an optimizer's process imports it again).

The folder and the entry points are scanned once per process: a scan is reused while the
folder's files (names, sizes, modification times) and the installed entry points are unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path

from cryobench import external
from cryobench.base.paths import OPTIMIZERS_DIR
from cryobench.data.datasets import default_data_dir, home_data_dir
from cryobench.errors import InputError
from cryobench.harness.declared import Declared, import_error
from cryobench.harness.isolation import declarations

ENTRY_POINT_GROUP = "cryobench.optimizers"

__all__ = ["Declared", "Registry", "discover", "import_error", "resolve", "scan"]


def hidden(data_dir=None) -> tuple:
    """The folders an optimizer's import must not read, as for its runs: the dataset caches
    (``$CRYOBENCH_DATA`` and the one in the home folder) and ``data_dir`` (one given with
    ``--data-dir``), if any."""
    named = () if data_dir is None else (str(data_dir),)
    return (str(default_data_dir()), str(home_data_dir()), *named)


def declared(sources: list, unreadable: tuple) -> list:
    """For each source (:mod:`cryobench.harness.declared`'s reference), its declarations
    (imported in a sandboxed process, :func:`cryobench.harness.isolation.declarations`, which
    cannot read the folders ``unreadable``: :func:`hidden`) or the one-line error of its import."""
    out = []
    for source, answer in zip(sources, declarations(sources, list(unreadable))):
        where = source.get("given") or source["where"]
        try:
            if "error" in answer:
                out.append(InputError(str(answer["error"])))
            else:
                out.append([Declared.from_json(d) for d in answer["declared"]])
        except (KeyError, TypeError, ValueError, AttributeError):
            out.append(InputError(f"{where}: its process answered a malformed declaration"))
    return out


def _one(source: dict, data_dir=None) -> Declared:
    """The one method ``source`` names (it has ``attr``, or is external), or its InputError."""
    answer = declared([source], hidden(data_dir))[0]
    if isinstance(answer, InputError):
        raise answer
    if len(answer) != 1:
        raise InputError(f"{source.get('given') or source['where']}: its process answered "
                         f"{len(answer)} declarations for one optimizer")
    return answer[0]


@dataclass
class Registry:
    """The optimizers found (name → method, name → source) and the sources that failed."""

    methods: dict[str, Declared] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)      # source → one-line error
    broken_names: dict[str, str] = field(default_factory=dict)  # likely name → broken source

    def add(self, m: Declared, source: str) -> None:
        """Register ``m`` from ``source``; a name taken by another optimizer (another factory:
        another file or qualified name) is an InputError."""
        other = self.methods.get(m.name)
        if other is not None and other.origin != m.origin:
            raise InputError(f"optimizer name {m.name!r} is registered twice: by "
                             f"{self.sources[m.name]} and by {source}; rename one")
        self.methods.setdefault(m.name, m)
        self.sources.setdefault(m.name, source)


def scan(optimizers_dir: Path | None = None, data_dir=None) -> Registry:
    """Every optimizer in ``optimizers/*.py`` (default :data:`OPTIMIZERS_DIR`) and in installed
    entry points, and the sources that failed to import; scanned once while neither changes.
    ``data_dir``: a dataset folder the imports must not read either (:func:`hidden`)."""
    folder = Path(optimizers_dir or OPTIMIZERS_DIR).resolve()
    files = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                  for p in sorted(folder.glob("*.py")) if not p.name.startswith("_"))
    points = tuple(entry_points(group=ENTRY_POINT_GROUP))
    return _scan(folder, files, points, hidden(data_dir))


@lru_cache(maxsize=8)
def _scan(folder: Path, files: tuple, points: tuple, unreadable: tuple) -> Registry:
    """The registry of ``folder``'s ``files`` (name, size, mtime) and the entry ``points``, each
    source declared in a sandboxed process of its own (never imported here)."""
    reg = Registry()
    paths = [folder / name for name, _, _ in files]
    names = [(str(getattr(ep, "name", "")), str(getattr(ep, "value", "")),
              str(getattr(ep, "group", ENTRY_POINT_GROUP))) for ep in points]
    sources = ([{"kind": "file", "where": str(p), "attr": None} for p in paths]
               + [{"kind": "entry", "where": list(n), "attr": None,
                   "given": f"entry point {n[0]} = {n[1]} (group {ENTRY_POINT_GROUP})"}
                  for n in names])
    for source, answer in zip(sources, declared(sources, unreadable)):
        where = source.get("given") or source["where"]
        if isinstance(answer, InputError):
            reg.broken[where] = str(answer)
            if source["kind"] == "file":
                stem = Path(where).stem
                for alias in {stem, stem.replace("_", "-")}:
                    reg.broken_names[alias] = where
            else:
                reg.broken_names[source["where"][0]] = where
            continue
        for m in answer:
            reg.add(m, where)
    return reg


def discover(optimizers_dir: Path | None = None, data_dir=None) -> dict[str, Declared]:
    """Every optimizer that imports, by name (files that fail are left out: see :func:`scan`)."""
    return scan(optimizers_dir, data_dir).methods


def resolve(reference: str, optimizers_dir: Path | None = None, data_dir=None) -> Declared:
    """An optimizer by registered name, ``module:attr`` or ``path/file.py:attr``, or another
    library's: ``torch:…``, ``optax:…`` (:mod:`cryobench.external`); its declaration, read in a
    sandboxed process (:mod:`cryobench.harness.declared`) that cannot read the dataset caches
    nor ``data_dir`` (:func:`hidden`)."""
    if external.handles(reference):
        return _one({"kind": "external", "where": reference, "attr": None}, data_dir)
    if ":" in reference:
        where, attr = reference.rsplit(":", 1)
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise InputError(f"{path}: optimizer file not found")
            return _one({"kind": "file", "where": str(path.absolute()), "attr": attr,
                         "given": reference, "shown": where}, data_dir)
        return _one({"kind": "module", "where": where, "attr": attr, "given": reference},
                    data_dir)
    reg = scan(optimizers_dir, data_dir)
    if reference in reg.methods:
        return reg.methods[reference]
    if reference in reg.broken_names:
        error = reg.broken[reg.broken_names[reference]]
        raise InputError(f"optimizer {reference!r} cannot be loaded: {error}")
    broken = f"; broken: {', '.join(Path(s).name for s in reg.broken)}" if reg.broken else ""
    raise InputError(f"unknown optimizer {reference!r}; known: "
                     f"{', '.join(sorted(reg.methods))}{broken}")
