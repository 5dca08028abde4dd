"""The same answers on every machine: a task's data and initial density, and the leaderboard,
do not depend on the BLAS kernel, NumPy's SIMD dispatch, libm or the thread count.

Each check runs the work in fresh processes under different settings of one machine:
OpenBLAS's kernel (``OPENBLAS_CORETYPE``: the CPU's own against Sandybridge, AVX without FMA),
NumPy's dispatch (``NPY_DISABLE_CPU_FEATURES``: every dispatched target this CPU has, so NumPy
runs its baseline build of exp, log, sin…), glibc's FMA builds of libm (``GLIBC_TUNABLES``) and
numba's thread count; and compares bits.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cryobench.report.figures import result_sets

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"

# where OpenBLAS's x86-64 kernels and glibc's tunables can be switched (the restricted environment)
X86_64_LINUX = sys.platform == "linux" and os.uname().machine == "x86_64"

# What this code simulates for thermus-style at the ci scale (shifts, outliers and junk
# particles, so every path of the simulator): the task content hash (it covers the SHA-256
# manifest of the dataset's files) and the SHA-256 of the initial density. A change of either
# is a change of the data every cell is computed from: bump the simulator's or the task's
# FORMAT_VERSION, and pin the new values.
PINNED = {"thermus-style": {
    "content": "714c4153feadaba5f3acf728e5740388aa36c03600be2d03db94283c2d466a8f",
    "init": "21b90c85c0def144c7f0be0ee90a7bae81d431169e7ae0e42b060245ad9233f7",
}}


def _dispatched() -> list[str]:
    """NumPy's dispatched SIMD targets that this CPU has (disabling them all leaves NumPy's
    baseline build)."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:                                    # NumPy 1.x
        from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    return [f for f in __cpu_dispatch__ if __cpu_features__.get(f)]


def _settings() -> dict[str, dict]:
    """Two environments: the machine as it is, and another BLAS kernel with NumPy's dispatch
    and glibc's FMA builds of libm switched off and one numba thread."""
    other = {"OPENBLAS_CORETYPE": "Sandybridge", "NUMBA_NUM_THREADS": "1",
             "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2,-FMA,-AVX512F"}
    if _dispatched():
        other["NPY_DISABLE_CPU_FEATURES"] = " ".join(_dispatched())
    return {"native": {}, "restricted": other}


def _env(extra: dict) -> dict:
    drop = ("OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES", "GLIBC_TUNABLES", "NUMBA_NUM_THREADS")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


_TASK = """
import hashlib, json, sys
import numpy as np
from cryobench.task import load_task
task = load_task(sys.argv[1], "ci", data_dir=sys.argv[2], progress=False)
x = np.linspace(-30.0, 30.0, 100_001)
print(json.dumps({
    "content": task.content_hash,
    "init": json.loads((task.derived_dir / "init.json").read_text())["sha256"],
    "manifest": json.loads((task.dataset.directory / "manifest.json").read_text()),
    "numpy_exp": hashlib.sha256(np.exp(x).tobytes() + np.exp(x.astype(np.float32)).tobytes()
                                + np.sin(x.astype(np.float32)).tobytes()).hexdigest()}))
"""


@pytest.mark.skipif(not X86_64_LINUX,
                    reason="OpenBLAS's x86-64 kernels and glibc's tunables")
@pytest.mark.parametrize("name", ["thermus-style"])
def test_a_simulated_task_has_the_same_bits_under_any_blas_kernel_simd_and_libm(name, tmp_path):
    """The dataset (its content hash) and the initial density (its SHA-256), each made in a
    fresh process with its own empty cache, are the same in both environments and are the
    pinned values."""
    out = {}
    for label, extra in _settings().items():
        done = subprocess.run([sys.executable, "-c", _TASK, name, str(tmp_path / label)],
                              env=_env(extra), capture_output=True, text=True, check=True)
        out[label] = json.loads(done.stdout.strip().splitlines()[-1])
    native, restricted = out["native"], out["restricted"]
    if _dispatched():              # the environment did change NumPy's numerics
        assert native["numpy_exp"] != restricted["numpy_exp"]
    assert restricted["manifest"] == native["manifest"]
    assert restricted["content"] == native["content"]
    assert restricted["init"] == native["init"]
    assert native["content"] == PINNED[name]["content"]
    assert native["init"] == PINNED[name]["init"]


_LEADERBOARD = """
import sys
from pathlib import Path
from cryobench.report.figures import result_sets, write_leaderboard
root = Path(sys.argv[1])
for path in write_leaderboard(root):
    print(path.relative_to(root))
"""


def _other_platform() -> dict:
    """The restricted environment where this machine has one (OpenBLAS's x86-64 kernels and
    glibc's tunables), else the machine as it is."""
    return _settings()["restricted"] if X86_64_LINUX else {}


@pytest.mark.slow
def test_committed_leaderboard_is_regenerated_byte_for_byte_under_another_platform(tmp_path):
    """``cryobench leaderboard`` of the committed results, run in the restricted environment,
    writes exactly the committed LEADERBOARD.md, .html and figures, and no committed figure is
    left over: the committed leaderboard is what the committed results make, on any machine."""
    sets = result_sets(RESULTS)
    assert "paper-small" in sets, "the small-scale comparison's results are not committed"
    copy = tmp_path / "results"
    for name in sets:
        shutil.copytree(RESULTS / name, copy / name, ignore=shutil.ignore_patterns("*.mrc"))
    done = subprocess.run([sys.executable, "-c", _LEADERBOARD, str(copy)],
                          env=_env(_other_platform()), capture_output=True, text=True, check=True)
    written = done.stdout.split()
    assert "LEADERBOARD.md" in written and any(w.startswith("figures/") for w in written)
    differ = [w for w in written if not (RESULTS / w).is_file()
              or (copy / w).read_bytes() != (RESULTS / w).read_bytes()]
    extra = sorted({str(p.relative_to(RESULTS)) for p in (RESULTS / "figures").glob("*")}
                   - set(written))
    assert not differ and not extra, (
        f"written differently under {_other_platform() or 'this machine'}: {differ or extra}. "
        "If `cryobench leaderboard` rewrites them here too, the committed leaderboard is stale: "
        "commit what it writes; if not, what it draws depends on the platform")


# ------------------------------------------------------------- the portable functions themselves

def _ulps(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.spacing(np.maximum(np.abs(b), 1e-300))))


def test_portable_elementary_functions_are_within_a_few_ulp():
    from cryobench.base import portable as P
    rng = np.random.default_rng(0)
    x = rng.uniform(-700.0, 700.0, 20_000)
    assert _ulps(P.exp_array(x), np.exp(x)) <= 2 and P.exp(0.0) == 1.0
    assert P.exp(-800.0) == 0.0 and P.exp(800.0) == np.inf
    t = rng.uniform(-40.0, 40.0, 20_000)
    s, c = P.sincos_turns_array(t)
    reduced = 2 * np.pi * (t - np.rint(t))                   # exact reduction, then NumPy
    assert np.abs(s - np.sin(reduced)).max() < 4e-16 and np.abs(c - np.cos(reduced)).max() < 4e-16
    assert P.sincos_turns(0.25) == (1.0, 0.0) and P.sincos_turns(-0.5) == (0.0, -1.0)
    y = rng.uniform(0.0, 1.0, 20_000) * 10.0 ** rng.integers(-300, 300, 20_000)
    assert _ulps(P.log_array(y, np.e), np.log(y)) <= 2
    assert _ulps(P.log_array(y, 10.0), np.log10(y)) <= 4
    assert np.array_equal(P.log_array(2.0 ** np.arange(-9, 10.0), 2.0), np.arange(-9, 10.0))
    assert np.array_equal(P.power_array(2.0, np.arange(-9, 10.0)), 2.0 ** np.arange(-9, 10.0))
    for v in (0.0, 0.07, 0.5, 1.0, 3.0, 1e6):
        assert P.atan(v) == pytest.approx(np.arctan(v), rel=1e-15, abs=0)
        assert P.cbrt(v) == pytest.approx(np.cbrt(v), rel=3e-16, abs=0)


@pytest.mark.parametrize("box", [24, 47, 48, 49, 128])
def test_portable_inverse_fft_equals_scipy(box):
    from scipy import fft as sfft

    from cryobench.base.portable import irfft2_centred
    rng = np.random.default_rng(box)
    spectra = rng.normal(size=(2, box, box // 2 + 1)) + 1j * rng.normal(size=(2, box, box // 2 + 1))
    ref = sfft.fftshift(sfft.irfft2(spectra, s=(box, box), norm="ortho"), axes=(-2, -1))
    assert np.abs(irfft2_centred(spectra) - ref).max() < 1e-14 * np.abs(ref).max()


def test_portable_ctf_is_evaluate_ctf():
    from cryobench.data.render import portable_ctf
    from cryobench.model.ctf import CTFParams, evaluate_ctf
    rng = np.random.default_rng(1)
    n = 20
    ctf = CTFParams(rng.uniform(1e4, 4e4, n), rng.uniform(1e4, 4e4, n), rng.uniform(0, 180, n),
                    300.0, 2.7, rng.uniform(0.05, 0.2, n), rng.uniform(0, 90, n),
                    rng.uniform(0, 100, n))
    fx, fy = rng.uniform(-0.2, 0.2, 200), rng.uniform(-0.2, 0.2, 200)
    fx[0] = fy[0] = 0.0
    assert np.abs(portable_ctf(ctf, fx, fy) - evaluate_ctf(ctf, fx, fy)).max() < 1e-12


def test_the_portable_init_is_the_probed_one_up_to_rounding(ci_task):
    """:mod:`cryobench.data.initial` computes what ``random_spheres`` and ``match_power`` (which
    the numerics fingerprint probes) compute, up to their float32/ulp-level rounding."""
    from cryobench.base.seeding import rng_for
    from cryobench.data.initial import power_scale, spheres
    from cryobench.task import match_power, random_spheres
    task, lik, data = ci_task, ci_task.likelihood, ci_task.dataset
    args = (lik.box, data.pixel_size, data.particle_radius)
    rest = (30, 0.1, 0.3)
    new = spheres(*args, rng_for(task.name, task.spec.seed, "init"), *rest)
    old = random_spheres(*args, rng_for(task.name, task.spec.seed, "init"), *rest)
    assert np.abs(new - old).max() < 1e-6 * old.max()
    train = task.splits["train"][:2000]
    a = power_scale(new, lik, data.images[train], data.ctf.subset(train), data.sigma[train])
    assert a == pytest.approx(match_power(old, lik, lik.subset(task.spectra, train)), rel=1e-5)
    assert np.array_equal(task.init, new * np.float32(a))        # init.mrc is this


_CODE = """
import json
from cryobench.harness.fingerprint import numerics_code_digest, numerics_fingerprint
print(json.dumps({"code": numerics_code_digest(), "numerics": numerics_fingerprint()}))
"""


@pytest.mark.skipif(not X86_64_LINUX,
                    reason="OpenBLAS's x86-64 kernels and glibc's tunables")
def test_the_numerics_code_digest_names_the_code_the_same_way_on_every_platform():
    """A cell's identity records two names of the numerical code: its fingerprint by behaviour,
    which another BLAS kernel, SIMD dispatch or libm changes, and its code digest, which they do
    not (a grid resumed on another CPU can tell a cell of the same code by it)."""
    out = {}
    for label, extra in _settings().items():
        done = subprocess.run([sys.executable, "-c", _CODE], env=_env(extra), capture_output=True,
                              text=True, check=True)
        out[label] = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["native"]["code"] == out["restricted"]["code"]
    assert out["native"]["numerics"] != out["restricted"]["numerics"]


def test_the_numerics_code_digest_ignores_docstrings_and_sees_code(tmp_path, monkeypatch):
    """The digest reads the modules' code without comments and docstrings: an edit of the
    explanation leaves it, an edit of a computed line changes it."""
    from cryobench.harness import fingerprint
    package = tmp_path / "cryobench"
    shutil.copytree(REPO / "cryobench", package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fingerprint, "__file__", str(package / "harness" / "fingerprint.py"))
    digest = lambda: fingerprint.numerics_code_digest.__wrapped__()  # noqa: E731
    before = digest()
    prior = package / "model" / "prior.py"
    text = prior.read_text()
    prior.write_text(text.replace('"""The sparsity prior', '"""The paper\'s sparsity prior')
                     + "\n# a comment\n")
    assert digest() == before
    prior.write_text(text.replace("return lambda_pos * pos + lambda_neg * neg",
                                  "return lambda_neg * neg + lambda_pos * pos"))
    assert digest() != before
