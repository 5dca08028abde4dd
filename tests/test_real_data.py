"""Real particle data as a first-class task (issue 12): origins, a reference map, the contrast
check, tuned values keyed by task identity, default scales, and the walkthrough of docs/real-data.md run
through the command line on data written in another package's conventions (tests/foreign.py)."""
import json
import logging
import re

import foreign as fx
import mrcfile
import numpy as np
import pytest

import cryobench
from cryobench import InputError
from cryobench.cli import main
from cryobench.data.datasets import load_dataset
from cryobench.data.images import fourier_crop
from cryobench.data.realdata import contrast_z, recentre, resample_map
from cryobench.data.spec import TASKS_DIR, load_spec
from cryobench.data.star import read_particles
from cryobench.harness.registry import resolve
from cryobench.base.paths import REPO_DIR
from cryobench.harness.plan import Planner, resolve_params
from cryobench.harness.record import RunSpec
from cryobench.harness.run import execute
from cryobench.model.views import lowpass
from cryobench.harness.tuned import DEFAULT_TUNED, default_tuned_file, load_tuned
from cryobench.model.fsc import aligned_fsc
from cryobench.task import task_hash, task_recipe


def cryobench_messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "cryobench"]


# ------------------------------------------------------------------ 1. origins
@pytest.mark.parametrize("unit", ["Å", "px"])
def test_origins_recentre_off_centre_particles(tmp_path, unit):
    centred, shifted, shifts, ctf, _ = fx.simulate(120, seed=3)
    fx.write_stack(tmp_path / "p.mrcs", shifted)
    origins = -shifts * (fx.PIXEL if unit == "Å" else 1.0)        # RELION: centre = box centre − origin
    fx.write_star(tmp_path / "particles.star", "p.mrcs", ctf, origins, unit)
    particles = read_particles(tmp_path / "particles.star")
    np.testing.assert_allclose(particles.origins, -shifts, atol=1e-5)
    scale = np.abs(centred).max()
    assert np.abs(particles.images - centred).max() > 0.3 * scale    # really off-centre
    assert np.abs(recentre(particles.images, particles.origins) - centred).max() < 1e-4 * scale


def test_loaded_task_is_recentred_and_the_true_density_fits_better(tmp_path):
    phantom, ctf, shifts = fx.foreign_dataset(tmp_path, n=300, black=False)
    with_origins = cryobench.load_task(fx.write_task(tmp_path), data_dir=tmp_path / "cache",
                                       progress=False)
    fx.write_star(tmp_path / "particles.star", "particles.mrcs", ctf)       # origins left out
    without = cryobench.load_task(fx.write_task(tmp_path), data_dir=tmp_path / "cache",
                                  progress=False)
    clean = fourier_crop(fx.simulate(300, seed=0)[0], 24)                    # centred, no noise
    noise = fourier_crop(np.random.default_rng(1).standard_normal(clean.shape[:1] + (32, 32)), 24)
    residual = (with_origins.dataset.images - clean).std()
    assert residual == pytest.approx(noise.std(), rel=0.02)               # only the noise is left
    assert (without.dataset.images - clean).std() > 1.1 * residual     # off-centre signal too
    truth = with_origins.dataset.ground_truth
    assert with_origins.test_nll(truth) < without.test_nll(truth) - 20


def test_half_an_origin_pair_is_one_clear_error(tmp_path):
    _, shifted, shifts, ctf, _ = fx.simulate(10)
    fx.write_stack(tmp_path / "p.mrcs", shifted)
    fx.write_star(tmp_path / "particles.star", "p.mrcs", ctf, -shifts * fx.PIXEL)
    star = tmp_path / "particles.star"
    star.write_text(star.read_text().replace("_rlnOriginYAngst", "_rlnSomethingElse"))
    with pytest.raises(InputError, match="particles.star: column rlnOriginXAngst .* rlnOriginYAngst"):
        read_particles(star)


# ------------------------------------------------------------------ 2. reference map
def test_resample_map_matches_the_map_sampled_on_the_new_grid():
    def blob(n, voxel):
        x = (np.arange(n) - n // 2) * voxel
        z, y, xx = np.meshgrid(x, x, x, indexing="ij")
        return np.exp(-((xx - 5) ** 2 + (y + 3) ** 2 + (z - 2) ** 2) / (2 * 8.0**2))
    ref = blob(40, 2.0)
    np.testing.assert_allclose(resample_map(ref, 2.0, 40, 2.0), ref, atol=1e-5)
    for box, pixel in [(24, 3.0), (32, 3.3), (64, 1.5)]:       # coarser, odd ratio, finer + pad
        np.testing.assert_allclose(resample_map(ref, 2.0, box, pixel), blob(box, pixel), atol=1e-3)


def test_reference_map_gives_fsc_views_and_enters_the_task_hash(tmp_path):
    phantom, *_ = fx.foreign_dataset(tmp_path, n=300, black=False, reference=(40, 10.0))
    path = fx.write_task(tmp_path)
    task = cryobench.load_task(path, data_dir=tmp_path / "cache", progress=False)
    truth = task.dataset.ground_truth
    assert truth.shape == (24, 24, 24) and task.dataset.pixel_size == pytest.approx(16.0)
    direct = phantom.to_volume(24, 16.0)            # the map rendered on the task's own grid
    assert np.corrcoef(lowpass(truth, 6).ravel(), lowpass(direct, 6).ravel())[0, 1] > 0.998
    out = execute(RunSpec(str(path), "tiny", "sgd", {"lr": 0.5}, budget=300), task, resolve("sgd"))
    assert set(out.views) == {"final", "ground_truth"} and set(out.fsc["label"]) == {"final"}
    assert np.isfinite(out.record.snapshots[-1]["resolution_A"])
    with mrcfile.open(tmp_path / "reference.mrc", "r+") as mrc:     # other bytes, same shape
        mrc.data[0, 0, 0] += 1.0
    assert task_hash(path, None, tmp_path / "cache") != task.content_hash


@pytest.mark.parametrize("shape, voxel, needle", [((40, 40, 40), 0.0, "voxel size 0 Å"),
                                                  ((40, 40, 36), 10.0, "must be a cube"),
                                                  ((20, 20, 20), 10.0, "less than the particle")])
def test_unusable_reference_is_one_clear_line(tmp_path, capsys, shape, voxel, needle):
    fx.foreign_dataset(tmp_path, n=150, black=False, reference=None)
    fx.write_map(tmp_path / "reference.mrc", np.ones(shape), voxel)
    code = main(["info", str(fx.write_task(tmp_path)), "--data-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0] and "reference.mrc" in err[0]


# ------------------------------------------------------------------ 3. contrast
def test_contrast_score_on_simulated_data_both_signs(data_dir):
    spec = load_spec("thermus-style")
    data = load_dataset(spec, spec.scale("ci"), data_dir, progress=False)
    images = np.asarray(data.images)
    args = (data.ctf, data.sigma, data.pixel_size, data.particle_radius)
    assert contrast_z(images, *args) > 5 and contrast_z(-images, *args) < -5


@pytest.mark.parametrize("black, invert, advice", [(False, False, None),
                                                   (True, False, "invert_sign = true"),
                                                   (True, True, None),
                                                   (False, True, "invert_sign = false")])
def test_contrast_check_says_which_setting_to_change(tmp_path, caplog, black, invert, advice):
    fx.foreign_dataset(tmp_path, n=200, black=black, reference=None)
    spec = load_spec(fx.write_task(tmp_path, invert=invert, reference=False))
    with caplog.at_level(logging.WARNING, logger="cryobench"):
        for _ in range(2):                                        # loaded twice, said once
            data = load_dataset(spec, spec.scale(), tmp_path, progress=False)
    said = cryobench_messages(caplog)
    if advice is None:
        assert data.contrast_z > 3 and said == []
    else:
        assert data.contrast_z < -3 and len(said) == 1
        assert advice in said[0] and f"[dataset] of {spec.path}" in said[0]


# ------------------------------------------------------------------ 4. tuned values
def test_tuned_values_follow_the_task_identity_not_its_path(tmp_path, caplog, monkeypatch):
    fx.foreign_dataset(tmp_path, n=200, black=False, reference=None)
    path = fx.write_task(tmp_path, reference=False)
    cache, sgd = tmp_path / "cache", resolve("sgd")
    entry = {"params": {"lr": 0.0123}, "task_hash": task_hash(path, "tiny", cache)}
    tuned = {"my-particles": {"tiny": {"sgd": entry}}}
    monkeypatch.chdir(tmp_path)
    for spelling in (str(path), "my-particles.toml", f"../{tmp_path.name}/./my-particles.toml"):
        params, source = resolve_params(sgd, {}, tuned, Planner(cache).task(spelling, "tiny"))
        assert params["lr"] == 0.0123 and source["lr"] == "tuned"
    path.write_text(path.read_text().replace("particle_radius = 150.0", "particle_radius = 140.0"))
    with caplog.at_level(logging.WARNING, logger="cryobench"):
        params, source = resolve_params(sgd, {}, tuned, Planner(cache).task(str(path), "tiny"))
    assert params["lr"] == sgd.hypers["lr"].default and source["lr"] == "default"
    notes = cryobench_messages(caplog)
    assert len(notes) == 1 and "were for task content" in notes[0] and "tune again" in notes[0]
    legacy = {"my-particles": {"tiny": {"sgd": {"params": {"lr": 0.0123}}}}}   # no hash
    assert resolve_params(sgd, {}, legacy, Planner(cache).task(str(path), "tiny"))[1]["lr"] == "default"
    assert default_tuned_file("my-particles.toml") == tmp_path / "my-particles.tuned.json"
    assert task_recipe(path, "tiny", cache) == task_hash(path, "tiny", cache)   # its files are it


def test_tuned_values_follow_the_recipe_not_the_bits_of_a_simulation(tmp_path, caplog):
    """Recorded on a platform whose BLAS kernel simulated other last bits (another content
    hash), tuned values still apply to the same recipe, found without simulating; not to
    another recipe."""
    sgd, empty = resolve("sgd"), tmp_path / "no-data"
    recipe = task_recipe("synthetic-cylinder", "ci", empty)
    entry = {"params": {"lr": 0.0123}, "task_hash": "f" * 64, "task_recipe": recipe}
    params, source = resolve_params(sgd, {}, {"synthetic-cylinder": {"ci": {"sgd": entry}}},
                                    Planner(empty).task("synthetic-cylinder", "ci"))
    assert params["lr"] == 0.0123 and source["lr"] == "tuned" and not empty.exists()
    entry["task_recipe"] = "0" * 64
    with caplog.at_level(logging.WARNING, logger="cryobench"):
        params, source = resolve_params(sgd, {}, {"synthetic-cylinder": {"ci": {"sgd": entry}}},
                                        Planner(empty).task("synthetic-cylinder", "ci"))
    assert source["lr"] == "default" and "were for task content 000000000000" in caplog.text


def test_committed_tuned_values_still_found_for_the_shipped_tasks():
    committed, sgd = load_tuned(DEFAULT_TUNED), resolve("sgd")
    lr = committed["synthetic-cylinder"]["small"]["sgd"]["params"]["lr"]
    for spelling in ("synthetic-cylinder", str(TASKS_DIR / "synthetic-cylinder.toml"),
                     str(TASKS_DIR / ".." / "tasks" / "synthetic-cylinder.toml")):
        params, source = resolve_params(sgd, {}, committed, Planner().task(spelling, "small"))
        assert params["lr"] == lr and source["lr"] == "tuned"
    assert default_tuned_file("thermus-style") == DEFAULT_TUNED


# ------------------------------------------------------------------ 5. scales
def test_a_task_without_ci_gets_its_own_default_scale(tmp_path, capsys):
    fx.foreign_dataset(tmp_path, n=200, black=False, reference=None)
    path = fx.write_task(tmp_path, reference=False)                       # only [scales.tiny]
    assert load_spec(path).default_scale == "tiny"
    assert main(["info", str(path), "--data-dir", str(tmp_path / "cache")]) == 0
    assert re.search(r"^scale\s+tiny$", capsys.readouterr().out, re.M)
    two = fx.write_task(tmp_path, reference=False, extra="[scales.big]\nrmax = 4.0\n")
    with pytest.raises(InputError, match=r"several \(tiny, big\) but no default_scale"):
        load_spec(two).default_scale
    two.write_text('default_scale = "big"\n' + two.read_text())
    assert load_spec(two).default_scale == "big"
    assert main(["info", str(two), "--scale", "ci", "--data-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown scale 'ci'; this task has tiny, big" in err[0]


@pytest.mark.parametrize("command", ["info", "simulate", "run", "tune", "bench"])
def test_scale_help_names_the_tasks_own_scales(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "[scales.NAME]" in capsys.readouterr().out


# ------------------------------------------------------------------ 6. the docs/real-data.md walkthrough
def test_readme_walkthrough_on_data_from_another_package(tmp_path, capsys, caplog, monkeypatch):
    """Black particles (opposite CTF sign), origins in Å, no # version line, extra columns,
    particles off-centre; a reference map at another box and voxel size."""
    fx.foreign_dataset(tmp_path, n=400, black=True)
    data = str(tmp_path / "cache")
    task = fx.write_task(tmp_path, invert=False)
    with caplog.at_level(logging.WARNING, logger="cryobench"):
        assert main(["info", str(task), "--data-dir", data]) == 0
    said = cryobench_messages(caplog)
    assert len(said) == 1 and f"set invert_sign = true in [dataset] of {task}" in said[0]
    task = fx.write_task(tmp_path, invert=True)                    # the user follows the advice
    assert main(["info", str(task), "--data-dir", data]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^origins\s+applied", out, re.M) and "as the model expects" in out
    assert re.search(r"^reference\s+reference.mrc \(resampled to 24 px, 16 Å/px\)", out, re.M)

    loaded = cryobench.load_task(task, data_dir=data, progress=False)
    before = aligned_fsc(loaded.init, loaded.dataset.ground_truth, 16.0).resolution

    committed = DEFAULT_TUNED.read_bytes()
    assert main(["tune", str(task), "--optimizers", "sgd", "--points", "4", "--budget", "300",
                 "--workers", "2", "--quiet", "--data-dir", data]) == 0
    beside = tmp_path / "my-particles.tuned.json"
    assert f"recorded in {beside}" in capsys.readouterr().out
    assert DEFAULT_TUNED.read_bytes() == committed and not (REPO_DIR / "results/tune/tiny").exists()
    lr = json.loads(beside.read_text())["my-particles"]["tiny"]["sgd"]["params"]["lr"]

    monkeypatch.chdir(tmp_path)                                   # another spelling of the path
    assert main(["run", "my-particles.toml", "sgd", "--budget", "2000", "--data-dir", data,
                 "--out", "runs"]) == 0
    out = capsys.readouterr().out
    assert f"lr={lr:g} (tuned)" in out and "status ok" in out
    after = float(re.search(r"FSC 0.5 at ([\d.]+) Å", out).group(1))
    assert after < before
