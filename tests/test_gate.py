"""The quality gate (`cryobench gate`): passes on this tree, fails on a weakened, crashing or
diverging optimizer naming it, reports new methods, and refuses a missing reference in one line."""
import io
import json
import re

import numpy as np
import pytest

from cryobench import cli
from cryobench.checks.gate import DEFAULT_REFERENCE, compare, gate, load_reference
from cryobench.errors import InputError
from cryobench.harness.registry import OPTIMIZERS_DIR, discover
from cryobench.optim import GradientMethod, Hyper, method


def _run(**kw):
    buf = io.StringIO()
    code = gate(out=buf, **kw)
    return code, buf.getvalue()


@pytest.fixture(scope="module")
def small_reference(tmp_path_factory, data_dir):
    """A quick reference of plain SGD: one task, 3 seeds, 300 evaluations."""
    path = tmp_path_factory.mktemp("gate") / "reference.json"
    code, _ = _run(methods={"sgd": discover()["sgd"]}, reference=path, update=True, budget=300,
                   seeds=3, tasks=["synthetic-cylinder"], data_dir=data_dir)
    assert code == 0
    return path


@pytest.mark.slow
def test_gate_passes_on_this_tree(data_dir):
    code, text = _run(data_dir=data_dir)
    assert code == 0, text
    assert text.strip().splitlines()[-1].startswith("gate: passed")
    assert "WORSE" not in text and "BROKEN" not in text
    assert len([l for l in text.splitlines() if l.startswith("ok ")]) >= 24


def test_weakened_sgd_fails_named_with_its_size_in_noise_units(tmp_path, data_dir):
    """A copy of optimizers/sgd.py whose step is scaled by 0.1, in a tmp optimizers folder,
    against the committed reference."""
    source = (OPTIMIZERS_DIR / "sgd.py").read_text()
    step = 'x = state["x"] - annealed_lr(lr, state["t"], decay) * g'
    assert step in source
    (tmp_path / "sgd.py").write_text(source.replace(step, step.replace("- ", "- 0.1 * ")))
    weak = discover(tmp_path)
    code, text = _run(methods={"sgd": weak["sgd"]}, data_dir=data_dir)
    assert code == 1
    ref = load_reference(DEFAULT_REFERENCE)
    for task in ("synthetic-cylinder", "thermus-style"):
        line = next(l for l in text.splitlines() if l.startswith("WORSE") and task in l)
        assert " sgd " in line and "code changed" in line
        z = float(re.search(r"([+-][\d.]+) noise", line).group(1))
        median = float(re.search(r"median ([\d.]+) vs", line).group(1))
        r = ref["entries"][task]["sgd"]
        assert z == pytest.approx((median - r["median"]) / r["noise"], abs=0.02)
        assert z > 10                          # far beyond the limit of 2
    last = text.strip().splitlines()[-1]
    assert last.startswith("gate: FAILED: sgd on synthetic-cylinder worse by")
    assert "sgd on thermus-style worse by" in last
    assert "in the reference but not registered: adagrad" in text


def test_gate_against_its_own_reference_passes_and_reports_new_methods(small_reference, data_dir):
    sgd = discover()["sgd"]
    twin = method(name="sgd-twin", **sgd.hypers)(lambda lr, decay, batch_size:
                                                  sgd.factory(lr, decay, batch_size))
    code, text = _run(methods={"sgd": sgd, "sgd-twin": twin}, reference=small_reference,
                      data_dir=data_dir)
    assert code == 0, text
    assert re.search(r"^ok\s+synthetic-cylinder\s+sgd .*\+0\.00 noise", text, re.M)
    assert "NEW" in text and "new methods without a reference (not a failure): sgd-twin" in text


@method(name="sgd", lr=Hyper(1.0, 1e-3, 1e2))
def _crashing(lr):
    def init(x0, *, budget, rng):
        return {"x": x0.copy(), "t": 0}

    def step(state, oracle):
        oracle.value_and_grad(state["x"], oracle.next_batch(100))
        if state["t"] == 1:
            raise FloatingPointError("deliberate")
        return {"x": state["x"], "t": state["t"] + 1}
    return GradientMethod(init, step)


@method(name="sgd", lr=Hyper(1.0, 1e-3, 1e2))
def _diverging(lr):
    def init(x0, *, budget, rng):
        return {"x": x0.copy()}

    def step(state, oracle):
        _, g = oracle.value_and_grad(state["x"], oracle.next_batch(100))
        return {"x": state["x"] + np.float32(np.inf) * g}
    return GradientMethod(init, step)


@pytest.mark.parametrize("broken,word", [(_crashing, "error: FloatingPointError: deliberate"),
                                          (_diverging, "diverged: iterate not finite")])
def test_an_erroring_or_diverging_method_fails_named(small_reference, data_dir, broken, word):
    code, text = _run(methods={"sgd": broken}, reference=small_reference, data_dir=data_dir)
    assert code == 1
    line = next(l for l in text.splitlines() if l.startswith("BROKEN"))
    assert "sgd" in line and f"seed 0 {word}" in line and "seed 2" in line
    assert text.strip().splitlines()[-1] == ("gate: FAILED: sgd on synthetic-cylinder errored "
                                             "or diverged")


def test_missing_reference_is_one_clear_line(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "reference.json"
    assert cli.main(["gate", "--reference", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"cryobench: error: {missing}: gate reference not found")


def test_malformed_reference_and_misused_flags(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="bad.json: not a readable JSON"):
        load_reference(bad)
    bad.write_text(json.dumps({"schema": 1, "config": {}, "entries": {}}))
    with pytest.raises(InputError, match="config has no 'tasks'"):
        load_reference(bad)
    with pytest.raises(InputError, match="--budget and --seeds go with --update"):
        gate(methods={}, reference=bad, budget=100)


def _entry(finals, code="c"):
    finals = list(finals)
    ok = [f for f in finals if f is not None]
    return {"finals": finals, "status": ["ok" if f is not None else "diverged" for f in finals],
            "messages": [""] * len(finals), "code": code,
            "median": float(np.median(ok)) if ok else None,
            "noise": float(np.ptp(ok)) if ok else None}


def test_compare_scales_by_the_seed_range_with_a_floor():
    ref = {"entries": {"t": {"a": _entry([100.0, 101.0, 102.0]),      # median 101, range 2
                             "b": _entry([1000.0] * 3),               # no spread: the floor
                             "c": _entry([50.0, 51.0]),
                             "d": _entry([10.0, None])}}}
    now = {"t": {"a": _entry([104.0, 105.0, 106.0]),                  # +4 = 2 ranges: not > 2
                 "b": _entry([1000.0 + 5e-4] * 3),                    # 5e-4 / (1e-5·1000) = 0.05
                 "c": _entry([40.0, 41.0]),                           # better by 10 ranges
                 "d": _entry([None, None])}}                          # seed 0 ok → diverged
    found = {f["method"]: f for f in compare(now, ref, k=2.0, floor=1e-5)}
    assert found["a"]["z"] == pytest.approx(2.0) and found["a"]["verdict"] == "ok"
    assert found["b"]["z"] == pytest.approx(0.05) and "floor" in found["b"]["text"]
    assert found["c"]["verdict"] == "better" and found["c"]["z"] == pytest.approx(-10)
    assert found["d"]["verdict"] == "status" and "seed 0 diverged" in found["d"]["text"]
    now["t"]["a"] = _entry([104.1, 105.1, 106.1])
    assert {f["method"]: f for f in compare(now, ref, 2.0, 1e-5)}["a"]["verdict"] == "worse"
