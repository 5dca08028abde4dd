"""Schedules against the paper's formulas; hyper-parameter declaration; the registry."""
import math
import subprocess
import sys

import pytest

from cryobench.harness.registry import discover, resolve
from cryobench.optim import GradientMethod, Hyper, method
from cryobench.schedules import annealed_lr, sutskever_momentum

PAPER_METHODS = {"sgd", "momentum", "nesterov", "adagrad", "tonga", "olbfgs", "hessian-free"}


def test_annealed_learning_rate_matches_the_paper():
    assert annealed_lr(2.0, 0) == 2.0
    assert annealed_lr(2.0, 100) == pytest.approx(2.0 * 2.0 ** -0.75)     # (1 + 0.01·100)^−0.75
    assert annealed_lr(1.0, 300, decay=0.1) == pytest.approx(31.0 ** -0.75)


@pytest.mark.parametrize("t, expected", [(0, 0.5), (99, 0.5), (100, 0.75), (299, 5 / 6),
                                         (300, 0.875), (700, 0.9), (10**6, 0.9)])
def test_momentum_schedule_matches_sutskever(t, expected):
    # μ_t = min{0.9, 1 − 2^(−1 − log2(⌊t/100⌋ + 1))} = min{0.9, 1 − 1 / (2(⌊t/100⌋ + 1))}
    assert sutskever_momentum(t) == pytest.approx(min(0.9, 1 - 2 ** (-1 - math.log2(t // 100 + 1))))
    assert sutskever_momentum(t) == pytest.approx(expected)


def test_paper_methods_are_registered_with_docstrings():
    found = discover()
    assert PAPER_METHODS <= set(found)
    for m in found.values():
        assert m.doc, m.name
        for name, h in m.hypers.items():
            assert h.low <= h.default <= h.high, (m.name, name)


def test_unknown_hyper_parameter_and_optimizer_are_one_line_errors():
    with pytest.raises(ValueError, match="has no hyper-parameter 'eta'; known: lr, decay, batch_size"):
        resolve("sgd").configure(eta=1.0)
    with pytest.raises(ValueError, match="unknown optimizer 'sgdd'; known: .*sgd"):
        resolve("sgdd")
    with pytest.raises(ValueError, match="must be a number"):
        resolve("sgd").configure(lr="fast")


def test_declared_arguments_must_match_the_factory():
    with pytest.raises(TypeError, match="differ from the declared"):
        @method(lr=Hyper(1.0, 0.1, 10.0))
        def broken(lr, momentum):
            return GradientMethod(None, None)


def test_cli_lists_optimizers_with_defaults():
    out = subprocess.run([sys.executable, "-m", "cryobench.cli", "list"], capture_output=True,
                         text=True, check=True).stdout
    assert "optimizers:" in out and "sgd" in out and "lr=1" in out and "batch_size=100" in out


def test_readme_example_is_the_tested_file():
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    code = (root / "docs/examples/rmsprop.py").read_text()
    assert len(code.splitlines()) <= 30 and code in (root / "README.md").read_text()
    assert resolve(str(root / "docs/examples/rmsprop.py") + ":rmsprop").name == "rmsprop"


def test_installed_packages_register_through_the_entry_point_group(monkeypatch, tmp_path):
    from importlib.metadata import EntryPoint

    import cryobench.harness.registry as registry

    (tmp_path / "plugin_pkg.py").write_text(
        "from cryobench.optim import GradientMethod, Hyper, method\n\n\n"
        "@method(lr=Hyper(0.5, 0.1, 1.0))\ndef plugin_sgd(lr):\n    \"\"\"A plugin.\"\"\"\n"
        "    return GradientMethod(None, None)\n")
    monkeypatch.syspath_prepend(str(tmp_path))           # the sandboxed import's path too

    def fake_entry_points(group):
        assert group == "cryobench.optimizers"
        return [EntryPoint("plugin", "plugin_pkg:plugin_sgd", group)]

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    found = registry.resolve("plugin-sgd")
    assert found.name == "plugin-sgd" and found.doc == "A plugin."
    assert "plugin_pkg" not in sys.modules                # declared without importing it here
    assert found.load().factory.__module__ == "plugin_pkg"
    assert "sgd" in registry.discover()           # the folder's methods are still there
