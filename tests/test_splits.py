"""Splits never leak: disjoint and covering for every shipped task at every scale; bad sizes and
duplicate particles refused in one line before any simulation or reading."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import starfile

import cryobench
from cryobench import InputError
from cryobench.data.spec import TASKS_DIR, check_splits, known_tasks, load_spec
from cryobench.data.star import read_particles, write_particles
from cryobench.model.ctf import CTFParams
from cryobench.task import make_splits, split_sizes, task_hash

SHIPPED = [(name, scale) for name in known_tasks()
           for scale in load_spec(name).raw["scales"]]


@pytest.mark.parametrize("name, scale", SHIPPED, ids=[f"{n}-{s}" for n, s in SHIPPED])
def test_every_shipped_task_has_disjoint_covering_splits(name, scale):
    # computed from the counts the spec declares: paper scale is never simulated here
    spec = load_spec(name)
    sc = spec.scale(scale)
    sizes = check_splits(spec, sc, sc.n_images)
    assert sizes == split_sizes(name, scale)
    s = make_splits(spec.name, spec.seed, sc.n_images, sizes["test"], sizes["validation"])
    test, val, train = (set(s[k].tolist()) for k in ("test", "validation", "train"))
    assert not test & train and not val & train and not test & val
    assert test | val | train == set(range(sc.n_images))
    assert (len(test), len(val), len(train)) == (sizes["test"], sizes["validation"], sizes["train"])
    assert sizes["test"] == 100 and sizes["train"] >= 1


def edited_task(tmp_path, old, new, name="synthetic-cylinder"):
    text = (TASKS_DIR / f"{name}.toml").read_text()
    assert old in text
    path = tmp_path / "task.toml"
    path.write_text(text.replace(old, new, 1))
    return path


CI_VAL = "rmax = 3.0\nn_validation = 50"
BAD_SPLITS = [
    ("n_test = 100", "n_test = 0", "n_test = 0"),
    ("n_test = 100", "n_test = -5", "n_test = -5"),
    ("n_test = 100", "n_test = 1.5", "n_test = 1.5"),
    ("n_test = 100", 'n_test = "100"', 'n_test = "100"'),
    (CI_VAL, "rmax = 3.0\nn_validation = 0", "[scales.ci] n_validation = 0"),
    (CI_VAL, "rmax = 3.0\nn_validation = -1", "[scales.ci] n_validation = -1"),
    (CI_VAL, "rmax = 3.0\nn_validation = 2.5", "[scales.ci] n_validation = 2.5"),
    ("n_test = 100", "n_test = 100\nn_validation = 0", "[protocol] n_validation = 0"),
    ("n_test = 100", "n_test = 450", "n_test = 450 and [scales.ci] n_validation = 50 leave 0"),
    (CI_VAL, "rmax = 3.0\nn_validation = 401", "n_validation = 401 leave -1 training images"),
    ("n_images = 500", "n_images = 150", "leave 0 training images of the 150 images"),
]


@pytest.mark.parametrize("old, new, needle", BAD_SPLITS, ids=[b[1] for b in BAD_SPLITS])
def test_bad_split_sizes_are_refused_before_any_work(tmp_path, old, new, needle):
    task, cache = edited_task(tmp_path, old, new), tmp_path / "cache"
    for call in (lambda: cryobench.load_task(task, "ci", data_dir=cache, progress=False),
                 lambda: split_sizes(task, "ci"),
                 lambda: task_hash(task, "ci", data_dir=cache)):
        with pytest.raises(InputError) as info:
            call()
        assert str(task) in str(info.value) and needle in str(info.value), str(info.value)
    assert not cache.exists()                   # nothing simulated
    for command in ("info", "simulate"):
        proc = subprocess.run([sys.executable, "-m", "cryobench.cli", command, str(task), "--scale",
                               "ci", "--data-dir", str(cache)], capture_output=True, text=True)
        err = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(err) == 1 and needle in err[0] and proc.stdout == ""
    assert not cache.exists()


def test_a_missing_n_validation_is_refused(tmp_path):
    task = edited_task(tmp_path, CI_VAL, "rmax = 3.0")
    with pytest.raises(InputError, match=r"task.toml: n_validation is missing: .*\[scales.ci\]"):
        split_sizes(task, "ci")


def test_make_splits_itself_refuses_sizes_that_cannot_be_meant():
    for args in [(10, 0, 3), (10, 3, -1), (10, 5, 5), (10, 2.0, 3)]:
        with pytest.raises(ValueError):
            make_splits("t", 1, *args)


# ------------------------------------------------------------------ duplicate particles
def star_files(tmp_path, images):
    n = len(images)
    rng = np.random.default_rng(1)
    ctf = CTFParams(rng.uniform(1e4, 3e4, n), rng.uniform(1e4, 3e4, n), rng.uniform(0, 180, n),
                    300, 2.7, 0.1, 0, 0)
    write_particles(tmp_path / "particles.star", tmp_path / "particles.mrcs", images, ctf, 6.0)
    return tmp_path / "particles.star"


def star_task(tmp_path, n_validation=10):
    spec = tmp_path / "real.toml"
    spec.write_text(f"""name = "real"\nseed = 3\n[dataset]\nkind = "star"\nstar = "particles.star"
particle_radius = 40.0\n[protocol]\nn_test = 100\n[scales.ci]\nrmax = 3.0
n_validation = {n_validation}\n""")
    return spec


def noise(n, seed=2):
    return np.random.default_rng(seed).normal(size=(n, 24, 24)).astype(np.float32)


def test_a_star_file_naming_one_image_twice_is_refused(tmp_path):
    star = star_files(tmp_path, noise(160))
    table = starfile.read(star)
    table["particles"].loc[41, "rlnImageName"] = " 000007@particles.mrcs"   # row 42 = row 7
    starfile.write(table, star, overwrite=True, float_format="%.12g")
    with pytest.raises(InputError) as info:
        read_particles(star)
    assert str(info.value) == (f"{star}: rows 7 and 42 both name image 7 of particles.mrcs (column "
                               f"rlnImageName); a particle listed twice could fall into two splits")
    with pytest.raises(InputError, match="rows 7 and 42 both name image 7"):
        cryobench.load_task(star_task(tmp_path), "ci", data_dir=tmp_path / "cache", progress=False)


@pytest.mark.parametrize("memory_map", [False, True])
def test_a_stack_holding_identical_images_is_refused(tmp_path, memory_map):
    images = noise(160)
    images[120] = images[33]
    star = star_files(tmp_path, images)
    with pytest.raises(InputError) as info:
        read_particles(star, memory_map=memory_map)
    assert str(info.value) == (f"{star}: rows 34 and 121 hold identical images (image 34 of "
                               f"particles.mrcs and image 121 of particles.mrcs); a duplicated "
                               f"particle could fall into two splits")
    images[120, 5, 5] += 1e-3                  # nearly identical is a different particle
    star = star_files(tmp_path, images)
    assert len(read_particles(star, memory_map=memory_map).images) == 160


def test_identical_images_in_two_stacks_are_refused(tmp_path):
    images = noise(160)
    star = star_files(tmp_path, images)
    import mrcfile
    with mrcfile.new(tmp_path / "second.mrcs") as mrc:
        mrc.set_data(images[:3].copy())
    table = starfile.read(star)
    table["particles"].loc[150, "rlnImageName"] = "000002@second.mrcs"   # = image 2 of the first
    starfile.write(table, star, overwrite=True, float_format="%.12g")
    with pytest.raises(InputError, match=r"rows 2 and 151 hold identical images \(image 2 of "
                                         r"particles.mrcs and image 2 of second.mrcs\)"):
        read_particles(star)


def test_a_star_task_too_small_for_its_splits_is_refused_before_its_stack_is_read(tmp_path):
    star_files(tmp_path, noise(160))
    spec = star_task(tmp_path, n_validation=60)
    Path(tmp_path / "particles.mrcs").unlink()   # would be "stack not found" if it were read
    with pytest.raises(InputError, match=r"real.toml: \[protocol\] n_test = 100 and "
                                         r"\[scales.ci\] n_validation = 60 leave 0 training "
                                         r"images of the 160 images"):
        cryobench.load_task(spec, "ci", data_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()
