"""Figure 4's filter: the 2-D disk low-pass of a projection is the projection of the 3-D ball
low-pass (Fourier slice theorem, exact for the DFT), and the band limit read from a cell's
ground-truth views is the task's r_max."""
from pathlib import Path

import numpy as np
import pytest

from cryobench.data.spec import load_spec
from cryobench.harness.results import load_results
from cryobench.harness.run import lowpass, projections
from cryobench.report.densities import _k2, band_limit, lowpass_view

RESULTS = Path(__file__).resolve().parent.parent / "results"


@pytest.mark.parametrize("n, rmax", [(20, 4.3), (17, 3.0), (24, 5.0), (48, 4.0), (32, 6.4)])
def test_2d_disk_lowpass_of_projections_is_projection_of_3d_ball_lowpass(n, rmax):
    volume = np.random.default_rng(n).normal(size=(n, n, n))
    expected = projections(lowpass(volume, rmax)).astype(np.float64)
    got = lowpass_view(projections(volume), rmax)
    assert got.shape == (3, n, n)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * scale)   # float32 projections
    # and in float64 throughout, to float64 rounding
    v = np.asarray(volume, np.float64)
    sums = lambda x: np.stack([x.sum(axis=0), x.sum(axis=1), x.sum(axis=2)])
    np.testing.assert_allclose(lowpass_view(sums(v), rmax), sums(lowpass(v, rmax)), rtol=0,
                               atol=1e-10 * np.abs(sums(v)).max())
    # the filter does something: the unfiltered projections differ
    assert not np.allclose(projections(volume), expected, atol=1e-3 * scale)


@pytest.mark.parametrize("n, rmax", [(20, 4.3), (24, 3.0), (48, 4.0), (128, 6.4), (64, 10.24)])
def test_band_limit_read_from_truth_views_gives_the_same_disk(n, rmax):
    x = np.linspace(-1, 1, n)
    z, y, xx = np.meshgrid(x, x, x, indexing="ij")
    blob = np.exp(-((xx - 0.1) ** 2 + (y / 0.6) ** 2 + (z / 1.5) ** 2) / 0.08)   # smooth, asymmetric
    k2max = band_limit(projections(lowpass(blob, rmax)))
    assert np.array_equal(_k2(n) <= k2max, _k2(n) <= rmax**2)
    assert k2max <= rmax**2 < k2max + 2 * np.sqrt(k2max) + 2    # the last ring inside the ball
    assert band_limit(np.zeros((3, n, n))) == 0.0


def test_lowpass_view_refuses_non_square_views():
    with pytest.raises(ValueError, match="square"):
        lowpass_view(np.zeros((3, 8, 9)), 2.0)


@pytest.mark.parametrize("name", ["paper-small", "modern-small"])
def test_committed_cells_band_limit_is_the_tasks_rmax(name):
    """What the figure reads from the cells equals ``load_spec(task).scale(scale).rmax_px(box)``."""
    if not (RESULTS / name / "cells").is_dir():
        pytest.skip(f"results/{name} is not committed")
    results = load_results(RESULTS / name)
    for (task, scale), cells in results.cells.groupby(["task", "scale"]):
        truth = next(v["ground_truth"] for v in map(results.views, cells["cell"]) if "ground_truth" in v)
        box = truth.shape[-1]
        rmax = load_spec(task).scale(scale).rmax_px(box)
        assert np.array_equal(_k2(box) <= band_limit(truth), _k2(box) <= rmax**2), (task, scale)
