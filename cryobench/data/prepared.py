"""Prepared image spectra kept beside a task's derived files, so a cell does not redo them.

Preparing a paper-scale stack (:meth:`Likelihood.prepare`: reading 3.3 GB of images and
transforming them to their oversampled low-frequency spectra) costs several seconds in every
cell process; the result is a few hundred MB. It is written once to
``<derived>/spectra-<key>/`` (``patches.npy``, ``half_norms.npy`` and their SHA-256
``manifest.json``) and memory-mapped read-only by later loads, which share it through the page
cache.

``key`` hashes what decides the bits of the prepared spectra besides the task (whose content hash
already names the derived folder): the text of the numerical code (:mod:`cryobench.model`,
:mod:`cryobench.base`), the platform (:func:`cryobench.base.threads.machine`), the BLAS thread
count and the likelihood's geometry. A cached copy therefore holds exactly the bits this process
would compute; another key's folder untouched for an hour is removed when a new one is written. The files are checked
against their manifest on every load like a dataset (:mod:`cryobench.data.cache`: a full SHA-256
once per file version, then ``stat`` stamps); a folder that fails the check is rebuilt, with one
line on stderr saying why.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from cryobench.base.seeding import content_hash
from cryobench.base.threads import machine, thread_info
from cryobench.data.cache import discard, file_sha256, manifest_problem, temporary_dir
from cryobench.model.likelihood import ImageSpectra, Likelihood

FILES = ("patches.npy", "half_norms.npy")
_PACKAGE = Path(__file__).resolve().parent.parent


def model_code_digest() -> str:
    """SHA-256 of the text of the modules that compute prepared spectra (model/ and base/)."""
    h = hashlib.sha256()
    for part in ("model", "base"):
        for path in sorted((_PACKAGE / part).glob("*.py")):
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def spectra_key(likelihood: Likelihood) -> str:
    """What decides the bits of :meth:`Likelihood.prepare` here, hashed (module doc)."""
    return content_hash({"code": model_code_digest(), "machine": machine(),
                         "blas_threads": thread_info().get("blas_threads"),
                         "box": likelihood.box, "rmax": likelihood.rmax,
                         "oversampling": likelihood.oversampling,
                         "dtype": likelihood.dtype.name})[:16]


def prepared_spectra(likelihood: Likelihood, images: np.ndarray, ctf, sigma,
                     derived: Path) -> ImageSpectra:
    """``likelihood.prepare(images, ctf, sigma)``, from ``derived/spectra-<key>/`` when a
    verified copy is there, else computed and written there for the next load."""
    sigma = np.broadcast_to(np.asarray(sigma, float), (len(images),))
    folder = Path(derived) / f"spectra-{spectra_key(likelihood)}"
    if folder.is_dir():
        problem = manifest_problem(folder, FILES)
        if problem is None:
            patches = np.load(folder / FILES[0], mmap_mode="r")
            half_norms = np.load(folder / FILES[1])
            if patches.shape[0] == len(images) == len(half_norms):
                return ImageSpectra(patches, half_norms, ctf, 1.0 / sigma)
            problem = f"it holds {patches.shape[0]} images, the dataset {len(images)}"
        print(f"cryobench: {folder}: {problem}; preparing the spectra again", file=sys.stderr)
        discard(folder)
    elif any(Path(derived).glob("spectra-*")):
        print(f"cryobench: {derived}: preparing the image spectra again for this code, machine "
              "and thread count (the copies there were made under others)", file=sys.stderr)
    spectra = likelihood.prepare(images, ctf, sigma)
    _write(folder, spectra)
    return spectra


def _write(folder: Path, spectra: ImageSpectra) -> None:
    """Write the spectra atomically (a temporary folder renamed); drop other keys' folders. A
    cache that cannot be written (read-only, full) is left as it is: the spectra are in memory."""
    parent = folder.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_dir(parent, folder.name)
        np.save(tmp / FILES[0], np.ascontiguousarray(spectra.patches))
        np.save(tmp / FILES[1], np.asarray(spectra.half_norms, np.float64))
        (tmp / "manifest.json").write_text(json.dumps(
            {name: file_sha256(tmp / name) for name in FILES}, indent=1, sort_keys=True))
    except OSError as exc:
        print(f"cryobench: {parent}: cannot keep the prepared spectra ({exc}); they will be "
              "prepared again by the next load", file=sys.stderr)
        if "tmp" in locals():
            shutil.rmtree(tmp, ignore_errors=True)
        return
    try:
        os.rename(tmp, folder)
    except OSError:                      # another process wrote the same spectra first
        shutil.rmtree(tmp, ignore_errors=True)
    for other in parent.glob("spectra-*"):          # other code's copies, unused for an hour
        if other.is_dir() and other.name != folder.name and time.time() - other.stat().st_mtime > 3600:
            discard(other)
