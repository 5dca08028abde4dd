"""What the torch and optax adapters share: loading a reference, hyper-parameters read from a
constructor's or factory's signature, and an external method's identity.

Hyper-parameters (:func:`hypers_from`), from the signature and the library's defaults:

* the step size (``lr`` in torch, ``learning_rate`` in optax): the library's default, or
  :data:`STEP_DEFAULT` where the library has none (optax), searched over :data:`STEP_RANGE`
  (log scale) by ``cryobench tune``; it must be positive;
* every other number: its default, with no search range — set it with ``--set``, search it
  with ``tune --params NAME --range NAME=LOW,HIGH`` (:class:`Unranged`); a whole-number default
  stays whole unless annotated ``float`` (torch's ``momentum: float = 0``); log-spaced when
  searched unless the default is 0 or in [0.5, 1) (momentum-like coefficients, β = 0.9);
* a tuple of numbers, as ``betas=(0.9, 0.999)``: one hyper-parameter per entry, ``betas_0``
  and ``betas_1``;
* a boolean: a switch, 0 or 1 (:class:`Flag`), e.g. ``--set amsgrad=1``;
* ``None``, strings, callables and dtypes: left at the library's default, not exposed (to fix
  one, e.g. ``line_search_fn="strong_wolfe"`` or ``momentum=0.9`` for ``optax.sgd``, declare the
  method in Python with :func:`~cryobench.external.torch_method` /
  :func:`~cryobench.external.optax_method` and pass it, as a value or as a :class:`Hyper`);
* an argument without a default other than the step size: refused unless given so in Python;
* ``batch_size``: added, the minibatch of every step, as for the native methods (default 100).
"""
from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.metadata
import inspect
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from cryobench.errors import InputError
from cryobench.optim import Hyper, Method

STEP_RANGE = (1e-6, 1e2)      # the step size's search range: native SGD tunes to ~1, Adam to ~1e-3
STEP_DEFAULT = 1e-3           # a step size where the library declares no default (optax)
BATCH = Hyper(100, 10, 1000, integer=True)
NAN = float("nan")


class StepSize(Hyper):
    """The step size: positive, searched over :data:`STEP_RANGE` on a log scale."""

    def check(self, name: str, value) -> float:
        number = super().check(name, value)
        if number <= 0:
            raise ValueError(f"hyper-parameter {name} must be positive, got {value!r}")
        return number


class Unranged(Hyper):
    """A number the library declares with a default but no range (``low`` = ``high`` = NaN): any
    finite value, not negative where the default is not; ``tune`` needs ``--range`` for it."""

    def check(self, name: str, value):
        try:
            missing = math.isnan(float(value))
        except (TypeError, ValueError):
            missing = False
        if missing:
            raise ValueError(f"hyper-parameter {name} has no declared search range: tune it with "
                             f"--range {name}=LOW,HIGH (and a value is a finite number, got nan)")
        number = super().check(name, value)
        if self.default >= 0 and number < 0:
            raise ValueError(f"hyper-parameter {name} must be ≥ 0, got {value!r}")
        return number


class Flag(Hyper):
    """A boolean argument as a switch: 0 or 1."""

    def check(self, name: str, value) -> int:
        number = super().check(name, value)
        if number not in (0, 1):
            raise ValueError(f"hyper-parameter {name} is a switch: 0 or 1, got {value!r}")
        return number


@dataclass(frozen=True)
class ExternalMethod(Method):
    """A method of another library: ``identity`` names the library and its version, the
    class's or factory's qualified name and its arguments, and the adapter's code; the cell
    fingerprint hashes it (:func:`cryobench.harness.fingerprint.optimizer_fingerprint`)."""

    identity: str = field(default="")


@dataclass(frozen=True)
class Layout:
    """How hyper-parameter values become the library's keyword arguments."""

    kinds: dict          # argument name → "number", "flag" or the length of a tuple
    fixed: dict          # arguments given in Python, passed as they are

    def arguments(self, values: dict) -> dict:
        """The keyword arguments for the library, from checked hyper-parameter values."""
        out = dict(self.fixed)
        for name, kind in self.kinds.items():
            if kind == "flag":
                out[name] = bool(values[name])
            elif kind == "number":
                out[name] = values[name]
            else:
                out[name] = tuple(values[f"{name}_{i}"] for i in range(kind))
        return out


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _unranged(default, annotation=inspect.Parameter.empty) -> Unranged:
    """Whole numbers stay whole unless annotated as floats (torch's ``momentum: float = 0``)."""
    integer = isinstance(default, int) and "float" not in str(annotation)
    log = not integer and default > 0 and not 0.5 <= default < 1
    return Unranged(default, NAN, NAN, log=log, integer=integer)


def hypers_from(parameters, step: str, fixed: dict, where: str) -> tuple[dict, Layout]:
    """Hyper-parameters and :class:`Layout` of a signature's ``parameters`` (module doc);
    ``step`` names the step size; ``fixed`` holds arguments given in Python (a :class:`Hyper`
    among them declares that argument's hyper-parameter)."""
    unknown = sorted(set(fixed) - {p.name for p in parameters})
    if unknown:
        raise InputError(f"{where} has no argument {unknown[0]!r}")
    hypers, kinds, passed = {}, {}, {}
    for p in parameters:
        default = p.default
        if p.name in fixed and not isinstance(fixed[p.name], Hyper):
            passed[p.name] = fixed[p.name]
            continue
        if p.name in fixed:
            hypers[p.name], kinds[p.name] = fixed[p.name], "number"
        elif p.name == step:
            start = STEP_DEFAULT if default is inspect.Parameter.empty else float(default)
            hypers[p.name], kinds[p.name] = StepSize(start, *STEP_RANGE), "number"
        elif default is inspect.Parameter.empty:
            raise InputError(f"{where}: argument {p.name!r} has no default; declare the method "
                             f"in Python with {p.name}=… (cryobench.external)")
        elif isinstance(default, bool):
            hypers[p.name], kinds[p.name] = Flag(int(default), 0, 1, log=False, integer=True), "flag"
        elif _number(default):
            hypers[p.name], kinds[p.name] = _unranged(default, p.annotation), "number"
        elif isinstance(default, tuple) and default and all(_number(v) for v in default):
            for i, v in enumerate(default):
                hypers[f"{p.name}_{i}"] = _unranged(v)
            kinds[p.name] = len(default)
        # None, strings, callables, dtypes: the library's default, not exposed
    if "batch_size" in hypers or "batch_size" in passed:
        raise InputError(f"{where}: its argument batch_size would clash with the minibatch size")
    hypers["batch_size"] = BATCH
    return hypers, Layout(kinds, passed)


def load_object(reference: str, dotted: str, extra: str):
    """The object at ``dotted`` (``package.module.Name``): the longest importable module prefix,
    then attributes. A missing top-level package is one line naming the extra to install."""
    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == parts[0]:
                raise InputError(f"{reference}: cannot import {parts[0]} (not installed): pip "
                                 f"install {parts[0]}, or 'cryobench[{extra}]' for the libraries "
                                 "it brings") from None
            if exc.name and module_name.startswith(exc.name):
                continue
            raise InputError(f"{reference}: cannot import {module_name}: {exc}") from None
        except Exception as exc:                   # the library's own failure at import
            raise InputError(f"{reference}: cannot import {module_name}: "
                             f"{type(exc).__name__}: {exc}") from None
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                raise InputError(f"{reference}: {module_name} has no {'.'.join(parts[i:])}")
            obj = getattr(obj, attr)
        return obj
    raise InputError(f"{reference}: expected a dotted name such as "
                     f"{'torch.optim.AdamW' if extra == 'torch' else 'optax.adam'}")


@lru_cache(maxsize=None)
def _distributions() -> dict:
    return importlib.metadata.packages_distributions()


def library_version(module: str) -> str:
    """``name version`` of the distribution providing ``module``'s top-level package."""
    top = module.split(".")[0]
    for dist in _distributions().get(top, [top]):
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return f"{top} unknown"


def _describe(value) -> str:
    """A stable text for an argument value (no memory addresses)."""
    if value is None or isinstance(value, (bool, int, float, str, Hyper)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_describe(v) for v in value) + ")"
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '?')}.{value.__qualname__}"
    text = repr(value)
    return type(value).__qualname__ if " at 0x" in text else text


def code_digest(path) -> str:
    """SHA-256 of a module's syntax tree without docstrings (its code, not its explanation)."""
    tree = ast.parse(Path(path).read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            node.body = [s for s in body if not (isinstance(s, ast.Expr) and isinstance(
                s.value, ast.Constant) and isinstance(s.value.value, str))] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


def identity(libraries, target, parameters, fixed: dict) -> str:
    """What an external method is: its libraries' versions, the qualified name of ``target``,
    its signature's defaults, the arguments fixed in Python, and this module's code (the
    adapter module itself is fingerprinted with the factory)."""
    versions = "; ".join(sorted({library_version(m) for m in libraries}))
    signature = ", ".join(f"{p.name}={_describe(p.default)}" if p.default is not p.empty
                          else p.name for p in parameters)
    given = ", ".join(f"{k}={_describe(v)}" for k, v in sorted(fixed.items()))
    return (f"{versions} | {target.__module__}.{target.__qualname__}({signature}) | fixed "
            f"({given}) | adapter {code_digest(__file__)[:16]}")
