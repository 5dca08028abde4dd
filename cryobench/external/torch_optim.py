"""``torch.optim`` optimizers on cryobench tasks: ``torch:torch.optim.AdamW`` runs the class as it
is, on one parameter tensor holding the density, with gradients from the counted oracle.

Each step draws one minibatch of ``batch_size`` training images from the oracle's stream and

* for an optimizer whose ``step`` takes an optional closure (SGD, Adam, AdamW, …): sets the
  parameter's ``.grad`` to ∇f_B at the current density (|B| gradient evaluations) and calls
  ``optimizer.step()`` — PyTorch's ``loss.backward(); optimizer.step()`` with the oracle in
  place of autograd;
* for one whose ``step`` requires a closure (``LBFGS``): calls ``optimizer.step(closure)`` with
  a closure that evaluates f_B and ∇f_B on that step's minibatch through the oracle at the
  optimizer's current point, sets ``.grad`` and returns f_B; every call is charged |B|.

The scored iterate (``GradientMethod.iterate``) is the parameter after the step, except for

* optimizers with ``eval()`` and ``train()`` methods (schedulefree's ``AdamWScheduleFree``,
  ``SGDScheduleFree``, pytorch-optimizer's schedule-free variants): the parameter after
  ``optimizer.eval()``, i.e. the averaged sequence x at which schedule-free methods are to be
  evaluated (schedulefree's README: call ``optimizer.eval()`` before evaluating, ``.train()``
  before training again; AlgoPerf's ``prepare_for_eval`` submission hook does the same).
  The hook calls ``eval()``, copies the parameter, calls ``train()`` and then restores the
  parameter bit for bit (``train`` after ``eval`` is not an exact inverse in floating point), so
  scoring leaves the training trajectory unchanged. The optimizer is put in train mode at init.
* ``torch.optim.ASGD``: its running average ``ax``, which that method returns.

Determinism: every call into the optimizer runs with ``torch.use_deterministic_algorithms(True)``
(an optimizer using a non-deterministic kernel then fails, and the run ends ``error``), with
PyTorch's intra-op thread count set to the run's BLAS thread count, and under
``torch.random.fork_rng``: an optimizer drawing from the global RNG draws from a generator
seeded from the ``rng`` handed to ``init``, and the process's global RNG is left as it was.
The adapter restores the deterministic flag and the thread count after each call.

The variable is the float32 numpy density; the torch tensor is internal (its memory is the
adapter's own copy) and ``iterate`` returns a numpy copy of the task's shape and dtype.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager

import numpy as np

from cryobench.base.threads import thread_info
from cryobench.errors import InputError
from cryobench.external.common import ExternalMethod, hypers_from, identity, load_object
from cryobench.optim import GradientMethod

# keyword switches that choose an implementation, not the update: left at the library's default
IMPLEMENTATION = {"foreach", "fused", "capturable", "differentiable"}
EXTRA = "torch"


def import_torch(reference: str):
    """PyTorch, or one line saying how to install it."""
    try:
        import torch     # heavy optional import: only when a torch optimizer is used
    except ImportError:
        raise InputError(f"{reference} needs PyTorch: pip install 'cryobench[torch]'") from None
    return torch


def resolve(reference: str, target: str) -> ExternalMethod:
    """``torch:package.module.Class`` (a bare ``Class`` means ``torch.optim.Class``)."""
    import_torch(reference)
    dotted = target if "." in target else f"torch.optim.{target}"
    return torch_method(load_object(reference, dotted, EXTRA), name=reference)


def needs_closure(cls) -> bool:
    """Whether ``cls.step`` requires a closure (torch's LBFGS does)."""
    try:
        closure = inspect.signature(cls.step).parameters.get("closure")
    except (TypeError, ValueError):
        return False
    return closure is not None and closure.default is inspect.Parameter.empty


def torch_method(cls, *, name: str | None = None, **fixed) -> ExternalMethod:
    """A cryobench method running the ``torch.optim.Optimizer`` subclass ``cls`` (module doc).

    Hyper-parameters come from ``cls.__init__``'s signature (:mod:`cryobench.external.common`);
    ``fixed`` gives arguments in Python — a value is passed as it is, a
    :class:`~cryobench.optim.Hyper` declares that argument's hyper-parameter. For example::

        lbfgs_wolfe = torch_method(torch.optim.LBFGS, line_search_fn="strong_wolfe")
    """
    name = name or f"torch:{cls.__module__}.{getattr(cls, '__qualname__', cls)}"
    torch = import_torch(name)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise InputError(f"{name}: {cls!r} is not a torch.optim.Optimizer class")
    parameters = [p for p in list(inspect.signature(cls.__init__).parameters.values())[2:]
                  if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    hypers, layout = hypers_from([p for p in parameters if p.name not in IMPLEMENTATION],
                                 "lr", fixed, name)
    closure = needs_closure(cls)

    def torch_optimizer(**values) -> GradientMethod:
        return configure(cls, layout.arguments(values), values["batch_size"], closure)

    doc = (f"{cls.__module__}.{cls.__qualname__} through the counted oracle "
           f"({'closure' if closure else 'gradient'} mode; cryobench.external.torch_optim)")
    return ExternalMethod(name, torch_optimizer, hypers, doc,
                          identity(["torch", cls.__module__], cls, parameters, fixed))


class TorchRun:
    """The live torch objects of one run: the parameter, the optimizer, its RNG state."""

    def __init__(self, x0: np.ndarray, seed: int, threads: int):
        import torch     # heavy optional import
        self.param = torch.nn.Parameter(torch.from_numpy(np.array(x0, copy=True)))
        self.rng_state = torch.Generator().manual_seed(seed).get_state()
        self.threads, self.optimizer = threads, None

    def point(self) -> np.ndarray:
        """The parameter as a numpy array (a view: copy it to keep it)."""
        return self.param.detach().numpy()

    def set_grad(self, g: np.ndarray) -> None:
        import torch     # heavy optional import
        self.param.grad = torch.from_numpy(np.require(g, self.point().dtype, ["C", "W"]))

    @contextmanager
    def environment(self):
        """Deterministic kernels, the run's thread count and the run's own RNG stream."""
        import torch     # heavy optional import
        threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
        torch.set_num_threads(self.threads)
        torch.use_deterministic_algorithms(True)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(self.rng_state)
                yield
                self.rng_state = torch.get_rng_state()
        finally:
            torch.use_deterministic_algorithms(deterministic)
            torch.set_num_threads(threads)

    def evaluation_point(self) -> np.ndarray:
        """The parameter after ``optimizer.eval()``; the optimizer is left in train mode and the
        parameter exactly as it was."""
        import torch     # heavy optional import
        with self.environment(), torch.no_grad():
            saved = self.param.detach().clone()
            self.optimizer.eval()
            x = self.point().copy()
            self.optimizer.train()
            self.param.copy_(saved)
        return x


def has_eval_mode(optimizer) -> bool:
    """Whether an optimizer switches between training and evaluation points (schedule-free)."""
    return callable(getattr(optimizer, "eval", None)) and callable(getattr(optimizer, "train", None))


def configure(cls, kwargs: dict, batch_size: int, closure: bool) -> GradientMethod:
    """init, step and iterate of ``cls(**kwargs)`` on minibatches of ``batch_size`` images."""

    def init(x0, *, budget, rng):
        run = TorchRun(x0, int(rng.integers(2**63 - 1)), int(thread_info()["blas_threads"] or 1))
        with run.environment():
            run.optimizer = cls([run.param], **kwargs)
            if has_eval_mode(run.optimizer):
                run.optimizer.train()
        return {"x": np.array(x0, copy=True), "t": 0, "torch": run}

    def step(state, oracle):
        run = state["torch"]
        batch = oracle.next_batch(batch_size)
        with run.environment():
            if closure:
                run.optimizer.step(make_closure(run, oracle, batch))
            else:
                _, g = oracle.value_and_grad(run.point(), batch)
                run.set_grad(g)
                run.optimizer.step()
        return {"x": run.point().copy(), "t": state["t"] + 1, "torch": run}

    def iterate(state):
        import torch     # heavy optional import
        run = state["torch"]
        if has_eval_mode(run.optimizer):
            return run.evaluation_point()
        if isinstance(run.optimizer, torch.optim.ASGD):
            ax = run.optimizer.state.get(run.param, {}).get("ax")
            if ax is not None:
                return ax.detach().numpy().copy()
        return state["x"]

    return GradientMethod(init, step, iterate)


def make_closure(run: TorchRun, oracle, batch):
    """The closure of one step: f_B and ∇f_B at the optimizer's current point on the step's
    minibatch, through the counted oracle (each call costs |B| gradient evaluations)."""
    import torch     # heavy optional import

    def closure():
        value, g = oracle.value_and_grad(run.point(), batch)
        run.set_grad(g)
        return torch.tensor(value, dtype=torch.float64)

    return closure
