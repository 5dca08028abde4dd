"""Tests of cryobench.model.fsc: FSC, resolution, and alignment over rotation, shift and handedness.

Test volumes are sums of Gaussian blobs rendered analytically (cryobench.data.phantoms, pixel 1 Å so
blob centres are in voxels from the centre voxel), so a transformed copy is rendered exactly by
moving the blob centres: q ↦ R S q + t, with S = diag(1, 1, −1) when mirrored.
"""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryobench.data.phantoms import Phantom
from cryobench.model.fsc import Alignment, FSCResult, align, aligned_fsc, fsc, resolution, transform

D = 32
MIRROR = np.diag([1.0, 1.0, -1.0])
R_TRUE = Rotation.from_euler("zyz", [37, 71, -112], degrees=True).as_matrix()
T_TRUE = np.array([1.3, -0.7, 2.1])


def blobs(seed: int = 0, n: int = 8) -> Phantom:
    """n blobs (σ 1–2 voxels, so the spectrum reaches Nyquist) at asymmetric spots within 0.35·D."""
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=1)[:, None]
    centres = dirs * rng.uniform(0.1, 0.35, n)[:, None] * D
    return Phantom(centres, rng.uniform(0.03, 0.07, n) * D, rng.uniform(0.5, 1.5, n))


def moved(p: Phantom, rotation, shift, mirrored: bool) -> Phantom:
    """The phantom with every blob centre q moved to R S q + t."""
    m = rotation @ (MIRROR if mirrored else np.eye(3))
    return Phantom(p.centres @ m.T + shift, p.sigmas, p.amplitudes)


def relative_angle_deg(r1, r2) -> float:
    return float(np.rad2deg(Rotation.from_matrix(r1 @ r2.T).magnitude()))


@pytest.fixture(scope="module")
def phantom():
    return blobs()


@pytest.fixture(scope="module")
def vol(phantom):
    return phantom.to_volume(D, 1.0)


# --- fsc -------------------------------------------------------------------------------------

def test_fsc_of_a_volume_with_itself_is_one(vol):
    freq, curve = fsc(vol, vol)
    assert len(freq) == len(curve) == D // 2 + 1
    assert freq[0] == 0.0 and freq[-1] == pytest.approx(0.5)
    np.testing.assert_allclose(curve, 1.0, atol=1e-6)


def test_fsc_with_negated_volume_is_minus_one(vol):
    np.testing.assert_allclose(fsc(vol, -vol)[1], -1.0, atol=1e-6)


def test_fsc_with_independent_noise_is_small(vol):
    noise = np.random.default_rng(1).normal(size=vol.shape)
    curve = fsc(vol, noise)[1]
    assert np.mean(np.abs(curve[3:])) < 0.1          # shells ≥ 3 hold ≥ ~100 voxels each
    assert np.max(np.abs(curve[3:])) < 0.3


# --- resolution ------------------------------------------------------------------------------

def test_resolution_interpolates_a_linear_ramp():
    freq = np.arange(D // 2 + 1) / D
    curve = 1.0 - 2.0 * freq                          # crosses c at f = (1 − c) / 2
    assert resolution(freq, curve, pixel_size=2.0, threshold=0.45) == pytest.approx(2.0 / 0.275)
    assert resolution(freq, curve, 2.0, threshold=0.143) == pytest.approx(2.0 / 0.4285)
    curve[5] = 0.3                                    # the first crossing counts, not later ones
    f = 4 / D + (0.5 - curve[4]) / (0.3 - curve[4]) / D
    assert resolution(freq, curve, 1.5) == pytest.approx(1.5 / f)


def test_resolution_edge_cases():
    freq = np.arange(D // 2 + 1) / D
    assert resolution(freq, np.ones_like(freq), 1.7) == pytest.approx(3.4)     # never below
    assert resolution(freq, np.full_like(freq, 0.5), 1.7) == pytest.approx(3.4)  # not *below*
    below_first = np.r_[1.0, 0.3, np.ones(len(freq) - 2)]
    assert resolution(freq, below_first, 1.7) == np.inf


# --- transform -------------------------------------------------------------------------------

@pytest.mark.parametrize("box", [D, D + 1])
def test_mirror_is_z_reflection_about_the_centre_voxel(phantom, box):
    v = phantom.to_volume(box, 1.0)
    w = transform(v, np.eye(3), np.zeros(3), mirrored=True)
    if box % 2:                                       # odd: i ↦ box − 1 − i, a plain flip
        np.testing.assert_allclose(w, v[::-1], atol=1e-4)
    else:                                             # even: i ↦ box − i; plane 0 has no partner
        np.testing.assert_allclose(w[1:], v[::-1][:-1], atol=1e-4)
        np.testing.assert_allclose(w[0], 0.0, atol=1e-4)
    assert w.shape == v.shape and w.dtype == v.dtype


@pytest.mark.parametrize("mirrored", [False, True])
def test_transform_moves_content_at_q_to_R_S_q_plus_t(phantom, vol, mirrored):
    w = transform(vol, R_TRUE, T_TRUE, mirrored)
    expected = moved(phantom, R_TRUE, T_TRUE, mirrored).to_volume(D, 1.0)
    assert np.corrcoef(w.ravel(), expected.ravel())[0, 1] > 0.999
    wrong = moved(phantom, R_TRUE.T, T_TRUE, mirrored).to_volume(D, 1.0)   # the other direction
    assert np.corrcoef(w.ravel(), wrong.ravel())[0, 1] < 0.9


# --- align -----------------------------------------------------------------------------------

@pytest.mark.parametrize("mirrored", [True, False])
def test_align_recovers_the_inverse_transform(phantom, vol, mirrored):
    w = moved(phantom, R_TRUE, T_TRUE, mirrored).to_volume(D, 1.0)   # exact, no interpolation
    a = align(w, vol)
    assert isinstance(a, Alignment)
    assert a.mirrored is mirrored
    s = MIRROR if mirrored else np.eye(3)             # W(p) = V(S Rᵀ (p − t)), so the inverse is
    r_inv = s @ R_TRUE.T @ s                          #   R' = S Rᵀ S,  t' = −S Rᵀ t
    t_inv = -s @ R_TRUE.T @ T_TRUE
    assert relative_angle_deg(a.rotation, r_inv) < 3.0
    assert np.max(np.abs(a.shift - t_inv)) < 0.5
    assert a.score > 0.99
    freq, curve = fsc(transform(w, a.rotation, a.shift, a.mirrored), vol)
    assert np.all(curve[freq <= 0.6 * 0.5] >= 0.95)


def test_align_picks_the_right_hand_for_a_mirror_only(vol):
    w = transform(vol, np.eye(3), np.zeros(3), mirrored=True)
    a = align(w, vol)
    assert a.mirrored and relative_angle_deg(a.rotation, np.eye(3)) < 3.0
    assert np.max(np.abs(a.shift)) < 0.5


# --- aligned_fsc -----------------------------------------------------------------------------

def test_aligned_fsc_reaches_nyquist_where_the_raw_fsc_fails(phantom, vol):
    pixel = 1.5
    rotated = moved(phantom, R_TRUE, T_TRUE, False).to_volume(D, 1.0)
    raw = resolution(*fsc(rotated, vol), pixel)
    res = aligned_fsc(rotated, vol, pixel)
    assert isinstance(res, FSCResult) and not res.alignment.mirrored
    assert res.freq[-1] == pytest.approx(0.5 / pixel)          # cycles per Å
    assert res.resolution <= 2.2 * pixel
    assert raw > 4 * res.resolution


# --- bad input -------------------------------------------------------------------------------

def test_mismatched_or_non_cubic_volumes_are_rejected(vol):
    with pytest.raises(ValueError, match="same shape"):
        fsc(vol, vol[:-2, :-2, :-2])
    with pytest.raises(ValueError, match="same shape"):
        align(vol, vol[:-2, :-2, :-2])
    with pytest.raises(ValueError, match="cubic"):
        fsc(vol[:, :, :-1], vol[:, :, :-1])
    with pytest.raises(ValueError, match="cubic"):
        aligned_fsc(vol[:-1], vol, 1.0)
    with pytest.raises(ValueError, match="cubic"):
        transform(vol[0], np.eye(3), np.zeros(3))
