"""Reading and writing particles and maps, and the input errors (cryobench.data: star, mrc, images)."""
from dataclasses import fields

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from cryobench.data.images import estimate_noise_sigma, fourier_crop
from cryobench.data.mrc import read_volume, write_volume
from cryobench.data.star import read_particles, write_particles
from cryobench.errors import InputError
from cryobench.model.ctf import CTFParams


def make_ctf(n, rng):
    return CTFParams(defocus_u=rng.uniform(10000, 30000, n), defocus_v=rng.uniform(10000, 30000, n),
                     defocus_angle=rng.uniform(-180, 180, n),
                     voltage=np.where(np.arange(n) < 3, 300.0, 200.0),
                     cs=2.7, amplitude_contrast=0.07, phase_shift=rng.uniform(0, 90, n),
                     bfactor=rng.uniform(0, 50, n))


def assert_ctf_equal(a, b, rtol=1e-10):
    for f in fields(CTFParams):
        np.testing.assert_allclose(getattr(a, f.name), getattr(b, f.name), rtol=rtol, atol=1e-10,
                                   err_msg=f.name)


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(6, 16, 16)).astype(np.float32)
    ctf = make_ctf(6, rng)
    write_particles(tmp_path / "particles.star", tmp_path / "particles.mrcs", images, ctf, 1.75)
    return tmp_path, images, ctf


def write_stack(path, data, voxel=1.0):
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.asarray(data, dtype=np.float32))
        mrc.set_image_stack()
        mrc.voxel_size = voxel


def test_particles_round_trip(dataset):
    tmp_path, images, ctf = dataset
    p = read_particles(tmp_path / "particles.star")
    assert p.images.dtype == np.float32 and np.array_equal(p.images, images)
    assert_ctf_equal(p.ctf, ctf)
    assert p.pixel_size == pytest.approx(1.75) and p.source.endswith("particles.star")
    assert len(starfile.read(tmp_path / "particles.star")["optics"]) == 2   # 300 and 200 kV
    head = read_particles(tmp_path / "particles.star", max_images=4)
    assert np.array_equal(head.images, images[:4]) and len(head.ctf) == 4


def test_stacks_beside_the_star_or_in_its_relion_project_never_the_cwd(dataset, monkeypatch):
    tmp_path, images, _ = dataset
    star = starfile.read(tmp_path / "particles.star")
    assert star["particles"]["rlnImageName"][0] == "000001@particles.mrcs"
    other = tmp_path / "sub"
    other.mkdir()
    starfile.write(star, other / "moved.star")       # particles.mrcs is now one folder up
    monkeypatch.chdir(tmp_path)                      # ... and in the current directory
    expect_error(other / "moved.star", "moved.star", "stack particles.mrcs", "row 1",
                 f"tried {other / 'particles.mrcs'}")
    # RELION names stacks relative to its project folder: Extract/job003/particles.mrcs from
    # Refine3D/job007/run_data.star; found under the folders above the STAR file's
    project, job = tmp_path / "project", tmp_path / "project" / "Refine3D" / "job007"
    job.mkdir(parents=True)
    (project / "Extract" / "job003").mkdir(parents=True)
    (tmp_path / "particles.mrcs").rename(project / "Extract" / "job003" / "particles.mrcs")
    star["particles"]["rlnImageName"] = [f"{i + 1:06d}@Extract/job003/particles.mrcs"
                                         for i in range(6)]
    starfile.write(star, job / "run_data.star")
    monkeypatch.chdir(other)
    assert np.array_equal(read_particles(job / "run_data.star").images, images)


def test_volume_round_trip(tmp_path):
    vol = np.random.default_rng(1).normal(size=(8, 8, 8)).astype(np.float32)
    write_volume(tmp_path / "map.mrc", vol, 2.5)
    back, voxel = read_volume(tmp_path / "map.mrc")
    assert np.array_equal(back, vol) and voxel == pytest.approx(2.5)


def test_relion30_layout(dataset):
    tmp_path, images, ctf = dataset
    table = pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@particles.mrcs" for i in range(6)],
        "rlnDefocusU": ctf.defocus_u, "rlnDefocusV": ctf.defocus_v,
        "rlnDefocusAngle": ctf.defocus_angle, "rlnVoltage": ctf.voltage,
        "rlnSphericalAberration": ctf.cs, "rlnAmplitudeContrast": ctf.amplitude_contrast,
        "rlnPhaseShift": ctf.phase_shift, "rlnCtfBFactor": ctf.bfactor,
        "rlnDetectorPixelSize": 14.0, "rlnMagnification": 80000.0,
    })
    starfile.write({"images": table}, tmp_path / "r30.star", float_format="%.12g")
    p = read_particles(tmp_path / "r30.star")
    assert np.array_equal(p.images, images)
    assert_ctf_equal(p.ctf, ctf)
    assert p.pixel_size == pytest.approx(14.0 * 1e4 / 80000.0)


def test_relion30_minimal_defaults_and_header_pixel_size(dataset):
    tmp_path, images, ctf = dataset
    table = pd.DataFrame({"rlnImageName": ["000002@particles.mrcs"], "rlnDefocusU": [15000.0],
                          "rlnDefocusV": [14000.0], "rlnVoltage": [300.0],
                          "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]})
    starfile.write(table, tmp_path / "min.star")
    p = read_particles(tmp_path / "min.star")
    assert np.array_equal(p.images, images[1:2]) and p.pixel_size == pytest.approx(1.75)
    assert p.ctf.phase_shift[0] == 0 and p.ctf.bfactor[0] == 0 and p.ctf.defocus_angle[0] == 0


def test_shared_stack_non_sequential(tmp_path):
    stack = np.arange(4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8)
    write_stack(tmp_path / "shared.mrcs", stack)
    write_stack(tmp_path / "other.mrcs", -stack[:2])
    ctf = make_ctf(4, np.random.default_rng(2))
    write_particles(tmp_path / "p.star", tmp_path / "unused.mrcs", np.zeros((4, 8, 8)), ctf, 1.0)
    star = starfile.read(tmp_path / "p.star")
    star["particles"]["rlnImageName"] = ["000003@shared.mrcs", "000001@shared.mrcs",
                                         "2@other.mrcs", "000004@shared.mrcs"]
    starfile.write(star, tmp_path / "p.star", float_format="%.12g")
    p = read_particles(tmp_path / "p.star")
    assert np.array_equal(p.images, np.stack([stack[2], stack[0], -stack[1], stack[3]]))


def edit_star(tmp_path, fn, name):
    """A copy of particles.star (which stays untouched) changed by fn(star), as ``name``."""
    star = starfile.read(tmp_path / "particles.star")
    fn(star)
    starfile.write(star, tmp_path / name, overwrite=True, float_format="%.12g")
    return tmp_path / name


def drop(star, block, column):
    star[block] = star[block].drop(columns=column)


def expect_error(path, *words):
    with pytest.raises(InputError) as info:
        read_particles(path)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    return str(info.value)


def test_missing_star(tmp_path):
    expect_error(tmp_path / "nothere.star", "nothere.star", "not found")


def test_malformed_star(tmp_path):
    (tmp_path / "bad.star").write_text("data_\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n"
                                       "000001@a.mrcs 1000 7 8\n")
    expect_error(tmp_path / "bad.star", "bad.star", "STAR")
    (tmp_path / "junk.star").write_text("this is not a star file\n")
    expect_error(tmp_path / "junk.star", "junk.star", "particle table")


def test_missing_stack(dataset):
    tmp_path, _, _ = dataset
    (tmp_path / "particles.mrcs").unlink()
    expect_error(tmp_path / "particles.star", "particles.star", "particles.mrcs", "rlnImageName",
                 "not found")


def test_missing_defocus_column(dataset):
    tmp_path, _, _ = dataset
    path = edit_star(tmp_path, lambda s: drop(s, "particles", "rlnDefocusU"), "no_defocus.star")
    expect_error(path, "no_defocus.star", "rlnDefocusU", "missing")


def test_missing_optics_column_and_bad_values(dataset):
    tmp_path, _, _ = dataset
    path = edit_star(tmp_path, lambda s: drop(s, "optics", "rlnVoltage"), "no_voltage.star")
    expect_error(path, "no_voltage.star", "rlnVoltage", "missing")

    def nan_defocus(s):
        s["particles"]["rlnDefocusV"] = s["particles"]["rlnDefocusV"].astype(object)
        s["particles"].loc[3, "rlnDefocusV"] = "abc"
    expect_error(edit_star(tmp_path, nan_defocus, "text.star"), "text.star", "rlnDefocusV", "row 4")

    def set_optics(col, value, name):
        return edit_star(tmp_path, lambda s: s["optics"].__setitem__(col, value), name)
    expect_error(set_optics("rlnAmplitudeContrast", 1.2, "q.star"), "q.star",
                 "rlnAmplitudeContrast", "[0, 1)")
    expect_error(set_optics("rlnVoltage", 0.0, "kv.star"), "kv.star", "rlnVoltage", "(0, 1e4] kV")
    expect_error(set_optics("rlnImagePixelSize", -1.0, "px.star"), "px.star",
                 "rlnImagePixelSize", "> 0")


def test_malformed_image_name(dataset):
    tmp_path, _, _ = dataset
    def no_at(s):
        s["particles"].loc[2, "rlnImageName"] = "particles.mrcs"
    path = edit_star(tmp_path, no_at, "at.star")
    expect_error(path, "at.star", "rlnImageName", "row 3", "malformed")
    path = edit_star(tmp_path, lambda s: drop(s, "particles", "rlnImageName"), "noname.star")
    expect_error(path, "noname.star", "rlnImageName", "missing")


def test_stack_shorter_than_star(dataset):
    tmp_path, images, _ = dataset
    write_stack(tmp_path / "particles.mrcs", images[:4])
    msg = expect_error(tmp_path / "particles.star", "particles.mrcs", "particles.star",
                       "rlnImageName")
    assert "has 4 images" in msg and "image 6" in msg


@pytest.mark.filterwarnings("ignore:Data array contains NaN")
def test_nan_pixel(dataset):
    tmp_path, images, _ = dataset
    bad = images.copy()
    bad[4, 3, 5] = np.nan
    bad[5, 0, 0] = np.inf
    write_stack(tmp_path / "particles.mrcs", bad)
    msg = expect_error(tmp_path / "particles.star", "particles.mrcs", "NaN", "rlnImageName")
    assert "image 5 " in msg


def test_non_square_images(dataset):
    tmp_path, _, _ = dataset
    write_stack(tmp_path / "particles.mrcs", np.zeros((6, 20, 24)))
    expect_error(tmp_path / "particles.star", "particles.mrcs", "square", "image size")


def test_mixed_image_sizes_and_corrupt_stack(dataset):
    tmp_path, images, _ = dataset
    write_stack(tmp_path / "big.mrcs", np.zeros((2, 32, 32)))
    def use_big(s):
        s["particles"].loc[5, "rlnImageName"] = "1@big.mrcs"
        drop(s, "optics", "rlnImageSize")           # else that column's check speaks first
    path = edit_star(tmp_path, use_big, "mixed.star")
    expect_error(path, "big.mrcs", "particles.mrcs", "image size")
    (tmp_path / "particles.mrcs").write_bytes(b"not an mrc file" * 10)
    expect_error(tmp_path / "particles.star", "particles.mrcs", "MRC")


def test_estimate_noise_sigma():
    rng = np.random.default_rng(3)
    images = rng.normal(scale=2.5, size=(4, 64, 64)).astype(np.float32)
    images[:, 22:42, 22:42] += 100.0                   # a bright "particle" inside the circle
    sigma = estimate_noise_sigma(images, radius_px=20)
    assert sigma.shape == (4,)
    np.testing.assert_allclose(sigma, 2.5, rtol=0.04)
    with pytest.raises(InputError, match="outside radius"):
        estimate_noise_sigma(images[:, :8, :8], radius_px=6)


def test_fourier_crop_constant_and_band_limited():
    const = np.full((2, 32, 32), 3.25, dtype=np.float32)
    out = fourier_crop(const, 16)
    assert out.shape == (2, 16, 16) and out.dtype == np.float32
    np.testing.assert_allclose(out, 3.25, rtol=1e-5)

    d, new, c, cn = 64, 16, 32, 8
    y, x = np.mgrid[:d, :d] - c
    img = np.cos(2 * np.pi * (3 * x + 2 * y) / d + 0.4) + 0.5 * np.sin(2 * np.pi * 5 * y / d)
    out = fourier_crop(img[None], new)[0]
    # new pixel (i, j) sits at old pixel c + (i - cn) * d / new
    np.testing.assert_allclose(out, img[c - cn * 4::4, c - cn * 4::4], atol=1e-5)
    assert np.array_equal(fourier_crop(img, d), img.astype(np.float32))
    with pytest.raises(ValueError):
        fourier_crop(img, 15)


def test_pixel_size_missing_everywhere(tmp_path):
    write_stack(tmp_path / "s.mrcs", np.zeros((1, 8, 8)), voxel=0.0)
    (tmp_path / "nopx.star").write_text(
        "data_\n\n_rlnImageName 1@s.mrcs\n_rlnDefocusU 1e4\n_rlnDefocusV 1e4\n_rlnVoltage 300\n"
        "_rlnSphericalAberration 2.7\n_rlnAmplitudeContrast 0.1\n")    # a non-loop block
    expect_error(tmp_path / "nopx.star", "nopx.star", "pixel size", "rlnPixelSize", "s.mrcs")
