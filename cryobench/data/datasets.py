"""Where a task's images come from: a cached simulation or a RELION STAR file.

Simulated datasets are written once under ``DATA_DIR/<task>/<scale>-<hash>/`` (the hash covers
every simulation parameter and the simulator's format version), atomically: the simulation is
written into a temporary folder that is renamed into place when complete, with a
``manifest.json`` of the SHA-256 of every file. A STAR task reads the user's files in place.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryobench.base.messages import warn_once
from cryobench.base.seeding import content_hash, derive_seed
from cryobench.data.cache import (MANIFEST, discard, file_sha256, fs_now, manifest_problem,
                                  record_verified, remove_dead_temporaries, temporary_dir)
from cryobench.data.images import estimate_noise_sigma, fourier_crop
from cryobench.data.mrc import read_volume
from cryobench.data.realdata import contrast_advice, contrast_z, load_reference, recentre
from cryobench.data.simulate import FORMAT_VERSION, SimulationParams, simulate
from cryobench.data.sizes import check_sizes
from cryobench.data.spec import Scale, TaskSpec, check_splits, load_spec
from cryobench.data.star import count_particles, read_particles
from cryobench.errors import InputError
from cryobench.model.ctf import CTFParams

SIMULATED_FILES = ("particles.star", "particles.mrcs", "ground_truth.mrc", "poses.csv", "meta.json")


# A dataset is always simulated in a fresh Python process started with this many BLAS threads:
# a process's thread state (limits set by earlier work, the libraries loaded) is not fully under
# a caller's control. Since format 2 (cryobench.data.simulate) the bits no longer depend on the
# thread count, the BLAS kernel or the CPU (cryobench.base.portable; tests/test_platform.py), so
# this only keeps the simulation's resources what they were.
SIMULATION_THREADS = 2


def simulate_in_fresh_process(spec: TaskSpec, scale: Scale, folder: Path, progress: bool) -> None:
    """Simulate ``spec`` at ``scale`` into ``folder`` in a new process with
    :data:`SIMULATION_THREADS` BLAS threads (so the bits never depend on the caller's state)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["OPENBLAS_NUM_THREADS"] = str(SIMULATION_THREADS)
    code = ("import sys; from pathlib import Path; from cryobench.data.spec import load_spec; "
            "from cryobench.data.datasets import simulation_params; "
            "from cryobench.data.simulate import simulate; spec = load_spec(sys.argv[1]); "
            "simulate(simulation_params(spec, spec.scale(sys.argv[2])), Path(sys.argv[3]), "
            "progress=sys.argv[4] == '1')")
    done = subprocess.run([sys.executable, "-c", code, str(spec.path), scale.name, str(folder),
                           "1" if progress else "0"], env=env, stdout=subprocess.DEVNULL,
                          stderr=None if progress else subprocess.PIPE, text=True)
    if done.returncode != 0:
        lines = (done.stderr or "").strip().splitlines()
        raise RuntimeError(f"simulating {spec.name} ({scale.name}) failed: "
                           f"{lines[-1] if lines else f'exit status {done.returncode}'}")


def home_data_dir() -> Path:
    """The dataset cache when ``$CRYOBENCH_DATA`` is not set: ``~/.cache/cryobench``."""
    return Path.home() / ".cache" / "cryobench"


def default_data_dir() -> Path:
    """``$CRYOBENCH_DATA`` if set, else :func:`home_data_dir`."""
    env = os.environ.get("CRYOBENCH_DATA")
    return Path(env) if env else home_data_dir()


@dataclass(frozen=True)
class Dataset:
    """Images (σ-whitened later by the likelihood), CTFs, noise σ per image and provenance.

    A simulated dataset's ``images`` are a read-only memory map of its stack (read on demand).
    """

    images: np.ndarray
    ctf: CTFParams
    sigma: np.ndarray
    pixel_size: float
    particle_radius: float      # Å
    files_hash: str
    directory: Path | None
    ground_truth: np.ndarray | None = None
    contrast_z: float | None = None   # STAR data: evidence for the model's sign (realdata.py)


def simulation_params(spec: TaskSpec, scale: Scale):
    """The :class:`SimulationParams` of a simulated task at a scale."""
    recipe = spec.section("dataset")
    recipe.pop("kind", None)
    for key in ("n_images", "box", "pixel_size"):
        if getattr(scale, key) is None:
            raise InputError(f"{spec.path}: [scales.{scale.name}] needs {key} for a simulated dataset")
        recipe[key] = getattr(scale, key)
    recipe["seed"] = derive_seed(spec.name, spec.seed, "simulation", scale.name)
    try:
        return SimulationParams.from_mapping(recipe)
    except ValueError as exc:
        raise InputError(f"{spec.path}: [dataset] {exc}") from None


def simulated_dir(spec: TaskSpec, scale: Scale, data_dir: Path) -> Path:
    """The cache folder of a simulated task at a scale (it may not exist yet)."""
    key = content_hash({"params": simulation_params(spec, scale).to_dict(), "format": FORMAT_VERSION})
    return Path(data_dir) / spec.name / f"{scale.name}-{key[:12]}"


def ensure_simulated(spec: TaskSpec, scale: Scale, data_dir: Path, progress: bool = True) -> Path:
    """The folder of the task's simulated dataset, verified against its manifest.

    A folder whose files differ from ``manifest.json`` (rewritten, truncated, deleted), or that has
    no readable manifest (a killed writer's leftover), is removed and simulated again, with one
    line on stderr saying why. Temporaries of killed simulations (see
    :func:`cryobench.data.cache.remove_dead_temporaries`) are removed first.
    """
    target = simulated_dir(spec, scale, data_dir)
    if target.parent.is_dir():
        remove_dead_temporaries(target.parent)
    if target.exists():
        problem = manifest_problem(target, SIMULATED_FILES) if target.is_dir() else "not a folder"
        if problem is None:
            return target
        print(f"cryobench: {target}: {problem}; removing the folder and simulating the dataset again",
              file=sys.stderr)
        discard(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_dir(target.parent, target.name)
    try:
        simulate_in_fresh_process(spec, scale, tmp, progress)
        since = fs_now(tmp)
        manifest = {name: file_sha256(tmp / name) for name in SIMULATED_FILES}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        record_verified(tmp, manifest, since)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first: keep theirs
            if not (target / MANIFEST).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def simulate_task(name_or_path, scale: str | None, data_dir: Path, out: Path | None = None,
                  progress: bool = True) -> tuple[str, str, int, Path]:
    """Simulate a task's dataset into the cache (or into ``out``); (task, scale, images, folder).
    A task that reads a STAR file, or whose splits do not fit, is refused in one line."""
    spec = load_spec(name_or_path)
    sc = spec.scale(scale)
    if spec.section("dataset").get("kind") != "simulated":
        raise InputError(f"{spec.path}: task {spec.name!r} reads a STAR file; nothing to simulate")
    check_sizes(spec, sc)
    check_splits(spec, sc, sc.n_images or 0)
    if out is not None:
        meta = simulate(simulation_params(spec, sc), Path(out), progress=progress)
        folder = Path(out)
    else:
        folder = ensure_simulated(spec, sc, data_dir, progress=progress)
        meta = json.loads((folder / "meta.json").read_text())
    return spec.name, sc.name, meta["params"]["n_images"], folder


def dataset_size(spec: TaskSpec, scale: Scale) -> int:
    """The number of images a task has at a scale, without simulating or reading any stack."""
    recipe = spec.section("dataset")
    kind = recipe.get("kind")
    if kind not in ("simulated", "star"):
        raise InputError(f"{spec.path}: [dataset] kind must be 'simulated' or 'star', got {kind!r}")
    if kind == "star":
        if "star" not in recipe:
            raise InputError(f"{spec.path}: [dataset] needs 'star' for a STAR dataset")
        return count_particles((spec.path.parent / recipe["star"]).resolve(), scale.n_images)
    if scale.n_images is None:
        raise InputError(f"{spec.path}: [scales.{scale.name}] needs n_images for a simulated dataset")
    return scale.n_images


def checked_sizes(spec: TaskSpec, scale: Scale) -> dict:
    """The split sizes {"train", "validation", "test"} of a task at a scale, after refusing in
    one line sizes that cannot be meant (:func:`cryobench.data.sizes.check_sizes`) and splits
    that do not fit (:func:`cryobench.data.spec.check_splits`): call it before any work."""
    check_sizes(spec, scale)
    return check_splits(spec, scale, dataset_size(spec, scale))


def load_dataset(spec: TaskSpec, scale: Scale, data_dir: Path, progress: bool = True) -> Dataset:
    """Read (simulating first if needed) the images of a task at a scale."""
    kind = spec.section("dataset").get("kind")
    if kind == "simulated":
        return _load_simulated(spec, scale, data_dir, progress)
    if kind == "star":
        return _load_star(spec, scale)
    raise InputError(f"{spec.path}: [dataset] kind must be 'simulated' or 'star', got {kind!r}")


def _load_simulated(spec, scale, data_dir, progress) -> Dataset:
    folder = ensure_simulated(spec, scale, data_dir, progress)
    particles = read_particles(folder / "particles.star", memory_map=True, check_images=False)
    meta = json.loads((folder / "meta.json").read_text())
    truth, _ = read_volume(folder / "ground_truth.mrc")
    sigma = np.full(len(particles.images), float(meta["noise_sigma"]))
    return Dataset(particles.images, particles.ctf, sigma, particles.pixel_size,
                   float(meta["particle_radius_px"]) * particles.pixel_size,
                   (folder / "manifest.json").read_text(), folder, truth)


def _load_star(spec, scale) -> Dataset:
    """A STAR task's images: read, sign-inverted if asked, re-centred by their origins, Fourier-
    cropped to the scale's box, σ-estimated; the optional reference map resampled to the same
    grid; and the contrast checked (one warning when the data prefer the negated density)."""
    recipe = spec.section("dataset")
    allowed = {"kind", "star", "particle_radius", "invert_sign", "reference"}
    unknown = sorted(set(recipe) - allowed)
    if unknown:
        raise InputError(f"{spec.path}: [dataset] has unknown key {unknown[0]!r}; allowed: "
                         f"{', '.join(sorted(allowed))}")
    for key in ("star", "particle_radius"):
        if key not in recipe:
            raise InputError(f"{spec.path}: [dataset] needs {key!r} for a STAR dataset")
    where = f"{spec.path}: [scales.{scale.name}] box = {scale.box}"
    if scale.box is not None and scale.box % 2:
        raise InputError(f"{where} is odd; a STAR task's box must be even (Fourier cropping keeps "
                         f"an even box's Nyquist row, and RELION extracts even boxes only)")
    star = (spec.path.parent / recipe["star"]).resolve()
    particles = read_particles(star, max_images=scale.n_images)
    images, pixel_size = particles.images, particles.pixel_size
    d = images.shape[-1]
    if scale.box is not None and scale.box > d:
        raise InputError(f"{where} is larger than the {d}×{d}-pixel images of {star}; images "
                         f"are Fourier-cropped, never padded: use a box ≤ {d} or leave it out")
    invert = bool(recipe.get("invert_sign", False))
    if invert:
        images = -images
    if particles.origins is not None and np.any(particles.origins != 0):
        images = recentre(images, particles.origins)
    if scale.box is not None and scale.box < d:
        pixel_size *= d / scale.box
        images = fourier_crop(images, scale.box)
    radius = float(recipe["particle_radius"])
    radius_px = radius / pixel_size
    sigma = estimate_noise_sigma(images, radius_px)
    if not np.all(sigma > 0):
        bad = int(np.argmin(sigma))
        raise InputError(f"{star}: image {bad + 1} has zero noise outside the particle radius "
                         f"({recipe['particle_radius']} Å); cannot whiten it")
    truth, reference_sha = None, None
    if "reference" in recipe:
        ref = (spec.path.parent / recipe["reference"]).resolve()
        truth, reference_sha = load_reference(ref, images.shape[-1], pixel_size, radius,
                                              f"{spec.path}: [dataset] reference")
    z = contrast_z(images, particles.ctf, sigma, pixel_size, radius)
    advice = contrast_advice(z, invert, spec.path)
    if advice:
        warn_once(advice)
    files_hash = content_hash({"star": file_sha256(star), "reference": reference_sha,
                               "dataset": {k: v for k, v in recipe.items()
                                           if k not in ("star", "reference")},
                               "images": hashlib.sha256(np.ascontiguousarray(images)).hexdigest()})
    return Dataset(np.asarray(images, np.float32), particles.ctf, sigma, pixel_size,
                   radius, files_hash, None, truth, contrast_z=z)
