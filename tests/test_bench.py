"""`cryobench bench` at ci scale: the report's fields and its last line (no speed is asserted)."""
import math

import numpy as np

from cryobench import cli
from cryobench.base.threads import set_threads
from cryobench.checks.bench import gemm_rate, run_bench
from cryobench.model.likelihood import Likelihood
from cryobench.model.quadrature import quadrature_for


def test_bench_command_prints_the_ratio_last(data_dir, capsys):
    code = cli.main(["bench", "--scale", "ci", "--task", "synthetic-cylinder", "--repeats", "2",
                     "--data-dir", str(data_dir)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    ratio = float(lines[-1])
    assert ratio > 0 and math.isfinite(ratio)    # no upper bound: a timing ratio (3.8 seen under load)
    assert lines[-2].startswith("kernel/GEMM ratio: synthetic-cylinder")
    text = "\n".join(lines)
    for field in ("SGEMM", "kernel ", "kernel/GEMM", "SGD epoch", "test NLL", "peak memory",
                  "load", "threads"):
        assert field in text, field


def test_bench_report_fields(data_dir):
    try:
        r = run_bench("synthetic-cylinder", "ci", data_dir, threads=1, epoch_batches=2, repeats=1)
    finally:
        set_threads()                                   # back to all cores for later tests
    assert r["threads"] == 1 and r["blas_threads"] == 1 and r["numba_threads"] == 1
    assert r["epoch_extrapolated"] and r["epoch_batches_measured"] == 2
    assert r["epoch_batches"] == int(np.ceil(r["n_train"] / 100))
    for key in ("gemm_gflops", "kernel_gflops", "kernel_s", "epoch_s", "test_nll_s",
                "peak_rss_after_load_gb", "peak_rss_gb", "load_s"):
        assert r[key] > 0, key
    assert r["ratio"] == r["kernel_gflops"] / r["gemm_gflops"]
    assert np.isfinite(r["last_minibatch_objective"])


def test_gemm_shapes_count_the_kernel_flops(ci_task):
    shifted = Likelihood(16, 6.0, 3.0, quadrature_for(3.0, 16, shift_sigma_px=1.5))
    assert len(shifted.quadrature.shifts) > 1
    for lik in (ci_task.likelihood, shifted):
        flops = sum(2 * m * k * n for _, m, k, n in lik.gemm_shapes(100))
        assert flops == lik.flops_per_image() * 100
    rate = gemm_rate([("AB^T", 64, 32, 48), ("A^TB", 48, 64, 32)], repeats=1)
    assert rate["gflops"] > 0 and len(rate["products"]) == 2


def test_bench_of_refinement_tasks_reports_the_kernel_beside_its_floor(data_dir, capsys):
    """A refinement task has no quadrature: its kernel is reported beside the FFTs and slicing
    of the same minibatch, and a mixed list names both ratios (the plain last line stays the
    ab-initio tasks' minimum kernel/GEMM ratio)."""
    code = cli.main(["bench", "--scale", "ci", "--task", "refinement-local", "--task",
                     "synthetic-cylinder", "--repeats", "1", "--epoch-batches", "1",
                     "--data-dir", str(data_dir)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    text = "\n".join(lines)
    assert "refinement-local at ci scale (refinement)" in text
    assert "7 slice(s) and 35 likelihood term(s) per image" in text
    assert lines[-3].startswith("kernel/floor ratio: refinement-local ")
    assert lines[-2].startswith("kernel/GEMM ratio: synthetic-cylinder ")
    assert float(lines[-1]) == float(lines[-2].split()[-1])
    floor = float(lines[-3].split()[-1])
    assert floor > 0 and math.isfinite(floor)
