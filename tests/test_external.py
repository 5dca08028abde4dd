"""Optimizers of other libraries (cryobench.external): torch.optim classes and optax factories
reproduce the native methods, closures are charged, schedule-free methods are scored at their
evaluation point, the accounting cannot be bent, and a missing library is one line.

Tests needing PyTorch or JAX/optax skip, saying so, where the library is not installed
(``pip install -e '.[torch,jax]'``; CI installs both)."""
import dataclasses
import importlib.util
import inspect
import sys
from pathlib import Path

import numpy as np
import pytest

import cryobench
import test_conformance as conformance
from cryobench.base.seeding import rng_for
from cryobench.cli import main as cli
from cryobench.errors import InputError
from cryobench.harness.fingerprint import code_fingerprint, optimizer_fingerprint
from cryobench.harness.registry import resolve
from cryobench.harness.record import RunSpec
from cryobench.harness.run import execute
from cryobench.harness.tuning import candidates
from cryobench.optim import Hyper, minimize
from cryobench.toy import QuadraticOracle



def installed(name: str) -> bool:
    """Whether ``import name`` can work (a module set to None in sys.modules cannot)."""
    if name in sys.modules:
        return sys.modules[name] is not None
    return importlib.util.find_spec(name) is not None


HAVE_TORCH = installed("torch")
HAVE_OPTAX = installed("optax") and installed("jax")
HAVE_SCHEDULEFREE = installed("schedulefree")
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch is not installed: pip install -e '.[torch]'")
needs_optax = pytest.mark.skipif(not HAVE_OPTAX, reason="JAX/optax are not installed: pip install -e '.[jax]'")
needs_schedulefree = pytest.mark.skipif(not (HAVE_TORCH and HAVE_SCHEDULEFREE),
                                        reason="schedulefree is not installed: pip install -e '.[torch]'")

STEPS, BATCH = 200, 10
# max |x − x_native| / max |x_native| after 200 steps on thermus-style (ci). Measured on the
# development machine: SGD 0 (bit-identical) for both libraries, torch Adam 1.6e-7, optax Adam
# 3.9e-5, schedule-free SGD (evaluation iterate) 7.4e-7 torch, 4.1e-6 optax; the iterates move
# 0.22–0.55 of max |x| in those steps, and the schedule-free training iterate is 1.5e-2 away.
TOLERANCE = 2e-4


@pytest.fixture(scope="module")
def thermus(data_dir):
    return cryobench.load_task("thermus-style", scale="ci", data_dir=data_dir, progress=False)


def run_steps(task, reference, **values):
    """The iterate and the training point after STEPS steps of BATCH images (stream 0)."""
    opt = resolve(reference).configure(batch_size=BATCH, **values)
    oracle = task.oracle(STEPS * BATCH)
    state = minimize(opt, task.init.copy(), oracle, rng_for("external", reference))
    assert oracle.evaluations == STEPS * BATCH
    return opt.iterate(state), state["x"]


def relative(a, b) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# the native methods with a constant step: sgd's annealing off (decay 0), adam's ε in both
PARITY = [
    pytest.param("sgd", {"lr": 1.0, "decay": 0.0}, "torch:torch.optim.SGD", {"lr": 1.0},
                 marks=needs_torch, id="torch-sgd"),
    pytest.param("adam", {"lr": 1e-3, "eps": 1e-10}, "torch:torch.optim.Adam",
                 {"lr": 1e-3, "eps": 1e-10}, marks=needs_torch, id="torch-adam"),
    pytest.param("sgd", {"lr": 1.0, "decay": 0.0}, "optax:optax.sgd", {"learning_rate": 1.0},
                 marks=needs_optax, id="optax-sgd"),
    pytest.param("adam", {"lr": 1e-3, "eps": 1e-10}, "optax:optax.adam",
                 {"learning_rate": 1e-3, "eps": 1e-10}, marks=needs_optax, id="optax-adam"),
    # the evaluation hook: the average x of schedule-free SGD, not its training point y
    pytest.param("schedule-free", {"lr": 1.0, "beta": 0.9, "warmup": 0},
                 "torch:schedulefree.SGDScheduleFree", {"lr": 1.0, "momentum": 0.9},
                 marks=needs_schedulefree, id="schedulefree-sgd"),
    pytest.param("schedule-free", {"lr": 1.0, "beta": 0.9, "warmup": 0},
                 "optax:optax.contrib.schedule_free_sgd", {"learning_rate": 1.0, "b1": 0.9},
                 marks=needs_optax, id="optax-schedule-free-sgd"),
]


@pytest.mark.parametrize("native, native_values, reference, values", PARITY)
def test_adapted_optimizers_reproduce_the_native_ones(thermus, native, native_values, reference,
                                                     values):
    expected, _ = run_steps(thermus, native, **native_values)
    got, training = run_steps(thermus, reference, **values)
    assert got.dtype == np.float32 and got.shape == thermus.init.shape
    assert relative(got, expected) < TOLERANCE
    assert relative(expected, thermus.init) > 0.1                  # the comparison is not vacuous
    if native == "schedule-free":
        assert relative(training, expected) > 10 * TOLERANCE      # y is not the scored x


# --- closures ---------------------------------------------------------------------------------

def counting_lbfgs():
    import torch

    class CountingLBFGS(torch.optim.LBFGS):
        """torch's LBFGS, counting the calls of the closure it is given."""
        calls = 0

        def step(self, closure):
            def counted():
                type(self).calls += 1
                return closure()
            return super().step(counted)
    return CountingLBFGS


@needs_torch
def test_every_closure_call_is_charged():
    from cryobench.external import torch_method
    cls = counting_lbfgs()
    opt = torch_method(cls, name="counting-lbfgs").configure(batch_size=20, max_iter=5)
    oracle = QuadraticOracle(budget=3000)
    state = minimize(opt, oracle.initial_point(), oracle, rng_for("lbfgs"))
    assert cls.calls > state["t"] > 1                              # several calls per step
    assert oracle.counts["grad"] == oracle.evaluations == 20 * cls.calls
    assert oracle.suboptimality(opt.iterate(state)) < oracle.suboptimality(oracle.initial_point())


@needs_torch
def test_lbfgs_runs_on_a_task(cylinder):
    out = execute(RunSpec("synthetic-cylinder", "ci", "torch:torch.optim.LBFGS",
                          {"max_iter": 3, "batch_size": 50}, budget=600),
                  cylinder, resolve("torch:torch.optim.LBFGS"))
    assert out.record.status == "ok" and out.record.evaluations == 600
    assert out.trace["test_nll"].iloc[-1] < out.trace["test_nll"].iloc[0]


# --- the evaluation hook ----------------------------------------------------------------------

@needs_schedulefree
def test_schedule_free_is_scored_after_eval_and_left_in_train_mode():
    oracle = QuadraticOracle(budget=5000)
    opt = resolve("torch:schedulefree.AdamWScheduleFree").configure(lr=0.01)
    state = opt.init(oracle.initial_point(), budget=oracle.budget, rng=rng_for("sf"))
    for _ in range(10):
        state = opt.step(state, oracle)
    run = state["torch"]
    training = run.point().copy()
    x = opt.iterate(state)
    assert not np.array_equal(x, training)                        # x (average) differs from y
    assert np.array_equal(run.point(), training)                  # y restored bit for bit
    assert all(group["train_mode"] for group in run.optimizer.param_groups)
    run.optimizer.eval()
    assert np.array_equal(run.point(), x)                         # what .eval() gives
    run.optimizer.train()


@needs_schedulefree
def test_scoring_does_not_change_the_trajectory():
    finals = []
    for score in (False, True):
        oracle = QuadraticOracle(budget=3000)
        opt = resolve("torch:schedulefree.AdamWScheduleFree").configure(lr=0.01)
        state = minimize(opt, oracle.initial_point(), oracle, rng_for("sf"),
                         (lambda st, _: opt.iterate(st)) if score else None)
        finals.append(state["x"])
    assert np.array_equal(*finals)


# --- the accounting cannot be bent -------------------------------------------------------------

def cheating_optimizers():
    import torch

    def real_oracle(view):
        for cell in type(view).value_and_grad.__closure__:
            if hasattr(cell.cell_contents, "audit"):
                return cell.cell_contents
        raise LookupError

    def found(cells, test):
        return next(c.cell_contents for c in cells if test(c.cell_contents))

    class Digger(torch.optim.Optimizer):
        """Finds the view and the step's minibatch in its closure, then evaluates uncharged."""

        def __init__(self, params, lr=0.5):
            super().__init__(params, {"lr": lr})

        def step(self, closure):
            view = found(closure.__closure__, lambda v: hasattr(v, "next_batch"))
            batch = found(closure.__closure__, lambda v: isinstance(v, np.ndarray))
            p = self.param_groups[0]["params"][0]
            _, g = real_oracle(view)._evaluate(p.detach().numpy(), batch, gradient=True)
            with torch.no_grad():
                p -= self.param_groups[0]["lr"] * torch.from_numpy(g)

    class Forger(torch.optim.SGD):
        """Steps, then takes 50 gradient evaluations off the oracle's private ledger."""

        def step(self, closure):
            loss = closure()
            super().step()
            view = found(closure.__closure__, lambda v: hasattr(v, "next_batch"))
            real_oracle(view)._CountedOracle__counts["grad"] -= 50
            return loss

    class FrameWalker(torch.optim.SGD):
        """Given only gradients, walks up the stack to the view and evaluates uncharged."""

        def step(self, closure=None):
            frame = inspect.currentframe()
            while "oracle" not in frame.f_locals:
                frame = frame.f_back
            view = frame.f_locals["oracle"]
            p = self.param_groups[0]["params"][0]
            real_oracle(view)._evaluate(p.detach().numpy(), view.next_batch(100), gradient=True)
            return super().step()
    return {"digger": Digger, "forger": Forger, "frame-walker": FrameWalker}


@needs_torch
@pytest.mark.parametrize("name", ["digger", "forger", "frame-walker"])
def test_cheating_torch_optimizers_end_in_error(cylinder, name):
    from cryobench.external import torch_method
    method = torch_method(cheating_optimizers()[name], name=name)
    out = execute(RunSpec("synthetic-cylinder", "ci", name, {}, budget=400), cylinder, method)
    assert out.record.status == "error"                 # the real oracle is in another process
    assert out.record.message == "LookupError: " and out.record.evaluations <= 400


# --- hyper-parameters ------------------------------------------------------------------------

@needs_torch
def test_hyper_parameters_come_from_the_signature():
    adamw = resolve("torch:torch.optim.AdamW")
    assert adamw.defaults() == {"lr": 1e-3, "betas_0": 0.9, "betas_1": 0.999, "eps": 1e-8,
                                "weight_decay": 0.01, "amsgrad": 0, "maximize": 0,
                                "batch_size": 100}
    assert adamw.hypers["lr"].low == 1e-6 and adamw.hypers["lr"].high == 1e2
    assert [round(v["lr"], 9) for v in candidates(adamw, ["lr"], 9)] == [10.0**k for k in range(-6, 3)]
    with pytest.raises(ValueError, match="--range weight_decay=LOW,HIGH"):
        candidates(adamw, ["weight_decay"], 3)
    assert candidates(adamw, ["weight_decay"], 3, {"weight_decay": (1e-3, 0.1)}) == [
        {"weight_decay": 1e-3}, {"weight_decay": 0.01}, {"weight_decay": 0.1}]   # log: default > 0
    with pytest.raises(ValueError, match="switch: 0 or 1"):
        adamw.configure(amsgrad=2)
    with pytest.raises(ValueError, match="lr must be positive"):
        adamw.configure(lr=0)
    sgd = resolve("torch:SGD")                          # torch.optim.SGD; momentum: float = 0
    assert sgd.configure(momentum=0.9, nesterov=1) is not None
    lbfgs = resolve("torch:torch.optim.LBFGS")
    assert lbfgs.hypers["history_size"].integer and "line_search_fn" not in lbfgs.hypers


@needs_torch
def test_arguments_given_in_python_are_part_of_the_identity():
    import torch

    from cryobench.external import torch_method
    wolfe = torch_method(torch.optim.LBFGS, line_search_fn="strong_wolfe",
                         history_size=Hyper(10, 2, 50, log=False, integer=True))
    assert "line_search_fn='strong_wolfe'" in wolfe.identity and wolfe.defaults()["history_size"] == 10
    plain = resolve("torch:torch.optim.LBFGS")
    assert optimizer_fingerprint(wolfe) != optimizer_fingerprint(plain)
    oracle = QuadraticOracle(budget=2000)
    state = minimize(wolfe.configure(batch_size=50), oracle.initial_point(), oracle, rng_for("w"))
    assert oracle.suboptimality(state["x"]) < oracle.suboptimality(oracle.initial_point())


@needs_optax
def test_required_arguments_and_bad_references_get_one_line():
    with pytest.raises(InputError, match="argument 'eta' has no default"):
        resolve("optax:optax.add_noise")
    with pytest.raises(InputError, match="optax has no nosuch"):
        resolve("optax:optax.nosuch")
    with pytest.raises(InputError, match="not an optax GradientTransformation"):
        resolve("optax:optax.EmptyState")        # a class, callable with no arguments


@needs_torch
def test_a_torch_reference_must_name_an_optimizer_class():
    with pytest.raises(InputError, match="is not a torch.optim.Optimizer class"):
        resolve("torch:torch.nn.Linear")
    with pytest.raises(InputError, match="torch.optim has no Nope"):
        resolve("torch:torch.optim.Nope")


# --- identity ----------------------------------------------------------------------------------

def test_native_fingerprints_are_unchanged():
    for name in ("sgd", "adam", "schedule-free"):
        m = resolve(name)
        source = Path(inspect.getsourcefile(m.factory)).read_text()
        assert optimizer_fingerprint(m) == code_fingerprint(source)


@needs_torch
def test_external_identity_names_library_version_class_and_arguments():
    import torch
    adam = resolve("torch:torch.optim.Adam")
    assert f"torch {torch.__version__}" in adam.identity
    assert "torch.optim.adam.Adam(lr=0.001, betas=(0.9, 0.999)" in adam.identity
    assert optimizer_fingerprint(adam) == optimizer_fingerprint(resolve("torch:torch.optim.Adam"))
    assert optimizer_fingerprint(adam) != optimizer_fingerprint(resolve("torch:torch.optim.AdamW"))
    other = dataclasses.replace(adam, identity=adam.identity.replace(torch.__version__, "9.9"))
    assert optimizer_fingerprint(other) != optimizer_fingerprint(adam)


# --- missing libraries -------------------------------------------------------------------------

@pytest.mark.parametrize("library, reference, message", [
    ("torch", "torch:torch.optim.AdamW",
     "torch:torch.optim.AdamW needs PyTorch: pip install 'cryobench[torch]'"),
    ("optax", "optax:optax.lion", "optax:optax.lion needs JAX and optax: pip install 'cryobench[jax]'"),
])
def test_a_missing_library_is_one_line(monkeypatch, capsys, tmp_path, library, reference, message):
    """(The optimizer is declared in a sandboxed process, with this process's module path: a
    module of that name first on it hides the library there.)"""
    (tmp_path / "hide").mkdir()
    (tmp_path / "hide" / f"{library}.py").write_text(f"raise ImportError('no {library} here')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "hide"))     # `import torch` now fails
    with pytest.raises(InputError) as caught:
        resolve(reference)
    assert str(caught.value) == message
    assert cli(["run", "synthetic-cylinder", reference, "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"cryobench: error: {message}\n"


# --- the command line, grids, tune and the conformance suite --------------------------------

@pytest.mark.parametrize("reference, sets", [
    pytest.param("torch:torch.optim.AdamW", ["lr=3e-4", "weight_decay=0"], marks=needs_torch),
    pytest.param("optax:optax.lion", ["learning_rate=1e-4"], marks=needs_optax),
])
def test_cryobench_run_with_another_librarys_optimizer(tmp_path, data_dir, capsys, reference, sets):
    argv = ["run", "synthetic-cylinder", reference, "--budget", "300", "--tuned", "none",
            "--data-dir", str(data_dir), "--out", str(tmp_path)]
    for s in sets:
        argv += ["--set", s]
    assert cli(argv) == 0
    out = capsys.readouterr().out
    assert "status ok; 300 evaluations" in out
    for s in sets:
        name, value = s.split("=")
        assert f"{name}={float(value):g} (explicit)" in out


@needs_torch
@needs_optax
def test_grid_files_name_external_optimizers(tmp_path, data_dir):
    from cryobench.harness.grid import expand, load_grid
    path = tmp_path / "grid.toml"
    path.write_text('tasks = ["synthetic-cylinder"]\nscales = ["ci"]\nbudget = 200\ntuned = ""\n'
                    'optimizers = ["torch:torch.optim.Adam", "optax:optax.adam"]\n'
                    '[params."torch:torch.optim.Adam"]\nlr = [1e-3, 1e-2]\nbetas_0 = 0.8\n')
    cells = expand(load_grid(path), data_dir)
    assert [c.spec.label for c in cells] == ["torch:torch.optim.Adam betas_0=0.8",
                                             "torch:torch.optim.Adam lr=0.01 betas_0=0.8",
                                             "optax:optax.adam"]
    assert [c.cell for c in expand(load_grid(path), data_dir)] == [c.cell for c in cells]


@needs_torch
def test_tune_an_external_optimizer(tmp_path, data_dir):
    from cryobench.harness.tuning import tune
    chosen = tune(["synthetic-cylinder"], "ci", ["torch:torch.optim.SGD"], ["lr"], points=2,
                  budget=200, out=tmp_path / "tune", record_to=tmp_path / "tuned.json",
                  workers=2, data_dir=data_dir, progress=False, ranges={"lr": (0.1, 1.0)})
    entry = chosen["synthetic-cylinder", "torch:torch.optim.SGD"]
    assert entry["params"]["lr"] in (0.1, 1.0) and entry["searched_ranges"] == {"lr": [0.1, 1.0]}


CONFORMANCE = [pytest.param("torch:torch.optim.Adam", marks=needs_torch),
               pytest.param("torch:schedulefree.AdamWScheduleFree", marks=needs_schedulefree),
               pytest.param("optax:optax.adam", marks=needs_optax)]


@pytest.mark.parametrize("reference", CONFORMANCE)
def test_conformance_suite(reference, data_dir, request):
    """tests/test_conformance.py on adapted optimizers (as ``--optimizer REFERENCE`` does)."""
    m = resolve(reference)
    conformance.test_converges_on_an_ill_conditioned_quadratic_without_nan(m)
    conformance.test_state_shapes_and_dtypes_are_stable(m)
    conformance.test_same_seed_same_iterates_and_budget_respected(m)
    for task in ("synthetic-cylinder", "thermus-style"):
        conformance.test_improves_the_test_nll_on_ci_tasks(m, task, data_dir, request)


@needs_torch
def test_an_external_cell_records_its_library_and_verify_says_which(tmp_path, data_dir, capsys):
    """The cell's identity names the library and its version, the class and its arguments;
    verify recomputes it bit for bit and says which library version ran."""
    import json
    grid = tmp_path / "grid.toml"
    grid.write_text('tasks = ["thermus-style"]\nscales = ["ci"]\noptimizers = ["torch:torch.optim.Adam"]\n'
                    'budget = 300\ntuned = ""\n')
    assert cli(["grid", str(grid), "--data-dir", str(data_dir), "--quiet"]) == 0
    meta = json.loads(next(tmp_path.glob("cells/*/meta.json")).read_text())
    library = meta["identity"]["library"]
    assert library.startswith("torch 2.") and "torch.optim.adam.Adam(lr=0.001" in library
    capsys.readouterr()
    assert cli(["verify", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "[torch 2." in out and "bit-identical" in out
