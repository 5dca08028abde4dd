"""Careless or hostile STAR input: each case is one clear line naming the file, the field and the
problem (or is handled and said), found in a review of the STAR reader (cryobench.data.star,
cryobench.data.startables, the STAR part of cryobench.data.datasets)."""
import logging

import foreign as fx
import mrcfile
import numpy as np
import pytest

from cryobench import InputError
from cryobench.cli import main
from cryobench.data.star import read_particles, write_particles


@pytest.fixture
def star(tmp_path):
    """A small data set in another package's conventions (origins in Å, 32 px at 12 Å)."""
    fx.foreign_dataset(tmp_path, n=12, reference=None)
    return tmp_path / "particles.star"


def refused(path, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        read_particles(path, **kwargs)
    return str(info.value)


def info_error(task, capsys, tmp_path) -> str:
    """The one line ``cryobench info`` prints for a refused task (exit status 2)."""
    code = main(["info", str(task), "--data-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("cryobench: error: "), err
    return err[0]


# ------------------------------------------------------------------ 1, 2. the scale's box
@pytest.mark.parametrize("box, needles", [
    (48, ["[scales.tiny] box = 48 is larger than the 32×32-pixel images of", "particles.star",
          "use a box ≤ 32"]),
    (23, ["[scales.tiny] box = 23 is odd; a STAR task's box must be even"]),
])
def test_a_box_larger_than_the_images_or_odd_is_one_line(tmp_path, capsys, box, needles):
    fx.foreign_dataset(tmp_path, n=150, black=False, reference=None)
    task = fx.write_task(tmp_path, reference=False, box=box)
    line = info_error(task, capsys, tmp_path)
    assert str(task) in line and "fourier_crop" not in line
    for needle in needles:
        assert needle in line, line


# ------------------------------------------------------------------ 3. complex stacks
@pytest.mark.parametrize("mode", [3, 4])
def test_a_complex_stack_is_refused_naming_the_file_and_its_mode(star, mode):
    stack = star.parent / "particles.mrcs"
    with mrcfile.open(stack) as mrc:
        data = mrc.data.copy()
    if mode == 4:
        with mrcfile.new(stack, overwrite=True) as mrc:
            mrc.set_data((data + 1j * data).astype(np.complex64))
    else:   # complex int16: 4 bytes a pixel, as float32; mrcfile cannot read the data at all
        raw = bytearray(stack.read_bytes())
        raw[12:16] = np.int32(3).tobytes()
        stack.write_bytes(bytes(raw))
    msg = refused(star)
    assert msg.startswith(f"{stack}: MRC mode {mode} (complex") and "holds complex values" in msg


# ------------------------------------------------------------------ 4. CTF values
@pytest.mark.parametrize("table, column, value, needle", [
    ("particles", "rlnDefocusU", 1e30, "has value 1e+30 in row 3; it must lie in (0, 1e6] Å"),
    ("particles", "rlnDefocusV", -5000.0, "has value -5000 in row 3; it must lie in (0, 1e6] Å"),
    ("particles", "rlnDefocusU", 0.0, "has value 0 in row 3"),
    ("particles", "rlnDefocusU", np.inf, "non-numeric, NaN or infinite value inf in row 3"),
    ("optics", "rlnVoltage", 300e3, "column rlnVoltage of data_optics has value 300000 in row 1; "
                                    "it must lie in (0, 1e4] kV"),
    ("optics", "rlnSphericalAberration", 2700.0, "of data_optics has value 2700 in row 1; it "
                                                 "must lie in [-100, 100] mm"),
    ("optics", "rlnAmplitudeContrast", 7.0, "of data_optics has value 7 in row 1; it must lie "
                                            "in [0, 1)"),
    ("optics", "rlnVoltage", np.nan, "column rlnVoltage of data_optics has a non-numeric"),
])
def test_ctf_values_that_cannot_be_meant_are_refused(star, table, column, value, needle):
    def change(blocks):
        col = blocks[table][column].astype(float)
        col.iloc[2 if table == "particles" else 0] = value
        blocks[table][column] = col
    msg = refused(fx.edit_star(star, change))
    assert msg.startswith(f"{star}: column {column}") and needle in msg, msg


def test_ctf_values_at_the_edges_are_read(star):
    def change(blocks):
        blocks["particles"]["rlnDefocusU"] = 1e6
        blocks["optics"]["rlnSphericalAberration"] = -0.5       # a Cs-corrected microscope
    assert read_particles(fx.edit_star(star, change)).ctf.defocus_u[0] == 1e6


def test_a_1e30_defocus_is_one_line_before_any_run(tmp_path, capsys):
    fx.foreign_dataset(tmp_path, n=150, black=False, reference=None)
    fx.edit_star(tmp_path / "particles.star",
                 lambda b: b["particles"].__setitem__("rlnDefocusU", 1e30))
    line = info_error(fx.write_task(tmp_path, reference=False), capsys, tmp_path)
    assert "particles.star: column rlnDefocusU has value 1e+30 in row 1" in line


def test_a_simulated_dataset_is_held_to_the_ctf_formula_only(tmp_path):
    """A simulation may draw defocus V below 0 (defocus_min = 0 with astigmatism): its reader
    (check_images=False, the caller vouching for the data) still takes it, as before."""
    ctf = fx.simulate(4)[3]
    ctf = type(ctf)(ctf.defocus_u, -ctf.defocus_v, ctf.defocus_angle, 300.0, 2.7, 0.1, 0, 0)
    images = np.random.default_rng(0).normal(size=(4, 16, 16))
    write_particles(tmp_path / "p.star", tmp_path / "p.mrcs", images, ctf, 2.0)
    assert "rlnDefocusV has value" in refused(tmp_path / "p.star")
    read = read_particles(tmp_path / "p.star", memory_map=True, check_images=False)
    np.testing.assert_allclose(read.ctf.defocus_v, ctf.defocus_v, rtol=1e-11)


def test_relion_spelling_of_the_ctf_bfactor_is_read(star):
    """RELION writes rlnCtfBfactor (cryobench's own files say rlnCtfBFactor): both are read."""
    fx.edit_star(star, lambda b: b["particles"].__setitem__("rlnCtfBfactor", 40.0))
    assert np.all(read_particles(star).ctf.bfactor == 40.0)
    fx.edit_star(star, lambda b: b["particles"].__setitem__("rlnCtfBFactor", 20.0))
    assert refused(star) == (f"{star}: columns rlnCtfBfactor and rlnCtfBFactor differ in row 1 "
                             f"(40 and 20 Å²); keep one")


# ------------------------------------------------------------------ 5. rlnImageSize
def test_image_size_column_must_be_the_stacks_size(star):
    fx.edit_star(star, lambda b: b["optics"].__setitem__("rlnImageSize", 64))
    msg = refused(star)
    assert msg == (f"{star}: column rlnImageSize of data_optics is 64 for row 1, but the images "
                   f"of {star.parent / 'particles.mrcs'} are 32×32 pixels")


# ------------------------------------------------------------------ 6. particles vs optics
@pytest.mark.parametrize("column, mine, theirs", [("rlnVoltage", 200.0, 300),
                                                  ("rlnSphericalAberration", 0.01, 2.7),
                                                  ("rlnAmplitudeContrast", 0.07, 0.1),
                                                  ("rlnImagePixelSize", 6.0, 12)])
def test_a_value_in_both_tables_must_agree(star, column, mine, theirs):
    def change(blocks, value):
        col = np.full(len(blocks["particles"]), float(theirs))
        col[4] = value
        blocks["particles"][column] = col
    msg = refused(fx.edit_star(star, lambda b: change(b, mine)))
    assert msg == (f"{star}: column {column} is in both data_particles and data_optics and they "
                   f"differ: row 5 has {mine:g}, its optics group 1 has {theirs:g} (RELION would "
                   f"use the particle's); remove it from one table or make them agree")
    same = read_particles(fx.edit_star(star, lambda b: change(b, theirs)))
    assert same.pixel_size == 12.0 and np.all(same.ctf.voltage == 300.0)


# ------------------------------------------------------------------ 7. origins in Å and px
def test_origins_in_both_units_must_agree_and_then_are_used(star):
    with_angst = read_particles(star).origins

    def add_px(blocks, error=0.0):
        parts = blocks["particles"]
        parts["rlnOriginX"] = parts["rlnOriginXAngst"] / fx.PIXEL
        parts["rlnOriginY"] = parts["rlnOriginYAngst"] / fx.PIXEL + np.where(
            np.arange(len(parts)) == 6, error, 0.0)
    both = read_particles(fx.edit_star(star, add_px)).origins
    np.testing.assert_allclose(both, with_angst, atol=1e-9)
    msg = refused(fx.edit_star(star, lambda b: add_px(b, 0.5)))
    assert msg.startswith(f"{star}: columns rlnOriginY and rlnOriginYAngst disagree in row 7: ")
    assert f"Å / 12 Å/px = {with_angst[6, 1]:.6g} px; remove one pair" in msg


# ------------------------------------------------------------------ 8. STAR vs MRC header
def cryobench_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "cryobench"]


@pytest.mark.parametrize("header, warned", [(12.0, False), (12.005, False), (0.0, False),
                                            (10.0, True), (1.0, True)])
def test_star_pixel_size_wins_and_a_different_header_is_said_once(star, caplog, header, warned):
    stack = star.parent / "particles.mrcs"
    with mrcfile.open(stack, mode="r+") as mrc:
        mrc.voxel_size = header
    with caplog.at_level(logging.WARNING, logger="cryobench"):
        assert read_particles(star).pixel_size == 12.0
        assert read_particles(star).pixel_size == 12.0
    said = cryobench_warnings(caplog)
    assert said == ([f"cryobench: warning: {star}: pixel size 12 Å (rlnImagePixelSize) differs "
                     f"from the voxel size {header:g} Å in the MRC header of {stack}; using the "
                     f"STAR file's 12 Å, as RELION does"] if warned else [])


# ------------------------------------------------------------------ 9. where stacks are looked for
def test_a_missing_stack_is_not_replaced_by_one_in_the_current_directory(tmp_path, capsys,
                                                                         monkeypatch):
    """The STAR file (in data/) names particles.mrcs, which is not beside it; the current
    directory has an unrelated particles.mrcs of the same size: it is not used."""
    data = tmp_path / "data"
    fx.foreign_dataset(data, n=150, black=False, reference=None)
    (data / "particles.mrcs").rename(tmp_path / "elsewhere.mrcs")
    fx.write_stack(tmp_path / "particles.mrcs", np.random.default_rng(5).normal(size=(150, 32, 32)))
    monkeypatch.chdir(tmp_path)
    line = info_error(fx.write_task(data, reference=False), capsys, tmp_path)
    assert line == (f"cryobench: error: {data / 'particles.star'}: stack particles.mrcs (column "
                    f"rlnImageName, row 1) not found: tried {data / 'particles.mrcs'} (beside the "
                    f"STAR file)")
