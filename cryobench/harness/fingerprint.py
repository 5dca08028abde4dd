"""What a cell's identity covers: fingerprints of behaviour, not of file text .

A cell's numbers are decided by the task's data and definition (the task content hash), the
run's specification (hyper-parameters, seed, budget, checkpoints, threads), the optimizer's code
and the library's numerical code. For the last two:

* :func:`numerics_fingerprint` — SHA-256 of the exact bits the library computes on a fixed
  probe: the marginal likelihood and its gradient with one shift and with a shift grid (several
  minibatch sizes, so every code path of the kernel runs), the prior, the paper's schedules,
  ``dot64``, the seeded splits, stream and random-sphere init, the power matching, and a whole
  short run through :func:`cryobench.harness.run.execute` (oracle, scoring, checkpoints, snapshots, FSC
  after alignment, views). Moving or renaming code, or editing comments, leaves it unchanged;
  any change of a computed bit — a kernel edit, another BLAS or CPU, another numba — changes
  it. It is computed with one BLAS thread (the run's thread count is in its specification).
  A refinement task's cells use the fingerprint with the refinement kernels' probe added
  (known poses, local search, the CG optimum): an edit of those kernels makes its cells stale
  and leaves every ab-initio cell's id as it was.
* :func:`optimizer_fingerprint` — SHA-256 of the optimizer's module with comments, docstrings
  and layout removed (its abstract syntax tree): editing the explanation of a method leaves
  its results valid; editing its code does not.

Simulated data enter through the task content hash (the SHA-256 manifest of the cached files).
"""
from __future__ import annotations

import ast
import hashlib
import inspect
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation
from threadpoolctl import threadpool_limits

from cryobench.base.seeding import rng_for
from cryobench.data.datasets import Dataset
from cryobench.data.refinement import solve_optimum
from cryobench.data.spec import Scale, TaskSpec
from cryobench.harness.declared import Declared
from cryobench.harness.record import RunSpec
from cryobench.harness.run import execute
from cryobench.model.ctf import CTFParams
from cryobench.model.local_refinement import LocalSearchLikelihood
from cryobench.model.prior import Prior
from cryobench.model.refinement import RefinementLikelihood
from cryobench.optim import GradientMethod, Hyper, dot64, method
from cryobench.schedules import annealed_lr, sutskever_momentum
from cryobench.task import Task, likelihood_for, make_splits, match_power, random_spheres


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return tree


def code_fingerprint(source: str) -> str:
    """SHA-256 of Python source without its comments, docstrings and layout."""
    tree = _strip_docstrings(ast.parse(source))
    return hashlib.sha256(ast.dump(tree, annotate_fields=False).encode()).hexdigest()


def optimizer_fingerprint(method) -> str:
    """:func:`code_fingerprint` of the module that defines an optimizer's factory; with another
    library's method's ``identity`` (:mod:`cryobench.external`) hashed in where it has one. A
    declaration (:class:`~cryobench.harness.declared.Declared`) names that module's file: it is
    read here, never imported."""
    try:
        source = (method.source if isinstance(method, Declared) else
                  inspect.getsourcefile(method.factory))
        code = code_fingerprint(Path(source).read_text())
    except (TypeError, OSError, SyntaxError):
        return "unknown"
    extra = getattr(method, "identity", None)        # library, version, class, arguments
    return code if extra is None else hashlib.sha256(f"{code}\n{extra}".encode()).hexdigest()


# The library's numerical code, by path under cryobench/ (folders whole): what decides a run's
# numbers besides the task, the optimizer and the platform.
NUMERICS_CODE = ("base", "data", "model", "importance.py", "optim.py", "oracle.py",
                 "schedules.py", "task.py", "harness/record.py", "harness/run.py")


@lru_cache(maxsize=None)
def numerics_code_digest() -> str:
    """SHA-256 over the :func:`code_fingerprint` of every module of ``NUMERICS_CODE`` (in path
    order): the library's numerical code without comments, docstrings and layout. Unlike
    :func:`numerics_fingerprint` it is the same on every platform, so a cell's identity records
    it beside that fingerprint: a cell computed on another CPU by the same code differs from
    this machine's only as any other platform's run does (``verify``'s off-platform judgement)."""
    package = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for part in NUMERICS_CODE:
        root = package / part
        for path in sorted(root.rglob("*.py") if root.is_dir() else [root]):
            h.update(path.relative_to(package).as_posix().encode() + b"\0"
                     + code_fingerprint(path.read_text()).encode())
    return h.hexdigest()


class _Bits:
    """SHA-256 over the exact bytes of arrays and numbers, in the order they are added."""

    def __init__(self):
        self.h = hashlib.sha256()

    def add(self, *values) -> None:
        for v in values:
            a = np.ascontiguousarray(np.asarray(v))
            self.h.update(str((a.dtype.str, a.shape)).encode() + a.tobytes())


def _probe_task(shift_sigma_px: float, n_images: int = 60):
    """A small in-memory task (box 16, r_max 4 px) on images drawn from a fixed generator."""
    box, pixel = 16, 4.0
    rng = rng_for("fingerprint", shift_sigma_px)
    spec = TaskSpec("fingerprint", Path("fingerprint.toml"), {
        "name": "fingerprint", "seed": 1, "objective": {"shift_sigma": shift_sigma_px * pixel}})
    scale = Scale("probe", n_images, box, pixel, 4.0, None, 10)
    lik = likelihood_for(spec, scale, box, pixel)
    ctf = CTFParams(rng.uniform(1e4, 3e4, n_images), rng.uniform(1e4, 3e4, n_images),
                    rng.uniform(0, 180, n_images), 300.0, 2.7, 0.1, 0.0, 0.0)
    truth = random_spheres(box, pixel, 24.0, rng, 6, 0.2, 0.4)
    images = (rng.normal(size=(n_images, box, box)) + truth.sum(0) / box).astype(np.float32)
    sigma = np.ones(n_images)
    spectra = lik.prepare(images, ctf, sigma)
    splits = make_splits("fingerprint", 1, n_images, 10, 10)
    init = random_spheres(box, pixel, 24.0, rng_for("fingerprint", "init"), 8, 0.1, 0.3)
    init *= match_power(init, lik, lik.subset(spectra, splits["train"]))
    data = Dataset(images, ctf, sigma, pixel, 24.0, "fingerprint", None, truth)
    task = Task(spec, scale, data, lik, Prior(1e-4, 1e-4, 1.0), spectra, splits,
                init.astype(np.float32), "fingerprint", Path(tempfile.gettempdir()), 10, 400)
    return task


def _probe_refinement(bits: _Bits) -> None:
    """The refinement kernels (:mod:`cryobench.model.refinement`, its local search and the CG
    optimum) on a tiny problem: boxes 12 and 13 (the odd box reads past its half grid), float32
    and float64, random poses, shifts and CTFs from a fixed generator."""
    for box, dtype in ((12, np.float32), (13, np.float64)):
        rng = rng_for("fingerprint", "refinement", box)
        n = 8
        rot = Rotation.random(n, random_state=rng).as_matrix()
        ctf = CTFParams(rng.uniform(5e3, 2.5e4, n), rng.uniform(5e3, 2.5e4, n),
                        rng.uniform(0, 180, n), 300.0, 2.7, 0.1, 0.0, 30.0)
        images = rng.normal(size=(n, box, box))
        volume = rng.normal(size=(box,) * 3).astype(dtype)
        known = RefinementLikelihood(box, 2.0, box / 2, rot, rng.normal(size=(n, 2)), dtype)
        local = LocalSearchLikelihood(box, 2.0, box / 2, rot, known.shifts, dtype,
                                      rotation_deg=2.0, rotation_steps=3, shift_A=1.0,
                                      shift_steps=2)
        for lik in (known, local):
            data = lik.prepare(images, ctf, 1.3)
            bits.add(data.y, data.half_norms, *lik.nll_grad_weights(volume, data),
                     lik.nll_grad_weights(volume, data, exact_diagonal=True)[2])
        optimum, facts = solve_optimum(known, known.prepare(images, ctf, 1.3), np.arange(n), 1.0)
        bits.add(optimum, facts["iterations"])


def _probe_sgd():
    """Plain annealed SGD with momentum-free steps, defined here so the probe depends on the
    library only."""
    @method(lr=Hyper(0.5, 1e-3, 1e2))
    def probe_sgd(lr):
        def step(state, oracle):
            _, g = oracle.value_and_grad(state["x"], oracle.next_batch(10))
            eta = np.float32(annealed_lr(lr, state["t"]))
            return {"x": state["x"] - eta * g, "t": state["t"] + 1}
        return GradientMethod(lambda x0, *, budget, rng: {"x": x0.copy(), "t": 0}, step)
    return probe_sgd


def _probe(bits: _Bits) -> None:
    for shift in (0.0, 1.0):
        task = _probe_task(shift)
        lik, v = task.likelihood, task.init
        bits.add(task.splits["train"], task.epoch_order(0), task.epoch_order(3, 2), v)
        for size in (1, 7, len(task.splits["train"])):
            data = lik.subset(task.spectra, task.splits["train"][:size])
            nll, grad = lik.nll_and_grad(v, data)
            bits.add(lik.nll(v, data), nll, grad)
        bits.add(task.prior.value(v), task.prior.grad(v), task.test_nll(v))
        oracle = task.oracle(40)
        b = oracle.next_batch(10)
        bits.add(oracle.hvp(v, v, b), oracle.value(v, b))
    bits.add([annealed_lr(1.0, t) for t in (0, 1, 99, 10_000)],
             [sutskever_momentum(t) for t in (0, 99, 100, 5_000, 10**6)],
             dot64(task.init, task.init * 3))
    out = execute(RunSpec("fingerprint", "probe", "probe-sgd", {"lr": 0.5}, seed=1, budget=400,
                          snapshots=()), task, _probe_sgd())
    # wall_s is the clock; terms and flops are the oracle's accounting (counts, not computed
    # numbers)
    bits.add(out.trace.drop(columns=["wall_s", "terms", "flops"]).to_numpy(float), out.record.status,
             out.record.evaluations, *[out.densities[k] for k in sorted(out.densities)],
             out.fsc.to_numpy(object).astype(str), *[out.views[k] for k in sorted(out.views)])


def source_digest() -> str:
    """SHA-256 of the text of the package's modules: while it and the machine are unchanged,
    so is :func:`numerics_fingerprint` (cell processes use this to skip the probe)."""
    h = hashlib.sha256()
    package = Path(__file__).resolve().parent.parent
    for path in sorted(package.rglob("*.py")):
        h.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


@lru_cache(maxsize=None)
def numerics_fingerprint(refinement: bool = False) -> str:
    """SHA-256 of the bits the library's numerical code computes on the fixed probe (module doc),
    with one BLAS thread; with ``refinement`` the refinement kernels' probe too (a refinement
    task's cells depend on both, an ab-initio task's on the first only). A few hundred
    milliseconds, computed once per process."""
    bits = _Bits()
    with threadpool_limits(1):
        _probe(bits)
        if refinement:
            _probe_refinement(bits)
    return bits.h.hexdigest()
