"""A method's declaration: what the harness needs of an optimizer without running its code.

An optimizer's module is third-party code. The harness never imports it: the registry
(:mod:`cryobench.harness.registry`) asks a sandboxed process (the optimizers' zygote,
:mod:`cryobench.harness.optimizer_process`, with the data folders hidden and nothing writable)
to import the source and answer with its methods' declarations as JSON (:func:`declare`). A
:class:`Declared` holds the name, the hyper-parameter declarations, the docstring, the file that
defines the factory (hashed by :func:`~cryobench.harness.fingerprint.optimizer_fingerprint`),
another library's ``identity`` (:mod:`cryobench.external`) and a *reference* from which an
optimizer's process imports the method again, after sandboxing itself (:func:`load_reference`):

* ``{"kind": "file", "where": "/abs/path.py", "attr": "sgd"}`` — a file (``optimizers/`` or
  ``path/file.py:attr``);
* ``{"kind": "module", "where": "package.module", "attr": "sgd"}`` — ``module:attr``;
* ``{"kind": "entry", "where": [name, value, group], "attr": None or a name}`` — an entry point
  (``attr`` names a method of the module an entry point loads);
* ``{"kind": "external", "where": "torch:torch.optim.AdamW", "attr": None}``.

:meth:`Declared.load` (and :meth:`Declared.configure`) import the method in the calling process:
for tests, benchmarks and notebooks; the harness never calls them.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import traceback
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint
from pathlib import Path

from cryobench import external
from cryobench.errors import InputError
from cryobench.external.common import Flag, StepSize, Unranged
from cryobench.optim import Hyper, Method

#: the hyper-parameter classes a declaration may name (any other is declared as a plain Hyper;
#: the optimizer's process checks values with the method's own class again)
HYPER_CLASSES = {f"{c.__module__}.{c.__qualname__}": c for c in (Hyper, StepSize, Unranged, Flag)}
_LOADED: dict = {}                     # reference (as JSON) → method, for Declared.load


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


def load_file(path: Path, shown: str | None = None, text: bytes | None = None):
    """Import a Python file as a fresh module (from ``text``, its content read earlier, where
    given); any failure is one InputError line (naming the file as ``shown``, as the user typed
    it, where given)."""
    path = Path(path)
    if text is None and not path.is_file():
        raise InputError(f"{path}: optimizer file not found")
    spec = importlib.util.spec_from_file_location(f"cryobench_optimizers.{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        if text is None:
            spec.loader.exec_module(module)
        else:
            exec(compile(text, str(path), "exec"), vars(module))    # noqa: S102 — sandboxed
    except (Exception, SystemExit) as exc:   # the user's code: any failure, SyntaxError too
        line = import_error(path, exc)
        if shown and line.startswith(str(path)):
            line = shown + line[len(str(path)):]
        raise InputError(line) from None
    return module


def _target(ref: dict, given: str, text: bytes | None = None):
    """The object a reference's ``kind`` and ``where`` name (a module, or an entry point's
    object, or an external method), imported in this process (a file from ``text``, its
    content, where given)."""
    kind, where = ref["kind"], ref["where"]
    if kind == "file":
        return load_file(Path(where), ref.get("shown"), text)
    if kind == "external":
        return external.resolve(where)
    try:
        if kind == "module":
            return importlib.import_module(where)
        return EntryPoint(*where).load()
    except (Exception, SystemExit) as exc:           # the optimizer's import failed
        if kind == "module":
            raise InputError(f"cannot import optimizer {given!r}: {type(exc).__name__}: "
                             f"{exc}") from None
        raise InputError(f"{given}: {type(exc).__name__}: {exc}") from None


def methods_in(obj) -> list[tuple[str, Method]]:
    """(attribute, method) of each distinct method among a module's globals."""
    unique = {}
    for attr, value in vars(obj).items():
        if isinstance(value, Method) and id(value) not in unique:
            unique[id(value)] = (attr, value)
    return list(unique.values())


def load_reference(ref: dict, given: str | None = None, text: bytes | None = None) -> Method:
    """The method ``ref`` names, imported in this process (module doc); one InputError line
    when it cannot be had. ``given``: the reference as the user typed it, for messages;
    ``text``: a file's content, read before a private ``/tmp`` hid it."""
    given = given or describe(ref)
    obj = _target(ref, given, text)
    if ref.get("attr"):
        obj = getattr(obj, ref["attr"], None)
    if not isinstance(obj, Method):
        raise InputError(f"{given!r} is not an optimizer declared with @cryobench.optim.method")
    return obj


def describe(ref: dict) -> str:
    """A reference as the user would type it."""
    where = ref["where"]
    if ref["kind"] == "entry":
        return f"entry point {where[0]} = {where[1]} (group {where[2]})"
    return f"{where}:{ref['attr']}" if ref.get("attr") else str(where)


def _hyper(h: Hyper) -> dict:
    kind = f"{type(h).__module__}.{type(h).__qualname__}"
    return {"class": kind if kind in HYPER_CLASSES else "cryobench.optim.Hyper",
            "default": h.default, "low": h.low, "high": h.high, "log": bool(h.log),
            "integer": bool(h.integer)}


def declaration(m: Method, ref: dict) -> dict:
    """What the harness needs of ``m`` (module doc), as JSON-able data."""
    try:
        source = str(Path(inspect.getsourcefile(m.factory)))
    except (TypeError, OSError):
        source = None
    identity = getattr(m, "identity", None)
    return {"name": str(m.name), "hypers": {str(k): _hyper(h) for k, h in m.hypers.items()},
            "doc": str(m.doc or ""), "source": source,
            "module": str(getattr(m.factory, "__module__", "?")),
            "qualname": str(getattr(m.factory, "__qualname__", repr(m.factory))),
            "identity": None if identity is None else str(identity), "reference": ref}


def declare(source: dict) -> dict:
    """In the sandboxed process: import ``source`` (a reference; ``attr`` None: every method of
    the module) and answer ``{"declared": [declaration, …]}`` or ``{"error": "one line"}``."""
    try:
        if source.get("attr") or source["kind"] == "external":
            methods = [(source.get("attr"), load_reference(source, source.get("given")))]
        else:
            obj = _target(source, source.get("given") or describe(source))
            methods = ([(None, obj)] if isinstance(obj, Method) else methods_in(obj))
        return {"declared": [declaration(m, {**source, "attr": attr, "given": None})
                             for attr, m in methods]}
    except InputError as exc:
        return {"error": str(exc)}
    except (Exception, SystemExit) as exc:              # an adapter's or the method's own failure
        return {"error": f"{source.get('given') or describe(source)}: {type(exc).__name__}: {exc}"}


@dataclass(frozen=True)
class Declared:
    """An optimizer as the harness knows it: its declaration, never its code (module doc). It
    answers what a :class:`~cryobench.optim.Method` answers about hyper-parameters
    (``defaults``, ``values``)."""

    name: str
    hypers: dict
    doc: str = field(default="", compare=False)
    source: str | None = None           # the file defining the factory (fingerprinted)
    origin: tuple = ()                  # (source or module, qualified name): the same optimizer
    reference: dict = field(default_factory=dict, compare=False)
    identity: str | None = None         # another library's method: what it is

    defaults = Method.defaults
    values = Method.values

    @staticmethod
    def from_json(d: dict) -> "Declared":
        """A declaration as :func:`declaration` gives it (checked: it comes from a process
        that ran the optimizer's import; anything else is a ValueError)."""
        numbers = all(isinstance(h[k], (int, float)) and not isinstance(h[k], bool)
                      for h in d["hypers"].values() for k in ("default", "low", "high"))
        texts = [d["name"], d["doc"], d["qualname"], d["module"]]
        if not (numbers and all(isinstance(t, str) for t in texts) and d["name"]
                and isinstance(d["reference"], dict)
                and all(isinstance(v, (str, type(None))) for v in (d["source"], d["identity"]))):
            raise ValueError("not a declaration")
        hypers = {k: HYPER_CLASSES.get(h["class"], Hyper)(h["default"], h["low"], h["high"],
                                                          log=h["log"], integer=h["integer"])
                  for k, h in d["hypers"].items()}
        origin = (str(Path(d["source"]).resolve()) if d["source"] else d["module"], d["qualname"])
        ref = {k: v for k, v in d["reference"].items() if k not in ("given", "shown")}
        return Declared(d["name"], hypers, d["doc"], d["source"], origin, ref, d["identity"])

    def load(self) -> Method:
        """The method, imported in *this* process (tests, benchmarks, notebooks; the harness
        never calls it: an optimizer's process imports it from :attr:`reference`)."""
        key = json.dumps(self.reference, sort_keys=True)
        if key not in _LOADED:
            _LOADED[key] = load_reference(self.reference)
        return _LOADED[key]

    @property
    def factory(self):
        """The method's factory, imported in this process (:meth:`load`)."""
        return self.load().factory

    def configure(self, **overrides):
        """:meth:`Method.configure <cryobench.optim.Method.configure>` of the method imported in
        this process (:meth:`load`): for tests and notebooks, never the harness."""
        return self.load().configure(**overrides)

    __call__ = configure
