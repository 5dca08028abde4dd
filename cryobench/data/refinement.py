"""Refinement tasks (``[objective] kind = "refinement"``): known poses, a Gaussian prior, a
low-passed initial map and the exact optimum by conjugate gradients.

The objective (Toader, Brubaker & Lederman, "Efficient high-resolution refinement in cryo-EM
with stochastic gradient descent", 2025, their simplified setting with known poses) is

    F(V) = Σ_{i ∈ train} −log p(I_i | R_i, t_i, V) + ½ α ‖V‖²

(:mod:`cryobench.model.refinement`, :class:`cryobench.model.prior.GaussianPrior`), a strongly
convex quadratic with a unique minimiser V* = (H + αI)⁻¹ b, H = Σ_i P_iᵀ diag(w C_i²) P_i and
b = Σ_i P_iᵀ (w C_i Y_i). The oracle answers F/K on minibatches.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy import fft as sfft
from scipy.sparse.linalg import LinearOperator, cg

from cryobench.base.files import atomic_write
from cryobench.base.seeding import content_hash
from cryobench.base.threads import machine
from cryobench.data.cache import file_sha256
from cryobench.data.euler import rotations_from_angles, star_angles
from cryobench.data.mrc import read_volume, write_volume
from cryobench.data.phantoms import Phantom, make_phantom
from cryobench.data.prepared import model_code_digest
from cryobench.data.render import band_limited_volume
from cryobench.data.simulate import read_poses
from cryobench.data.local_refinement import has_local_search, local_likelihood
from cryobench.data.sizes import rmax_line
from cryobench.errors import InputError
from cryobench.model.fsc import fsc
from cryobench.model.local_refinement import LocalSearchLikelihood
from cryobench.model.prior import GaussianPrior
from cryobench.model.refinement import PosedSpectra, RefinementLikelihood

KINDS = ("ab-initio", "refinement")
CG_RTOL = 1e-6          # relative residual ‖b − A V‖ / ‖b‖ of the cached optimum
CG_BATCH = 500          # images per pass of the operator
SUBOPT_IMAGES = 5000    # training images the suboptimality is measured on (all at ci, small)
OUTER_SHELLS = 0.2      # the outer 20 % of shells up to r_max (their "high frequencies")
LOWPASS_HALF = math.sqrt(math.log(2.0) / (2.0 * math.pi ** 2))   # σ_f / resolution


def is_refinement(spec) -> bool:
    """Whether a task file asks for a refinement task; an unknown kind is an InputError."""
    kind = spec.section("objective").get("kind", "ab-initio")
    if kind not in KINDS:
        raise InputError(f"{spec.path}: [objective] kind = {kind!r}: must be one of "
                         f"{', '.join(repr(k) for k in KINDS)}")
    return kind == "refinement"


def check_refinement(spec, scale, box: int) -> None:
    """One InputError naming the file and key for what a refinement task lacks."""
    for section, key in (("objective", "prior_alpha"), ("init", "lowpass_resolution")):
        if key not in spec.section(section):
            raise InputError(f"{spec.path}: [{section}] {key} is required for a refinement task")
    rmax = scale.rmax_px(box)
    if not 0 < rmax <= box / 2:
        raise InputError(f"{spec.path}: [scales.{scale.name}] r_max = {rmax:g} px must lie in "
                         f"(0, {box / 2:g}] (Nyquist) for box {box}")


def poses(spec, scale, data) -> tuple[np.ndarray, np.ndarray]:
    """(rotations (n, 3, 3), shifts (n, 2) px) of the dataset's images: a simulated dataset's
    true poses (``poses.csv``); a STAR file's rlnAngleRot/Tilt/Psi (RELION's convention,
    :mod:`cryobench.data.euler`) with zero shifts, the origins having re-centred the images."""
    n = len(data.images)
    if spec.section("dataset").get("kind") == "simulated":
        rot, shifts, _ = read_poses(Path(data.directory) / "poses.csv")
        return rot[:n], shifts[:n]
    star = (spec.path.parent / spec.section("dataset")["star"]).resolve()
    return rotations_from_angles(star_angles(star, n)), np.zeros((n, 2))


def refinement_lines(spec, rmax: float, box: int, pixel: float) -> dict:
    """What ``cryobench info`` says of a refinement task beyond its sizes: kind, r_max, prior,
    initial density."""
    obj = spec.section("objective")
    grid = obj.get("local_search", {})
    kind = (f"refinement (poses known to ~{obj['pose_error_deg']:g}°, ~{obj['pose_error_A']:g} Å; "
            f"local search: {grid['rotation_steps']} rotations by {grid['rotation_deg']:g}° × "
            f"{grid['shift_steps']} shifts of {grid['shift_A']:g} Å about each)"
            if has_local_search(spec) else "refinement (known poses)")
    return {"kind": kind, "r_max": rmax_line(rmax, box, pixel),
            "prior": f"Gaussian, alpha = {spec.section('objective')['prior_alpha']:g}",
            "init": f"ground truth low-passed to {spec.section('init')['lowpass_resolution']:g} Å"}


def lowpass_sigma(resolution: float) -> float:
    """σ_f (Å) of the Gaussian low-pass exp(−2π² σ_f² s²) that is ½ at s = 1/resolution."""
    return LOWPASS_HALF * resolution


def initial_map(spec, data, box: int) -> np.ndarray:
    """The ground truth (or the STAR task's reference map) low-passed by the Gaussian that
    halves the amplitude at ``[init] lowpass_resolution`` Å — as an ab-initio result hands it
    over. Simulated: the phantom's blobs widened to √(σ² + σ_f²) (the exact Gaussian filter of
    a Gaussian), band-limited to the box: the same bits on every machine."""
    res = float(spec.section("init")["lowpass_resolution"])
    sf = lowpass_sigma(res)
    if spec.section("dataset").get("kind") == "simulated":
        meta = json.loads((Path(data.directory) / "meta.json").read_text())
        p = meta["params"]
        ph = make_phantom(p["phantom"], p["seed"]).scaled(meta["amplitude_scale"])
        s2 = ph.sigmas ** 2
        wide = Phantom(ph.centres, np.sqrt(s2 + sf * sf), ph.amplitudes * (s2 / (s2 + sf * sf)) ** 1.5)
        return band_limited_volume(wide, box, data.pixel_size)
    if data.ground_truth is None:
        raise InputError(f"{spec.path}: a refinement task on a STAR file needs [dataset] reference "
                         f"(its init is the reference low-passed to lowpass_resolution)")
    k = [sfft.fftfreq(box)] * 2 + [sfft.rfftfreq(box)]
    kz, ky, kx = np.meshgrid(*k, indexing="ij")
    s2 = (kx ** 2 + ky ** 2 + kz ** 2) / data.pixel_size ** 2
    spec_ = sfft.rfftn(np.asarray(data.ground_truth, np.float64)) * np.exp(-2 * np.pi ** 2 * sf ** 2 * s2)
    return sfft.irfftn(spec_, s=(box,) * 3).astype(np.float32)


def parts(spec, scale, data, dtype):
    """(likelihood, prior, prepared images) of a refinement task."""
    box = data.images.shape[-1]
    check_refinement(spec, scale, box)
    rot, shifts = poses(spec, scale, data)
    if has_local_search(spec):                    # approximately known poses: a local search
        lik = local_likelihood(spec, rot, shifts, box, data.pixel_size, scale.rmax_px(box), dtype)
    else:
        lik = RefinementLikelihood(box, data.pixel_size, scale.rmax_px(box), rot, shifts, dtype)
    prior = GaussianPrior(float(spec.section("objective")["prior_alpha"]))
    return lik, prior, lik.prepare(data.images, data.ctf, data.sigma)


# ----------------------------------------------------------------------- the exact optimum
def normal_equations(lik: RefinementLikelihood, spectra: PosedSpectra, index, alpha: float):
    """(A, b, W): A V = H V + α V and b = Σ Pᵀ(w C Y) over the images ``index`` (float64 real
    space), and W the exact Hessian diagonal of Σ_i (orthonormal rfft basis)."""
    index = np.asarray(index)
    shape = (lik.box,) * 3
    batches = [lik.subset(spectra, index[lo:lo + CG_BATCH]) for lo in range(0, len(index), CG_BATCH)]
    geometry = [(lik.slice_points(b.rotations), lik.ctf_values(b)) for b in batches]
    b = np.zeros(shape)
    w = np.zeros(lik.half_shape)
    for part, (points, ctf) in zip(batches, geometry):
        g = ((lik.point_weights * ctf) * part.y).reshape(-1)
        b += lik.transform_adjoint(lik.slices_adjoint(g, points)).astype(np.float64)
        w += lik.weights(part, points, ctf)

    def apply(v):
        vol = np.asarray(v, np.float64).reshape(shape)
        vhat = lik.transform(vol)
        out = alpha * vol
        for points, ctf in geometry:
            s = lik.slices(vhat, points).reshape(ctf.shape)
            g = ((lik.point_weights * ctf * ctf) * s).reshape(-1)
            out += lik.transform_adjoint(lik.slices_adjoint(g, points))
        return out.reshape(-1)

    n = int(np.prod(shape))
    return LinearOperator((n, n), matvec=apply, dtype=np.float64), b.reshape(-1), w


def solve_optimum(lik, spectra, index, alpha: float, rtol: float = CG_RTOL,
                  maxiter: int = 1000) -> tuple[np.ndarray, dict]:
    """V* by conjugate gradients preconditioned by the exact Fourier diagonal (W + α)⁻¹, to
    relative residual ``rtol``; (V* float32, facts: iterations, residual, seconds)."""
    start = time.perf_counter()
    a, b, w = normal_equations(lik, spectra, index, alpha)
    shape = (lik.box,) * 3
    precondition = LinearOperator(
        a.shape, dtype=np.float64,
        matvec=lambda r: sfft.irfftn(sfft.rfftn(r.reshape(shape), norm="ortho") / (w + alpha),
                                     s=shape, norm="ortho").reshape(-1))
    count = [0]

    def tick(_):
        count[0] += 1

    x, info = cg(a, b, rtol=rtol, atol=0.0, maxiter=maxiter, M=precondition, callback=tick)
    residual = float(np.linalg.norm(b - a @ x) / np.linalg.norm(b))
    if info != 0 or residual > 10 * rtol:
        raise RuntimeError(f"CG did not reach relative residual {rtol:g} ({residual:.3g} after "
                           f"{count[0]} iterations)")
    return x.reshape(shape).astype(np.float32), {
        "rtol": rtol, "relative_residual": residual, "iterations": count[0],
        "images": len(index), "alpha": alpha, "seconds": time.perf_counter() - start,
        "preconditioner": "exact Fourier diagonal (W + alpha)^-1"}


def optimum_key() -> str:
    """What decides the optimum's bits beside the task (whose content hash keys ``derived``):
    the text of the model's modules and of this one (the solver), and this platform, hashed
    as for prepared spectra (:func:`cryobench.data.prepared.spectra_key`). An optimum solved
    by other kernels, or on another machine, is solved again rather than mixed with this
    code's runs."""
    return content_hash({"code": model_code_digest(), "solver": file_sha256(Path(__file__)),
                         "machine": machine(), "cg_rtol": CG_RTOL})[:16]


def cached_optimum(lik, spectra, index, alpha: float, derived: Path, pixel_size: float,
                   progress: bool = True) -> tuple[np.ndarray, dict]:
    """``derived/optimum.mrc`` if it matches the SHA-256 and the :func:`optimum_key` in
    ``optimum.json``, else solved (one line on stderr) and written. ``derived`` is keyed by
    the task's content hash. A local
    search's objective is not quadratic: it has no CG optimum (InputError)."""
    if isinstance(lik, LocalSearchLikelihood):
        raise InputError("a local-search refinement task has no exact optimum (its objective, "
                         "marginalised over local poses, is not quadratic): no suboptimality")
    path, record = Path(derived) / "optimum.mrc", Path(derived) / "optimum.json"
    key = optimum_key()
    try:
        facts = json.loads(record.read_text())
        if (facts.get("sha256") == file_sha256(path) and facts.get("rtol") == CG_RTOL
                and facts.get("key") == key):
            return read_volume(path)[0], facts
    except (OSError, ValueError, AttributeError, InputError):
        pass
    if progress:
        print(f"cryobench: solving the refinement optimum by CG on {len(index):,} images "
              f"(relative residual {CG_RTOL:g}) into {path}", file=sys.stderr)
    vol, facts = solve_optimum(lik, spectra, index, alpha)
    Path(derived).mkdir(parents=True, exist_ok=True)
    write_volume(path, vol, pixel_size)
    facts["sha256"], facts["key"] = file_sha256(path), key
    atomic_write(record, json.dumps(facts, indent=1, sort_keys=True))
    return vol, facts


def outer_fsc(volume: np.ndarray, optimum: np.ndarray, rmax: float) -> float:
    """The lowest FSC between ``volume`` and V* over the shells (1 voxel wide) in the outer
    :data:`OUTER_SHELLS` of (0, r_max]: reaching a threshold there means every high shell has."""
    return outer_of(fsc(volume, optimum)[1], rmax)


def outer_of(curve: np.ndarray, rmax: float) -> float:
    """The lowest value of an FSC ``curve`` (index = shell) over the outer :data:`OUTER_SHELLS`
    of the shells (0, r_max] (:func:`outer_fsc`)."""
    shells = np.arange(len(curve))
    outer = (shells > (1 - OUTER_SHELLS) * rmax) & (shells <= rmax)
    return float(np.asarray(curve)[outer].min())


def checkpoint_scores(task, volume: np.ndarray) -> dict:
    """The trace columns of a refinement task's checkpoint: ``subopt`` (Task.suboptimality,
    per image) and ``fsc_opt_outer`` (:func:`outer_fsc` against the cached optimum)."""
    return checkpoint_record(task, volume)[0]


def fsc_reference(task, truth: bool = True) -> tuple[str, np.ndarray] | None:
    """What a refinement run's per-shell FSC is measured against: ("optimum", V*) with known
    poses; with a local search (no CG optimum) ("truth", the ground truth, in the task's frame
    since the poses are nearly known: no alignment) if ``truth`` and the task has one; else None."""
    if not has_local_search(task.spec):
        return "optimum", task.optimum(progress=False)
    gt = getattr(task.dataset, "ground_truth", None)
    return ("truth", np.asarray(gt)) if truth and gt is not None else None


def checkpoint_record(task, volume: np.ndarray, truth: bool = True):
    """(trace columns, per-shell FSC) of a refinement checkpoint: the columns of
    :func:`checkpoint_scores` ({} with a local search) and (reference name, FSC of ``volume``
    against it per 1-voxel shell 0 … ⌊r_max⌋) or None (:func:`fsc_reference`; a non-finite
    volume has none). One FSC serves both."""
    ref = fsc_reference(task, truth)
    rmax = task.likelihood.rmax
    finite = bool(np.all(np.isfinite(volume)))
    curve = fsc(volume, ref[1])[1][:int(rmax) + 1] if ref is not None and finite else None
    shells = (ref[0], curve) if curve is not None else None
    if has_local_search(task.spec):               # not convex: no CG optimum, no subopt
        return {}, shells
    if not finite:
        return {"subopt": float("nan"), "fsc_opt_outer": float("nan")}, None
    return {"subopt": task.suboptimality(volume), "fsc_opt_outer": outer_of(curve, rmax)}, shells


def conditioning(task, progress: bool = False) -> dict:
    """The spread κ(r) = max W / min W of the exact Fourier Hessian diagonal W of the data term
    (summed over every training image, :meth:`RefinementLikelihood.weights`) over the voxels
    with |k| ≤ r, at r = r_max/2 and r_max, and κ_α(r) with the prior's α added (the
    objective's own diagonal): Toader, Brubaker & Lederman (2025)'s "the condition number grows
    with resolution" measured on the task. Cached as ``conditioning.json`` in the task's derived
    folder (keyed by its content hash) with the :func:`optimum_key` of the code that computed
    it. {} for a local search (its W depends on V)."""
    if has_local_search(task.spec):
        return {}
    path, key = Path(task.derived_dir) / "conditioning.json", optimum_key()
    try:
        facts = json.loads(path.read_text())
        if isinstance(facts, dict) and facts.get("version") == 1 and facts.get("key") == key:
            return facts
    except (OSError, ValueError):
        pass
    if progress:
        print(f"cryobench: the exact Hessian diagonal's spread into {path}", file=sys.stderr)
    lik, train, alpha = task.likelihood, task.splits["train"], float(task.prior.alpha)
    w = np.zeros(lik.half_shape)
    for lo in range(0, len(train), CG_BATCH):
        part = lik.subset(task.spectra, train[lo:lo + CG_BATCH])
        w += lik.weights(part)
    d = lik.box
    k = [np.fft.fftfreq(d, 1 / d)] * 2 + [np.arange(d // 2 + 1)]
    kz, ky, kx = np.meshgrid(*k, indexing="ij")
    radius = np.sqrt(kx ** 2 + ky ** 2 + kz ** 2)
    facts = {"version": 1, "key": key, "images": int(len(train)), "alpha": alpha}
    for name, r in (("half", lik.rmax / 2), ("rmax", lik.rmax)):
        inside = w[radius <= r]
        facts[f"r_{name}"] = float(r)           # a voxel no slice reaches (min W = 0): κ None
        facts[f"kappa_{name}"] = float(inside.max() / inside.min()) if inside.min() > 0 else None
        facts[f"kappa_alpha_{name}"] = float((inside.max() + alpha) / (inside.min() + alpha))
    Path(task.derived_dir).mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(facts, indent=1, sort_keys=True))
    return facts
