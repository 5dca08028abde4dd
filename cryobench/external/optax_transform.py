"""optax transformations on cryobench tasks: ``optax:optax.lion`` builds the transformation
from its factory with the hyper-parameter values and runs it unchanged on the density.

Each step draws one minibatch of ``batch_size`` training images, takes f_B and ∇f_B from the
counted oracle at the current density (|B| gradient evaluations), and applies

    updates, opt_state = tx.update(∇f_B, opt_state, params, value=f_B)
    params = optax.apply_updates(params, updates)

jit-compiled, where ``tx`` is the factory's transformation with extra-argument support
(``optax.with_extra_args_support``: transformations that read ``value``, such as
``optax.contrib.reduce_on_plateau``, get f_B; the others ignore it). Line searches that need a
``value_fn`` (``optax.scale_by_backtracking_linesearch``) are not supported: they would call
the objective from inside traced code, where the oracle cannot be.

The scored iterate (``GradientMethod.iterate``) is ``params``, except for a state that holds an
``optax.contrib.ScheduleFreeState`` (``optax.contrib.schedule_free_adamw``,
``schedule_free_sgd``, ``schedule_free(…)``): then ``optax.contrib.schedule_free_eval_params``,
the averaged sequence x at which schedule-free methods are to be evaluated (AlgoPerf's
``prepare_for_eval`` hook does the same). The state is a dict of jax arrays and the optax state,
replaced at each step (nothing is shared between states).

The variable is the float32 numpy density; the jax arrays are internal, and ``iterate``
returns a numpy copy of the task's shape and dtype. optax has no hidden randomness (keys are
explicit arguments), so the same seed gives the same numbers; XLA's CPU kernels for these
element-wise updates are deterministic.
"""
from __future__ import annotations

import inspect

import numpy as np

from cryobench.errors import InputError
from cryobench.external.common import ExternalMethod, hypers_from, identity, load_object
from cryobench.optim import GradientMethod

EXTRA = "jax"


def import_optax(reference: str):
    """optax (and JAX), or one line saying how to install them."""
    try:
        import jax  # noqa: F401  (heavy optional imports: only when an optax method is used)
        import optax
    except ImportError:
        raise InputError(f"{reference} needs JAX and optax: pip install 'cryobench[jax]'") from None
    return optax


def resolve(reference: str, target: str) -> ExternalMethod:
    """``optax:package.module.factory`` (a bare ``factory`` means ``optax.factory``)."""
    import_optax(reference)
    dotted = target if "." in target else f"optax.{target}"
    return optax_method(load_object(reference, dotted, EXTRA), name=reference)


def optax_method(factory, *, name: str | None = None, **fixed) -> ExternalMethod:
    """A cryobench method running the transformation that ``factory`` builds (module doc).

    Hyper-parameters come from the factory's signature (:mod:`cryobench.external.common`);
    ``fixed`` gives arguments in Python — a value is passed as it is, a
    :class:`~cryobench.optim.Hyper` declares that argument's hyper-parameter. For example::

        sgd_momentum = optax_method(optax.sgd, momentum=Hyper(0.9, 0.5, 0.99, log=False))
    """
    name = name or f"optax:{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', factory)}"
    optax = import_optax(name)
    if not callable(factory):
        raise InputError(f"{name}: {factory!r} is not an optax transformation factory")
    try:
        parameters = [p for p in inspect.signature(factory).parameters.values()
                      if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    except (TypeError, ValueError):
        raise InputError(f"{name}: {factory!r} has no signature to read hyper-parameters "
                         "from") from None
    hypers, layout = hypers_from(parameters, "learning_rate", fixed, name)
    defaults = {k: h.default for k, h in hypers.items()}
    try:
        made = factory(**layout.arguments(defaults))
    except Exception as exc:                           # the library's refusal, as one line
        raise InputError(f"{name}: cannot build it with its defaults: {type(exc).__name__}: "
                         f"{exc}") from None
    if not isinstance(made, optax.GradientTransformation):
        raise InputError(f"{name}: returns a {type(made).__name__}, not an optax "
                         "GradientTransformation")

    def optax_transformation(**values) -> GradientMethod:
        return configure(factory, layout.arguments(values), values["batch_size"])

    doc = f"{factory.__module__}.{factory.__qualname__} through the counted oracle " \
          "(cryobench.external.optax_transform)"
    libraries = ["jax", "jaxlib", "optax", factory.__module__]
    return ExternalMethod(name, optax_transformation, hypers, doc,
                          identity(libraries, factory, parameters, fixed))


def schedule_free_state(opt_state):
    """The ``optax.contrib.ScheduleFreeState`` within an optax state, or None."""
    from optax.contrib import ScheduleFreeState     # heavy optional import
    if isinstance(opt_state, ScheduleFreeState):
        return opt_state
    if isinstance(opt_state, dict):
        opt_state = list(opt_state.values())
    if isinstance(opt_state, (tuple, list)):
        for part in opt_state:
            found = schedule_free_state(part)
            if found is not None:
                return found
    return None


def configure(factory, kwargs: dict, batch_size: int) -> GradientMethod:
    """init, step and iterate of ``factory(**kwargs)`` on minibatches of ``batch_size`` images."""
    import jax     # heavy optional imports
    import jax.numpy as jnp
    import optax
    from optax.contrib import schedule_free_eval_params

    tx = optax.with_extra_args_support(factory(**kwargs))

    @jax.jit
    def update(grad, opt_state, params, value):
        updates, opt_state = tx.update(grad, opt_state, params, value=value)
        return optax.apply_updates(params, updates), opt_state

    eval_params = jax.jit(schedule_free_eval_params)

    def init(x0, *, budget, rng):
        params = jnp.asarray(x0)
        return {"x": np.array(x0, copy=True), "t": 0, "params": params,
                "opt_state": tx.init(params)}

    def step(state, oracle):
        value, g = oracle.value_and_grad(state["x"], oracle.next_batch(batch_size))
        params, opt_state = update(jnp.asarray(g), state["opt_state"], state["params"], value)
        return {"x": np.array(params, dtype=state["x"].dtype), "t": state["t"] + 1,
                "params": params, "opt_state": opt_state}

    def iterate(state):
        found = schedule_free_state(state["opt_state"])
        if found is None:
            return state["x"]
        return np.array(eval_params(found, state["params"]), dtype=state["x"].dtype)

    return GradientMethod(init, step, iterate)
