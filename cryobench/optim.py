"""The optimizer protocol, in the spirit of optax: two functions and declared hyper-parameters.

An optimizer is a :class:`GradientMethod` built by a factory whose keyword arguments are its
hyper-parameters::

    @method(lr=Hyper(1.0, 1e-3, 1e2), batch_size=Hyper(100, 10, 1000, integer=True))
    def sgd(lr, batch_size):
        def init(x0, *, budget, rng):
            return {"x": x0.copy(), "t": 0}
        def step(state, oracle):
            _, g = oracle.value_and_grad(state["x"], oracle.next_batch(batch_size))
            return {"x": state["x"] - lr * g, "t": state["t"] + 1}
        return GradientMethod(init, step)

* ``init(x0, *, budget, rng) -> state`` — ``budget`` in gradient evaluations, ``rng`` the
  optimizer's own ``numpy.random.Generator``;
* ``step(state, oracle) -> state`` — one iteration; every evaluation goes through the counted
  oracle, which raises :class:`~cryobench.oracle.BudgetExhausted` rather than exceed the budget;
* ``iterate(state) -> x`` — the current density (``state["x"]`` unless the method says otherwise).

The state is a dict; its arrays keep their shapes and dtypes from step to step.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from cryobench.oracle import BudgetExhausted


#: hyper-parameter names that are, by convention, weights of a running average (μ, β): below 1
AVERAGING_WEIGHTS = ("momentum", "beta", "beta1", "beta2")


@dataclass(frozen=True)
class Hyper:
    """A hyper-parameter: default value and search range [low, high] (log-scale by default)."""

    default: float
    low: float
    high: float
    log: bool = True
    integer: bool = False

    def check(self, name: str, value) -> float:
        """The value cast to the declared type, or an error line when it cannot be meant.

        Every value must be a finite number; one whose declared range starts at 0 or above
        must not be negative; ``lr`` (by the naming convention, a step size) must be positive;
        an integer one must be a whole number, ≥ 1 when its declared range starts at 1 or above
        (batch sizes, ranks, memories); an averaging weight (by the naming convention: ``momentum``,
        ``beta``, ``beta1``, ``beta2``) must be below 1. The search range [low, high] is not a
        validity range: other values are allowed.
        """
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"hyper-parameter {name} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not np.isfinite(number):
            raise ValueError(f"hyper-parameter {name} must be a finite number, got {value!r}")
        floor = min(1, self.low) if self.integer else 0
        if self.low >= 0 and number < floor or name == "lr" and number <= 0:
            raise ValueError(f"hyper-parameter {name} must be "
                             f"{'positive' if name == 'lr' else f'≥ {floor:g}'}, got {value!r}")
        if name in AVERAGING_WEIGHTS and number >= 1:
            raise ValueError(f"hyper-parameter {name} is an averaging weight and must be < 1 "
                             f"(at 1 or above the average grows without bound), got {value!r}")
        if self.integer:
            if number != round(number):
                raise ValueError(f"hyper-parameter {name} must be a whole number, got {value!r}")
            return int(round(number))
        return number


def dot64(a: np.ndarray, b: np.ndarray) -> float:
    """⟨a, b⟩ accumulated in float64 (inner products of float32 volumes with ~10⁶ entries)."""
    return float(np.dot(a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)))


def _default_iterate(state) -> np.ndarray:
    return state["x"]


@dataclass(frozen=True)
class GradientMethod:
    """``init`` and ``step`` of a configured optimizer, and how to read its iterate."""

    init: Callable[..., Any]
    step: Callable[[Any, Any], Any]
    iterate: Callable[[Any], np.ndarray] = _default_iterate


@dataclass(frozen=True)
class Method:
    """A registered optimizer: a factory and its declared hyper-parameters."""

    name: str
    factory: Callable[..., GradientMethod]
    hypers: dict[str, Hyper]
    doc: str = field(default="", compare=False)

    def defaults(self) -> dict:
        return {k: h.default for k, h in self.hypers.items()}

    def configure(self, **overrides) -> GradientMethod:
        """The optimizer with ``overrides`` applied to the defaults; unknown names are errors."""
        return self.factory(**self.values(**overrides))

    def values(self, **overrides) -> dict:
        """The hyper-parameter values :meth:`configure` would use (checked; unknown names are
        errors), without running the factory."""
        unknown = sorted(set(overrides) - set(self.hypers))
        if unknown:
            raise ValueError(f"optimizer {self.name!r} has no hyper-parameter {unknown[0]!r}; "
                             f"known: {', '.join(self.hypers) or 'none'}")
        return {k: h.check(k, overrides.get(k, h.default)) for k, h in self.hypers.items()}

    __call__ = configure


def method(name: str | None = None, **hypers: Hyper) -> Callable[[Callable], Method]:
    """Decorator declaring an optimizer factory and its hyper-parameters (see module doc)."""
    def wrap(factory: Callable) -> Method:
        params = list(inspect.signature(factory).parameters)
        if sorted(params) != sorted(hypers):
            raise TypeError(f"{factory.__name__}: arguments {params} differ from the declared "
                            f"hyper-parameters {list(hypers)}")
        return Method(name or factory.__name__.replace("_", "-"), factory, dict(hypers),
                      inspect.getdoc(factory) or "")
    return wrap


def minimize(opt: GradientMethod, x0: np.ndarray, oracle, rng: np.random.Generator,
             callback: Callable[[Any, Any], None] | None = None):
    """Step until the budget is spent; ``callback(state, oracle)`` after each step. Returns state.

    The optimizer is handed ``oracle.view()``, never the oracle itself."""
    view = oracle.view()
    state = opt.init(x0, budget=oracle.budget, rng=rng)
    while oracle.remaining > 0:
        try:
            state = opt.step(state, view)
        except BudgetExhausted:
            break
        if callback is not None:
            callback(state, oracle)
    return state
