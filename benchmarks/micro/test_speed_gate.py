"""The speed gate has teeth: a kernel made twice as slow fails it (a timing check, so it lives
here, outside the unit tests).

    pytest benchmarks/micro/test_speed_gate.py       (~1 min; skipped under --benchmark-only)

A fresh reference is measured in this process first (the committed one belongs to the machine
that made it); then ``Likelihood.nll_and_grad`` is monkeypatched to do its work twice, and
``cryobench speed-gate`` must fail naming both tasks; unpatched, it must pass.
"""
import io

from cryobench.model.likelihood import Likelihood
from cryobench.checks.speedgate import speed_gate


def test_a_kernel_twice_as_slow_fails_the_speed_gate(tmp_path, bench_data_dir, monkeypatch):
    reference = tmp_path / "speed.json"
    assert speed_gate(reference, update=True, data_dir=bench_data_dir, out=io.StringIO()) == 0

    buf = io.StringIO()
    assert speed_gate(reference, data_dir=bench_data_dir, out=buf) == 0, buf.getvalue()

    original = Likelihood.nll_and_grad

    def twice(self, volume, data):
        original(self, volume, data)
        return original(self, volume, data)

    monkeypatch.setattr(Likelihood, "nll_and_grad", twice)
    buf = io.StringIO()
    assert speed_gate(reference, data_dir=bench_data_dir, out=buf) == 1, buf.getvalue()
    last = buf.getvalue().strip().splitlines()[-1]
    assert last.startswith("speed-gate: FAILED: synthetic-cylinder kernel")
    assert "thermus-style kernel" in last
    print(buf.getvalue())
