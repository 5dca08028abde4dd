"""Sizes that cannot be meant are refused in one line naming the file and the key, before any
array is allocated: a volume or a quadrature larger than the machine, shifts wider than the
image; the shipped tasks pass at every scale."""
import subprocess
import sys

import pytest

from cryobench import InputError
from cryobench.data.sizes import check_sizes, quadrature_counts
from cryobench.data.spec import SCALES, TASKS_DIR, known_tasks, load_spec
from cryobench.model.quadrature import quadrature_for

GIB = 2**30


def edited(tmp_path, task, old, new):
    text = (TASKS_DIR / f"{task}.toml").read_text()
    assert old in text, old
    path = tmp_path / "task.toml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize("rmax, box, sigma_px, truncation", [
    (10.24, 128, 4.5 / 2.8, 2.0), (5.0, 48, 3.0, 3.0), (10.0, 64, 7.7, 2.5), (3.0, 24, 0.0, 2.0)])
def test_the_counts_are_those_of_the_quadrature(rmax, box, sigma_px, truncation):
    """Shifts counted exactly; directions at most the Lebedev rule's (it rounds up)."""
    quad = quadrature_for(rmax, box, sigma_px, truncation)
    nd, na, ns = quadrature_counts(rmax, box, sigma_px, truncation)
    assert (na, ns) == (len(quad.inplane_angles), len(quad.shifts))
    assert 0.85 * len(quad.directions) <= nd <= len(quad.directions)


@pytest.mark.parametrize("task", known_tasks())
def test_the_shipped_tasks_fit_this_machine(task):
    spec = load_spec(task)
    for scale in SCALES:
        if scale in spec.raw["scales"]:
            check_sizes(spec, spec.scale(scale), memory=16 * GIB)


def test_a_volume_larger_than_the_memory(tmp_path):
    spec = load_spec(edited(tmp_path, "synthetic-cylinder", "box = 24", "box = 100000"))
    with pytest.raises(InputError, match=r"task.toml: \[scales.ci\] box = 100000: a 100000³ "
                                         r"volume needs about .* GiB of memory"):
        check_sizes(spec, spec.scale("ci"))


def test_a_quadrature_larger_than_the_memory_names_its_keys(tmp_path):
    path = edited(tmp_path, "thermus-style", "shift_sigma = 4.5          # Å: Gaussian",
                  "shift_sigma = 60.0          # Å: Gaussian")
    spec = load_spec(path)
    check_sizes(spec, spec.scale("ci"), memory=64 * GIB)          # fits a large machine
    with pytest.raises(InputError, match=r"\[scales.ci\] rmax = 3 and \[objective\] shift_sigma = "
                                         r"60 Å: the quadrature has .* shifts, so a minibatch of "
                                         r"100 images needs about"):
        check_sizes(spec, spec.scale("ci"), memory=GIB // 16)


@pytest.mark.parametrize("old, new, key", [
    ("shift_sigma = 4.5          # Å: Gaussian", "shift_sigma = 1e6          # Å: Gaussian",
     "[objective] shift_sigma = 1e+06 Å"),
    ("shift_sigma = 4.5          # Å, sd", "shift_sigma = 1e6          # Å, sd",
     "[dataset] shift_sigma = 1e+06 Å")])
def test_shifts_beyond_half_the_image(tmp_path, old, new, key):
    spec = load_spec(edited(tmp_path, "thermus-style", old, new))
    with pytest.raises(InputError) as err:
        check_sizes(spec, spec.scale("ci"))
    assert key in str(err.value) and "beyond half the image (179.2 Å at scale 'ci')" in str(err.value)


def test_the_command_line_refuses_before_simulating(tmp_path):
    """`simulate` of an impossible box: one line, exit 2, nothing written."""
    path = edited(tmp_path, "synthetic-cylinder", "box = 24", "box = 100000")
    done = subprocess.run([sys.executable, "-m", "cryobench.cli", "simulate", str(path), "--scale",
                           "ci", "--data-dir", str(tmp_path / "data")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "box = 100000" in done.stderr
    assert not (tmp_path / "data").exists()
