"""No optimizer code runs in the harness's process, not even its import (issue 28): the registry
reads declarations from a sandboxed process; a run's optimizer process imports the method from
its reference. A file whose top-level code patches the scorer, writes a file or reads the
dataset cache changes nothing here."""
import subprocess
import sys
from pathlib import Path

import pytest

import cryobench.harness.run as run_module
from cryobench.cli import main
from cryobench.harness import declared as declared_module
from cryobench.harness import isolation
from cryobench.harness.declared import Declared, load_file
from cryobench.harness.fingerprint import optimizer_fingerprint
from cryobench.harness.plan import Planner
from cryobench.harness.record import RunSpec
from cryobench.harness.registry import OPTIMIZERS_DIR, resolve, scan
from cryobench.harness.results import load_results
from cryobench.harness.run import execute

SGD = (OPTIMIZERS_DIR / "sgd.py").read_text()

PATCH = '''
import os

import cryobench.harness.run as _run
from cryobench.optim import GradientMethod, Hyper, method

_run._Scorer.__call__ = lambda self, x: (1.0, 1.0)      # "final test NLL 1"
try:
    with open({marker!r}, "w") as fh:
        fh.write("imported beside the data")
except OSError:
    pass
try:
    os.listdir({data!r})
    READ = "read"
except OSError as exc:
    READ = type(exc).__name__


def _report(unused):
    def step(state, oracle):
        raise RuntimeError(f"read={{READ}}")
    return GradientMethod(lambda x0, *, budget, rng: {{"x": x0.copy()}}, step)


_report.__doc__ = f"read={{READ}}"
report = method(name="report", unused=Hyper(1.0, 0.5, 2.0))(_report)
'''


@pytest.fixture
def files(tmp_path, data_dir, monkeypatch):
    """honest.py (the shipped SGD) and patched.py (the same plus a patching header), and the
    marker the header writes; $CRYOBENCH_DATA is the test's dataset cache."""
    monkeypatch.setenv("CRYOBENCH_DATA", str(data_dir))
    marker = tmp_path / "marker"
    honest, patched = tmp_path / "honest.py", tmp_path / "patched" / "patched.py"
    patched.parent.mkdir()
    honest.write_text(SGD)
    patched.write_text(PATCH.format(marker=str(marker), data=str(data_dir)) + SGD)
    return honest, patched, marker


def test_the_patch_works_where_the_file_is_imported(files):
    """Control: imported in a process (as the harness did), the header patches the scorer and
    writes the marker, so the tests below can fail."""
    _, patched, marker = files
    code = (f"import cryobench.harness.run as r; from cryobench.harness.declared import "
            f"load_file; load_file({str(patched)!r}); print(r._Scorer.__call__(None, 0))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(1.0, 1.0)" and marker.exists()


def _spec(optimizer, budget=400):
    return RunSpec("synthetic-cylinder", "ci", optimizer, {}, budget=budget)


def test_a_patching_file_in_an_optimizers_folder_changes_nothing_here(cylinder, data_dir, files):
    honest, patched, marker = files
    scorer = run_module._Scorer.__call__
    reg = scan(patched.parent)
    assert set(reg.methods) == {"sgd", "report"} and not reg.broken
    assert run_module._Scorer.__call__ is scorer and not marker.exists()
    assert reg.methods["report"].doc == "read=PermissionError"          # the declaring import
    assert "cryobench_optimizers.patched" not in sys.modules
    mine = execute(_spec("sgd"), cylinder, reg.methods["sgd"], compare=False)
    reference = execute(_spec(f"{honest}:sgd"), cylinder, resolve(f"{honest}:sgd"), compare=False)
    assert mine.record.status == "ok" and mine.trace["test_nll"].iloc[-1] != 1.0
    assert mine.trace["test_nll"].equals(reference.trace["test_nll"])
    assert run_module._Scorer.__call__ is scorer and not marker.exists()
    report = execute(_spec("report"), cylinder, reg.methods["report"], compare=False)
    assert report.record.status == "error"
    assert report.record.message in ("RuntimeError: read=PermissionError",   # the run's import
                                     "RuntimeError: read=FileNotFoundError")  # (private /tmp)


def test_a_data_dir_given_to_the_plan_is_unreadable_by_the_declaring_import(tmp_path, files):
    """A dataset folder named with --data-dir (not $CRYOBENCH_DATA) is hidden from the process
    that imports an optimizer's file for its declaration, as the caches are; without it named,
    the same import reads it (control)."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    spy = tmp_path / "spy.py"
    spy.write_text(PATCH.format(marker=str(tmp_path / "m"), data=str(folder)) + SGD)
    assert resolve(f"{spy}:report").doc == "read=read"
    assert Planner(data_dir=folder).optimizer(f"{spy}:report").doc == "read=PermissionError"


def test_cryobench_run_of_a_patching_file_changes_nothing(tmp_path, data_dir, files, capsys):
    honest, patched, marker = files
    finals = {}
    for path in (honest, patched):
        out = tmp_path / f"runs-{path.stem}"
        assert main(["run", "synthetic-cylinder", f"{path}:sgd", "--scale", "ci", "--budget",
                     "200", "--out", str(out), "--data-dir", str(data_dir)]) == 0
        cells = load_results(out).cells
        assert list(cells.status) == ["ok"]
        finals[path.stem] = float(cells.final_nll.iloc[0])
    assert finals["patched"] == finals["honest"] != 1.0
    assert not marker.exists()


def test_an_import_error_is_one_line_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("import numpy\n\nraise RuntimeError('boom at import')\n")
    assert main(["run", "synthetic-cylinder", f"{bad}:x", "--scale", "ci"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad}:3: RuntimeError: boom at import" in err[0], err


def test_an_import_that_never_ends_is_an_error(tmp_path, monkeypatch):
    slow = tmp_path / "slow.py"
    slow.write_text("while True:\n    pass\n")
    monkeypatch.setattr(isolation, "DECLARE_TIMEOUT", 1.0)
    with pytest.raises(ValueError, match=r"slow.py:x: importing it took more than 1 s"):
        resolve(f"{slow}:x")


@pytest.mark.parametrize("name", sorted(p.stem for p in OPTIMIZERS_DIR.glob("*.py")))
def test_a_declaration_says_what_the_import_here_said(name):
    """Name, hyper-parameters, docstring and fingerprint of each shipped optimizer, declared in
    the sandbox, equal those of the module imported in this process."""
    here = [m for m in vars(load_file(OPTIMIZERS_DIR / f"{name}.py")).values()
            if type(m).__name__ == "Method"]
    reg = scan()
    for m in here:
        d = reg.methods[m.name]
        assert isinstance(d, Declared) and d.reference["kind"] == "file"
        assert (d.name, d.hypers, d.doc, d.defaults()) == (m.name, m.hypers, m.doc, m.defaults())
        assert optimizer_fingerprint(d) == optimizer_fingerprint(m) != "unknown"


def test_an_external_declaration_says_what_the_adapter_here_said():
    pytest.importorskip("torch")
    from cryobench import external
    d, m = resolve("torch:torch.optim.AdamW"), external.resolve("torch:torch.optim.AdamW")
    assert isinstance(d, Declared) and d.reference == {"kind": "external", "attr": None,
                                                       "where": "torch:torch.optim.AdamW"}
    assert (d.name, d.doc, d.identity) == (m.name, m.doc, m.identity)
    assert repr(d.hypers) == repr(m.hypers)                 # classes too; NaN ≠ NaN in ==
    assert optimizer_fingerprint(d) == optimizer_fingerprint(m)


def test_load_imports_here_and_configure_uses_it(files):
    """For tests and notebooks: ``load`` imports the declared method in this process."""
    honest, _, _ = files
    d = resolve(f"{honest}:sgd")
    assert d.load() is d.load() and d.load().name == "sgd"
    assert d.configure(lr=0.5) is not None
    assert declared_module.describe(d.reference) == f"{Path(honest).absolute()}:sgd"


@pytest.mark.parametrize("change, message", [
    ("raise RuntimeError('boom in the run')\n", "honest.py:{line}: RuntimeError: boom in the run"),
    ("sgd = method(name='other', lr=Hyper(1.0, 0.1, 10.0))(lambda lr: None)\n",
     "declares 'other' here, 'sgd' in the harness's registry"),
])
def test_the_runs_process_imports_the_file_itself(cylinder, files, change, message):
    """The optimizer's process imports the method from its reference (not an object sent by
    the harness): a file changed after it was declared fails there, as the run's error."""
    honest, _, _ = files
    d = resolve(f"{honest}:sgd")
    honest.write_text(SGD + "from cryobench.optim import Hyper, method\n" + change)
    out = execute(_spec(f"{honest}:sgd", budget=200), cylinder, d, compare=False)
    line = len(SGD.splitlines()) + 2                       # the line of the raise
    assert out.record.status == "error"
    assert message.format(line=line) in out.record.message, out.record.message
