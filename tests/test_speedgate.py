"""`cryobench speed-gate` logic without timing anything: the verdict from given ratios, the
committed reference's form, and one-line errors (the 2× check is benchmarks/micro/test_speed_gate.py)."""
import json

import pytest

from cryobench import cli
from cryobench.checks.speedgate import DEFAULT_REFERENCE, compare, load_reference, speed_gate
from cryobench.errors import InputError


def _m(ratio):
    return {"time_ratio": ratio, "q25": ratio, "q75": ratio, "pairs": 60, "calls": 4,
            "kernel_ms": 2 * ratio, "gemm_ms": 2.0}


def test_verdict_from_the_ratio_of_ratios():
    ref = {"results": {"a": {"time_ratio": 2.0}, "b": {"time_ratio": 2.0},
                       "c": {"time_ratio": 2.0}, "d": {"time_ratio": 2.0}}}
    now = {"a": _m(2.0 * 1.39), "b": _m(2.0 * 1.41), "c": _m(4.0), "d": _m(1.0)}
    found = {f["task"]: f for f in compare(now, ref, tolerance=1.4)}
    assert found["a"]["verdict"] == "ok" and found["a"]["slowdown"] == pytest.approx(1.39)
    assert found["b"]["verdict"] == "slower"
    assert found["c"]["verdict"] == "slower" and "2.00× (limit 1.40×)" in found["c"]["text"]
    assert found["d"]["verdict"] == "faster"


def test_the_committed_reference_is_well_formed():
    ref = load_reference(DEFAULT_REFERENCE)
    assert ref["config"]["tasks"] == ["synthetic-cylinder", "thermus-style"]
    assert ref["config"]["threads"] == 1 and ref["config"]["tolerance"] > 1
    for entry in ref["results"].values():
        assert entry["q25"] <= entry["time_ratio"] <= entry["q75"]


def test_missing_reference_is_one_clear_line(tmp_path, capsys):
    missing = tmp_path / "speed.json"
    assert cli.main(["speed-gate", "--reference", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cryobench: error: {missing}: speed reference not found; make it with "
                   f"`cryobench speed-gate --update --reference {missing}`"]


def test_bad_references_and_flags(tmp_path):
    ref = json.loads(DEFAULT_REFERENCE.read_text())
    path = tmp_path / "speed.json"
    ref["results"]["thermus-style"]["time_ratio"] = -1
    path.write_text(json.dumps(ref))
    with pytest.raises(InputError, match=r"results.thermus-style.time_ratio must be a positive"):
        load_reference(path)
    del ref["results"]["thermus-style"]
    path.write_text(json.dumps(ref))
    with pytest.raises(InputError, match="do not cover the config's tasks"):
        load_reference(path)
    with pytest.raises(InputError, match="--task and --scale go with --update"):
        speed_gate(DEFAULT_REFERENCE, scale="ci")
