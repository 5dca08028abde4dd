"""A task: dataset + CTFs + quadrature + prior + initial density + splits + data order.

Everything an optimizer is compared on is fixed here and identical for every method:

* splits — ``n_test`` test images (the paper: 100) and ``n_validation`` images for tuning,
  drawn with a seed derived from the task; the rest are the K training images;
* the training stream — epoch e is a permutation of the training images seeded by
  (task, "stream", e); minibatches are consecutive pieces of the concatenated epochs, so the
  order is the same whatever the batch size;
* the initial density — a sum of random soft-edged spheres (paper Fig. 5), seeded by the task,
  scaled so its expected projected power under the data's CTFs matches the data's, and stored
  as ``init.mrc`` beside the task's derived files.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryobench.base.files import atomic_write
from cryobench.base.seeding import content_hash, rng_for
from cryobench.data.cache import file_sha256
from cryobench.data.datasets import (Dataset, checked_sizes, default_data_dir,
                                     ensure_simulated, load_dataset, simulated_dir)
from cryobench.data.initial import power_scale, spheres
from cryobench.data.mrc import read_volume, write_volume
from cryobench.data.realdata import CONTRAST_Z
from cryobench.data.refinement import (SUBOPT_IMAGES, cached_optimum, initial_map, is_refinement,
                                       refinement_lines)
from cryobench.data.refinement import parts as refinement_parts
from cryobench.data.star import read_particles
from cryobench.data.prepared import prepared_spectra
from cryobench.data.sizes import check_sizes, rmax_line
from cryobench.data.spec import TASKS_DIR, Scale, TaskSpec, check_splits, load_spec
from cryobench.errors import InputError
from cryobench.model.ctf import evaluate_ctf
from cryobench.model.likelihood import ImageSpectra, Likelihood
from cryobench.model.prior import Prior
from cryobench.model.quadrature import quadrature_for
from cryobench.importance import ImportanceOracle
from cryobench.model.importance import oracle_settings
from cryobench.oracle import Oracle, stream_slice

FORMAT_VERSION = 2      # 2: the initial density has the same bits on every machine (data/initial.py)


@dataclass
class Task:
    """A loaded task at one scale. Use :meth:`oracle` to optimise, :meth:`test_nll` to score."""

    spec: TaskSpec
    scale: Scale
    dataset: Dataset
    likelihood: Likelihood
    prior: Prior
    spectra: ImageSpectra
    splits: dict
    init: np.ndarray
    content_hash: str
    derived_dir: Path
    batch_size: int
    budget: int
    _stream_cache: dict = field(default_factory=dict, repr=False)
    _optimum: list = field(default_factory=list, repr=False)
    is_refinement: bool = False           # [objective] kind = "refinement" (data/refinement.py)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def n_train(self) -> int:
        """K, the number of training images."""
        return len(self.splits["train"])

    def epoch_order(self, epoch: int, stream: int = 0) -> np.ndarray:
        """Training image indices in the order of epoch ``epoch`` of training stream ``stream``.

        Stream 0 is the task's canonical order (the paper's single run); streams 1, 2, … are
        independent orders for repeated runs (seed bands). Every method run with the same stream
        sees the same images in the same order.
        """
        key = (stream, epoch)
        if key not in self._stream_cache:
            parts = ("stream", epoch) if stream == 0 else ("stream", stream, epoch)
            self._stream_cache = {key: rng_for(self.name, self.spec.seed, *parts)
                                  .permutation(self.splits["train"])}
        return self._stream_cache[key]

    def stream(self, start: int, size: int, stream: int = 0) -> np.ndarray:
        """Images at positions [start, start + size) of training stream ``stream``."""
        return stream_slice(start, size, self.n_train, lambda e: self.epoch_order(e, stream))

    def nll(self, volume: np.ndarray, index) -> np.ndarray:
        """−log p(I_i | θ_i, V) for the images ``index`` (float64, no prior), in chunks."""
        index = np.asarray(index)
        out = np.empty(len(index))
        for lo in range(0, len(index), self.batch_size):
            part = self.likelihood.subset(self.spectra, index[lo:lo + self.batch_size])
            out[lo:lo + self.batch_size] = self.likelihood.nll(volume, part)
        return out

    def test_nll(self, volume: np.ndarray) -> float:
        """Σ_{test} −log p(I_i | θ_i, V): the paper's y-axis (not counted by any oracle)."""
        return float(self.nll(volume, self.splits["test"]).sum())

    def validation_nll(self, volume: np.ndarray) -> float:
        """Σ_{validation} −log p(I_i | θ_i, V), for tuning."""
        return float(self.nll(volume, self.splits["validation"]).sum())

    @property
    def recipe_hash(self) -> str:
        """What the task is, independent of the bits a platform renders it with (see
        :func:`task_recipe`)."""
        if _is_simulated(self.spec):
            return _simulation_recipe(self.spec, self.scale, self.init.dtype)
        return self.content_hash

    def optimum(self, progress: bool = True) -> np.ndarray:
        """A refinement task's exact minimiser V* of the training objective (CG, cached beside
        the derived files; :func:`cryobench.data.refinement.cached_optimum`)."""
        if not self._optimum:                         # [V*, F_S(V*)/|S|]
            self._optimum.append(cached_optimum(
                self.likelihood, self.spectra, self.splits["train"], self.prior.alpha,
                self.derived_dir, self.dataset.pixel_size, progress)[0])
        return self._optimum[0]

    def suboptimality(self, volume: np.ndarray) -> float:
        """(F_S(V) − F_S(V*))/|S| of a refinement task: S the first SUBOPT_IMAGES training images
        (all of them at ci and small scale), F_S = Σ_S −log p + (|S|/K) ½α‖V‖²."""
        index = self.splits["train"][:SUBOPT_IMAGES]
        f = lambda v: float(self.nll(v, index).mean() + self.prior.value(v) / self.n_train)  # noqa
        if len(self._optimum) < 2:
            self._optimum[1:] = [f(self.optimum(progress=False))]
        return f(volume) - self._optimum[1]

    def oracle(self, budget: int | None = None, stream: int = 0, kind=None, optimizer: str = ""):
        """A fresh counted oracle on training stream ``stream`` (see :mod:`cryobench.oracle`):
        the exact one, or with ``kind`` (see :func:`cryobench.model.importance.oracle_settings`)
        the importance-sampled one of :mod:`cryobench.importance`, seeded by (task, ``optimizer``,
        ``stream``)."""
        budget = self.budget if budget is None else budget
        settings = oracle_settings(kind)
        if settings is None:
            return Oracle(self, budget, stream)
        if self.is_refinement:
            raise InputError(f"{self.name}: the importance-sampled oracle samples poses; a "
                             "refinement task's poses are known (use the exact oracle)")
        return ImportanceOracle(self, budget, stream, settings, optimizer)

    def write_density(self, volume: np.ndarray, path) -> None:
        """Write a density as MRC with this task's voxel size."""
        write_volume(path, volume, self.dataset.pixel_size)


def make_splits(name: str, seed: int, n_images: int, n_test: int, n_validation: int) -> dict:
    """Fixed test / validation / train index arrays (sorted) from a seed derived from the task.

    The three are disjoint and cover 0 … n_images − 1 (a permutation cut in three); a task's
    sizes are checked first by :func:`cryobench.data.spec.check_splits`, with its file named.
    """
    sizes = (n_images, n_test, n_validation)
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in sizes):
        raise ValueError(f"make_splits: sizes must be integers, got n_images={n_images!r}, "
                         f"n_test={n_test!r}, n_validation={n_validation!r}")
    if n_test < 1 or n_validation < 1 or n_test + n_validation >= n_images:
        raise ValueError(f"{n_images} images cannot hold {n_test} test and {n_validation} "
                         "validation images (each ≥ 1) and still leave training images")
    order = rng_for(name, seed, "splits").permutation(n_images)
    return {"test": np.sort(order[:n_test]),
            "validation": np.sort(order[n_test:n_test + n_validation]),
            "train": np.sort(order[n_test + n_validation:])}


def random_spheres(box: int, pixel_size: float, radius: float, rng: np.random.Generator,
                   n_spheres: int, radius_min: float, radius_max: float) -> np.ndarray:
    """Σ of ``n_spheres`` unit-density soft-edged balls (edge width 1 voxel), V[z, y, x].

    Centres are uniform in the ball of radius 0.7·``radius`` (Å) and radii uniform in
    [radius_min, radius_max]·``radius``; all lengths are converted to voxels.
    """
    r_px = radius / pixel_size
    c = (np.arange(box) - box // 2).astype(np.float64)
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    vol = np.zeros((box, box, box))
    for _ in range(n_spheres):
        u = rng.normal(size=3)
        centre = u / np.linalg.norm(u) * 0.7 * r_px * rng.uniform() ** (1 / 3)
        rad = rng.uniform(radius_min, radius_max) * r_px
        d = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
        vol += 0.5 * (1 - np.tanh((d - rad) / 0.5))
    return vol.astype(np.float32)


def match_power(volume: np.ndarray, likelihood: Likelihood, spectra: ImageSpectra) -> float:
    """Scale a making E_R Σ_q w C² |a P_R V̂|² equal the data's excess power Σ_q w (|Î|² − 1)."""
    slices = likelihood.slicer.forward(volume)
    dw = likelihood.quadrature.direction_weights
    mean_power = (np.abs(slices.astype(complex)) ** 2 * dw[:, None]).sum(0)        # (Np,)
    freq = likelihood.points / (likelihood.box * likelihood.pixel_size)
    ctf2 = (evaluate_ctf(spectra.ctf, freq[:, 0], freq[:, 1]) * spectra.inv_sigma[:, None]) ** 2
    w = likelihood.point_weights.astype(float)
    model = float((ctf2 * mean_power * w).sum())
    excess = float((2 * spectra.half_norms - w.sum()).sum())
    return float(np.sqrt(max(excess, 0.0) / model)) if model > 0 else 1.0


def likelihood_for(spec: TaskSpec, scale: Scale, box: int, pixel_size: float,
                   dtype=np.float32) -> Likelihood:
    """The likelihood (r_max, quadrature, oversampling) a task defines for a box and pixel size."""
    objective = spec.section("objective")
    rmax = scale.rmax_px(box)
    if not 0 < rmax < box / 2:
        raise ValueError(f"{spec.path}: r_max = {rmax} px must lie in (0, {box / 2}) for box {box}")
    quad = quadrature_for(rmax, box, objective.get("shift_sigma", 0.0) / pixel_size,
                          objective.get("shift_truncation", 2.0))
    return Likelihood(box, pixel_size, rmax, quad, objective.get("oversampling", 2), dtype)


def load_task(name_or_path, scale: str | None = None, data_dir=None, progress: bool = True,
              dtype=np.float32, tasks_dir: Path = TASKS_DIR) -> Task:
    """Load task ``name_or_path`` (a name in ``tasks/`` or a TOML path) at ``scale`` (None: the
    task's default scale, see :attr:`TaskSpec.default_scale`; ``ci`` for the shipped tasks)."""
    spec = load_spec(name_or_path, tasks_dir)
    sc = spec.scale(scale)
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    sizes = checked_sizes(spec, sc)      # before any simulation or reading
    data = load_dataset(spec, sc, data_dir, progress)
    box = data.images.shape[-1]
    check_sizes(spec, sc, box, data.pixel_size)                  # a STAR task's own box
    objective, protocol, init_spec = (spec.section(s) for s in ("objective", "protocol", "init"))
    splits = make_splits(spec.name, spec.seed, len(data.images), sizes["test"],
                         sizes["validation"])
    thash = _task_hash(spec, sc, data.files_hash, dtype)
    derived = data_dir / spec.name / f"{sc.name}-derived-{thash[:12]}"
    if is_refinement(spec):                       # known poses: data/refinement.py
        lik, prior, spectra = refinement_parts(spec, sc, data, dtype)
        init = initial_map(spec, data, box)
    else:
        lik = likelihood_for(spec, sc, box, data.pixel_size, dtype)
        prior = Prior(objective.get("prior_lambda_pos", 1e-4),
                      objective.get("prior_lambda_neg", 1e-4), objective.get("prior_beta", 1.0))
        spectra = prepared_spectra(lik, data.images, data.ctf, data.sigma, derived)
        init = _initial_density(spec, sc, data, lik, splits, init_spec, derived)
    batch = int(protocol.get("batch_size", 100))
    budget = int(protocol.get("budget_epochs", 10) * len(splits["train"]))
    return Task(spec, sc, data, lik, prior, spectra, splits, init.astype(dtype), thash, derived,
                batch, budget, is_refinement=is_refinement(spec))


def _task_hash(spec: TaskSpec, scale: Scale, files_hash: str, dtype) -> str:
    return content_hash({"format": FORMAT_VERSION, "files": files_hash, "scale": scale.__dict__,
                         **{s: spec.section(s) for s in ("objective", "protocol", "init")},
                         "dtype": np.dtype(dtype).name})


def task_identity(name_or_path, scale, data_dir=None, dtype=np.float32,
                  tasks_dir: Path = TASKS_DIR) -> tuple[str, str]:
    """(content hash, recipe hash) a loaded task would have, without preparing its images.

    The content hash covers the task's definition and its data: a simulated task is simulated
    first if needed (its hash covers the files' SHA-256 manifest); a STAR task's files are read
    to hash them. The recipe replaces a simulated dataset's files by what they are simulated
    from (the simulation parameters and the simulator's format version), so it is known without
    simulating; a STAR task's files are its data, so its recipe is its content hash. ``scale``:
    a name or a :class:`~cryobench.data.spec.Scale`.
    """
    spec = load_spec(name_or_path, tasks_dir)
    sc = scale if isinstance(scale, Scale) else spec.scale(scale)
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    checked_sizes(spec, sc)
    if _is_simulated(spec):
        files = (ensure_simulated(spec, sc, data_dir, progress=False) / "manifest.json").read_text()
        return _task_hash(spec, sc, files, dtype), _simulation_recipe(spec, sc, dtype)
    content = _task_hash(spec, sc, load_dataset(spec, sc, data_dir, progress=False).files_hash, dtype)
    return content, content


def task_hash(name_or_path, scale: str, data_dir=None, dtype=np.float32,
              tasks_dir: Path = TASKS_DIR) -> str:
    """The content hash a loaded task would have (see :func:`task_identity`)."""
    return task_identity(name_or_path, scale, data_dir, dtype, tasks_dir)[0]


def task_recipe(name_or_path, scale: str, data_dir=None, dtype=np.float32,
                tasks_dir: Path = TASKS_DIR) -> str:
    """The task's recipe hash (see :func:`task_identity`), without simulating.

    It identifies the task without simulating it, and changes when anything the task is made of
    changes, the simulator's code included (its format version). Tuned values and ``verify``
    match on it. Simulators before format 2 gave the same recipe other last bits (another
    content hash) under other BLAS kernels; since format 2 a simulated dataset has the same
    bits on every machine (:mod:`cryobench.base.portable`), so recipe and content hash name
    the same data everywhere.
    """
    spec = load_spec(name_or_path, tasks_dir)
    if _is_simulated(spec):
        return _simulation_recipe(spec, spec.scale(scale), dtype)
    return task_identity(spec, scale, data_dir, dtype, tasks_dir)[1]


def _is_simulated(spec: TaskSpec) -> bool:
    return spec.section("dataset").get("kind") == "simulated"


def _simulation_recipe(spec: TaskSpec, scale: Scale, dtype) -> str:
    """A simulated task's content hash with its files' manifest replaced by the simulation's
    folder name, ``<scale>-<hash of the simulation parameters and the simulator's format>``."""
    simulation = simulated_dir(spec, scale, Path(".")).name
    return _task_hash(spec, scale, f"simulated from {simulation}", dtype)


def split_sizes(name_or_path, scale: str, data_dir=None, tasks_dir: Path = TASKS_DIR) -> dict:
    """Numbers of train (K), validation and test images of a task at a scale.

    A simulated task's sizes come from its specification; a STAR task's table is read (not its
    stacks). Sizes that do not fit are an :class:`InputError` naming the task file.
    """
    spec = load_spec(name_or_path, tasks_dir)
    sc = spec.scale(scale)
    return checked_sizes(spec, sc)


def _initial_density(spec, scale, data, lik, splits, init_spec, derived: Path):
    """The task's random-sphere init: ``derived/init.mrc`` if it matches the SHA-256 recorded
    in ``init.json``, else built (again, with one line on stderr saying why)."""
    path, record = derived / "init.mrc", derived / "init.json"
    if path.exists():
        vol, problem = _cached_init(path, record)
        if problem is None:
            return vol
        print(f"cryobench: {path}: {problem}; building it again", file=sys.stderr)
    rng = rng_for(spec.name, spec.seed, "init")     # random_spheres and match_power, portably
    vol = spheres(lik.box, data.pixel_size, data.particle_radius, rng,
                  int(init_spec.get("n_spheres", 30)), init_spec.get("radius_min", 0.1),
                  init_spec.get("radius_max", 0.3))
    train = splits["train"][:2000]
    vol *= power_scale(vol, lik, data.images[train], data.ctf.subset(train), data.sigma[train])
    derived.mkdir(parents=True, exist_ok=True)
    write_volume(path, vol, data.pixel_size)
    atomic_write(record, json.dumps({"seed_parts": [spec.name, spec.seed, "init"], **init_spec,
                                     "sha256": file_sha256(path)}, indent=1))
    return vol


def _cached_init(path: Path, record: Path) -> tuple[np.ndarray | None, str | None]:
    """(the map, None) if ``init.mrc`` is readable and has the SHA-256 recorded in ``init.json``;
    else (None, what is wrong)."""
    try:
        expected = json.loads(record.read_text()).get("sha256")
    except (OSError, ValueError, AttributeError):
        return None, f"{record.name} is missing or unreadable"
    if not isinstance(expected, str):
        return None, f"{record.name} records no SHA-256 of it"
    if not path.is_file() or file_sha256(path) != expected:
        return None, f"its SHA-256 differs from the one in {record.name}"
    try:
        return read_volume(path)[0], None
    except InputError as exc:
        return None, str(exc)


def describe(name_or_path, scale_name: str | None, data_dir) -> dict:
    """Sizes of a task at a scale, as ``cryobench info`` prints them: images, splits, box, r_max,
    quadrature, flops per evaluation; for a STAR task also its origins, reference map and
    contrast."""
    spec = load_spec(name_or_path)
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    scale = spec.scale(scale_name)
    kind = spec.section("dataset").get("kind")
    checked_sizes(spec, scale)        # before reading any stack
    if kind == "simulated":
        box, pixel, n_images = scale.box, scale.pixel_size, scale.n_images
        folder = simulated_dir(spec, scale, data_dir)
        cached = str(folder) if (folder / "manifest.json").is_file() else f"not simulated yet ({folder})"
    else:
        data = load_dataset(spec, scale, data_dir, progress=False)
        box, pixel, n_images = data.images.shape[-1], data.pixel_size, len(data.images)
        cached = str(spec.path.parent / spec.section("dataset")["star"])
    protocol = spec.section("protocol")
    sizes = check_splits(spec, scale, n_images)
    check_sizes(spec, scale, box, pixel)
    head = {"task": spec.name, "scale": scale.name, "images": n_images,
            "splits (train / validation / test)": f"{sizes['train']} / {sizes['validation']} / "
                                                  f"{sizes['test']}",
            "box": f"{box} px, {pixel:.4g} Å/px"}
    minibatch = protocol.get("batch_size", 100)
    if is_refinement(spec):
        return {**head, **refinement_lines(spec, scale.rmax_px(box), box, pixel),
                "minibatch": minibatch, "data": cached}
    lik = likelihood_for(spec, scale, box, pixel)
    quad, rmax = lik.quadrature, lik.rmax
    epochs = protocol.get("budget_epochs", 10)
    return {
        **head, "r_max": rmax_line(rmax, box, pixel),
        "Fourier coefficients (half disk)": len(lik.points),
        "quadrature": f"{len(quad.directions)} directions × {len(quad.inplane_angles)} in-plane × "
                      f"{len(quad.shifts)} shifts = {quad.size:,} points",
        "flops per gradient evaluation": f"{lik.flops_per_image() / 1e6:.4g} MFLOP",
        "minibatch": minibatch,
        "budget": f"{epochs} epochs = {int(epochs * sizes['train']):,} gradient evaluations",
        "data": cached,
        **(_star_lines(spec, data) if kind != "simulated" else {}),
    }


def _star_lines(spec, data) -> dict:
    """What ``info`` says about a STAR task's origins, reference map and contrast."""
    recipe = spec.section("dataset")
    origins = read_particles(spec.path.parent / recipe["star"], max_images=1).origins
    z = data.contrast_z
    sign = ("as the model expects (white particles)" if z > CONTRAST_Z else
            "OPPOSITE to the model's: change invert_sign" if z < -CONTRAST_Z else "inconclusive")
    return {"origins": "applied (images re-centred)" if origins is not None else "none in the STAR file",
            "reference": (f"{recipe['reference']} (resampled to {data.images.shape[-1]} px, "
                          f"{data.pixel_size:.4g} Å/px)") if "reference" in recipe else "none",
            "contrast": f"z = {z:+.1f}, {sign}"}
