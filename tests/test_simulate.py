"""Tests of the analytic-blob simulator (cryobench.data.simulate) and the phantoms."""
from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest
import starfile
from scipy.spatial.transform import Rotation

from cryobench.data.phantoms import PHANTOMS, SEEDED, Phantom, junk_particle, thermus_style
from cryobench.data.render import clean_images, clean_spectra, particle_mask
from cryobench.data.simulate import SimulationParams, read_poses, simulate
from cryobench.model.ctf import CTFParams
from cryobench.model.fourier import centered_dft2, centered_idft2

FILES = ("particles.mrcs", "particles.star", "ground_truth.mrc", "poses.csv", "meta.json")
X90 = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # image y → map z


def params(**over) -> SimulationParams:
    base = dict(phantom="v-atpase", n_images=60, box=32, pixel_size=10.0, snr=0.05, voltage=200.0,
                cs=2.0, amplitude_contrast=0.07, defocus_min=10000.0, defocus_max=45000.0,
                astigmatism=300.0, shift_sigma=4.5, shift_truncation=3.0, outlier_fraction=0.1,
                bfactor=0.0, seed=7)
    return SimulationParams.from_mapping({**base, **over})


def small_phantom() -> Phantom:
    """A few well-sampled blobs (σ ≥ 2.5 px at 1 Å/px), asymmetric, inside a 48 px box."""
    c = [[0, 0, 0], [6, -3, 2], [-5, 4, -6], [3, 8, 5], [-7, -6, 3]]
    return Phantom(np.array(c, float), np.array([4.0, 3.0, 2.5, 3.5, 2.5]),
                   np.array([1.0, 0.7, 1.3, 0.5, 0.9]))


def ctf_params(n: int) -> CTFParams:
    rng = np.random.default_rng(3)
    du = rng.uniform(8000, 20000, n)
    return CTFParams(du, du - 400, rng.uniform(0, 180, n), 300.0, 2.7, 0.1, 0.0, 50.0)


@pytest.mark.parametrize("phantom, box, pixel_size",
                         [(small_phantom(), 48, 1.0), (thermus_style(), 112, 2.8)])
@pytest.mark.parametrize("rotation, axis", [(np.eye(3), 0), (X90, 1)])
def test_spectra_match_dft_of_real_space_projection(phantom, box, pixel_size, rotation, axis):
    vol = phantom.to_volume(box, pixel_size).astype(np.float64)
    ref = centered_dft2(vol.sum(axis=axis))   # identity: sum over z; X90: sum over y → [z, x]
    spec = clean_spectra(phantom, rotation[None], None, None, box, pixel_size)[0]
    assert np.abs(spec - ref).max() < 1e-3 * np.abs(ref).max()


def test_rfft_path_equals_full_grid_inverse():
    rng = np.random.default_rng(0)
    rot = Rotation.random(4, random_state=rng).as_matrix()
    shifts, ctf = rng.normal(0, 2, (4, 2)), ctf_params(4)
    for box in (48, 47):
        full = centered_idft2(clean_spectra(small_phantom(), rot, shifts, ctf, box, 1.0))
        fast = clean_images(small_phantom(), rot, shifts, ctf, box, 1.0)
        assert fast.dtype == np.float32 and fast.shape == (4, box, box)
        assert np.abs(fast - full).max() < 1e-5 * np.abs(full).max()


def test_integer_shift_is_a_roll():
    rot, ctf = np.stack([np.eye(3), X90]), ctf_params(2)
    base = clean_images(small_phantom(), rot, None, ctf, 48, 1.0)
    moved = clean_images(small_phantom(), rot, np.array([[3.0, -2.0]] * 2), ctf, 48, 1.0)
    rolled = np.roll(base, (-2, 3), axis=(-2, -1))  # +t: content moves to larger x, smaller y
    assert np.abs(moved - rolled).max() < 1e-5 * np.abs(base).max()


def test_identical_params_give_identical_files(tmp_path):
    a = simulate(params(), tmp_path / "a", progress=False)
    b = simulate(params(), tmp_path / "b", progress=False, chunk_size=7)
    simulate(params(seed=8), tmp_path / "c", progress=False)
    assert a == b
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / FILES[0]).read_bytes() != (tmp_path / "c" / FILES[0]).read_bytes()


def test_declared_snr_matches_written_images(tmp_path):
    p = params(phantom="cylinder", n_images=3000, box=24, pixel_size=14.0, snr=0.5,
               defocus_min=5000.0, defocus_max=10000.0, shift_sigma=0.0, outlier_fraction=0.0)
    meta = simulate(p, tmp_path, progress=False)
    with mrcfile.open(tmp_path / "particles.mrcs") as mrc:
        images = np.asarray(mrc.data, dtype=np.float64)
    mask = particle_mask(PHANTOMS["cylinder"](), p.box, p.pixel_size)
    noise_var = images[:, ~mask].var()
    n_in = int(mask.sum())
    signal_var = images[:, mask].var(axis=1).mean() - noise_var * (n_in - 1) / n_in
    assert abs(noise_var - 1.0) < 0.02
    assert abs(signal_var / noise_var / p.snr - 1.0) < 0.10
    assert abs(meta["snr_measured"] / p.snr - 1.0) < 0.05


def test_files_poses_and_meta(tmp_path):
    p = params()
    meta = simulate(p, tmp_path, progress=False)
    star = starfile.read(tmp_path / "particles.star", always_dict=True)
    assert set(star) == {"optics", "particles"}
    pose_like = [c for c in star["particles"].columns if "Angle" in c.replace("DefocusAngle", "")
                 or "Origin" in c]
    assert pose_like == [] and len(star["particles"]) == p.n_images
    assert json.loads((tmp_path / "meta.json").read_text()) == meta
    assert meta["snr"] == p.snr and "variance" in meta["snr_definition"]
    assert meta["params"] == p.to_dict() and "seeds" in meta

    rot, shifts, outlier = read_poses(tmp_path / "poses.csv")
    assert np.allclose(rot @ rot.transpose(0, 2, 1), np.eye(3))
    assert np.allclose(np.linalg.det(rot), 1)
    assert outlier.sum() == round(p.outlier_fraction * p.n_images) == meta["n_outliers"]
    assert np.all(np.hypot(*shifts.T) <= p.shift_truncation * p.shift_sigma / p.pixel_size)

    # The written images are the analytic images of the stored poses and CTFs plus unit noise.
    parts = star["particles"]
    ctf = CTFParams(parts.rlnDefocusU, parts.rlnDefocusV, parts.rlnDefocusAngle, p.voltage, p.cs,
                    p.amplitude_contrast, parts.rlnPhaseShift, parts.rlnCtfBFactor)
    phantom = PHANTOMS[p.phantom]().scaled(meta["amplitude_scale"])
    good = ~outlier
    clean = clean_images(phantom, rot[good], shifts[good], ctf.subset(good), p.box, p.pixel_size)
    with mrcfile.open(tmp_path / "particles.mrcs") as mrc:
        resid = mrc.data[good] - clean
    assert abs(resid.var() - 1.0) < 0.05 and abs(np.mean(resid * clean)) < 0.01
    with mrcfile.open(tmp_path / "ground_truth.mrc") as mrc:
        assert np.array_equal(mrc.data, phantom.to_volume(p.box, p.pixel_size))
        assert mrc.voxel_size.x == pytest.approx(p.pixel_size)


def test_from_mapping_names_bad_keys():
    d = params().to_dict()
    with pytest.raises(ValueError, match="snr_db"):
        SimulationParams.from_mapping({**d, "snr_db": -13.0})
    with pytest.raises(ValueError, match="seed"):
        SimulationParams.from_mapping({k: v for k, v in d.items() if k != "seed"})
    with pytest.raises(ValueError, match="phantom"):
        params(phantom="ribosome")
    with pytest.raises(ValueError, match="n_images"):
        params(n_images=60.5)
    assert params(seed=2**63 - 1).seed == 2**63 - 1 and params(n_images=60.0).n_images == 60
    assert SimulationParams.from_mapping(d) == params()


def test_phantoms_are_deterministic_and_sane():
    for make in [PHANTOMS[n] for n in PHANTOMS if n not in SEEDED]:   # pseudo-atoms: test_refinement
        a, b = make(), make()
        assert np.array_equal(a.centres, b.centres) and np.array_equal(a.amplitudes, b.amplitudes)
        assert 100 <= len(a) <= 300 and a.sigmas.min() >= 6.0
        z, s = a.centres[:, 2], a.sigmas
        assert 220 <= np.max(z + 2 * s) - np.min(z - 2 * s) <= 290      # ~250 Å long along z
        assert a.radius < 170
    junk = junk_particle(np.random.default_rng(0))
    assert len(junk) >= 20 and junk.radius < 200
    assert junk_particle(np.random.default_rng(0)).centres.tolist() == junk.centres.tolist()
