"""Prepared spectra are cached beside a task's derived files: a later load memory-maps exactly
the bits ``Likelihood.prepare`` computes, a tampered copy is rebuilt, other code gets its own."""
import shutil

import numpy as np
import pytest

import cryobench
import cryobench.data.prepared as prepared

TASK = "synthetic-cylinder"


@pytest.fixture
def cache(data_dir, tmp_path):
    """A private copy of the session's ci data cache, without prepared spectra."""
    shutil.copytree(data_dir, tmp_path / "data", symlinks=True)
    for folder in spectra_folders(tmp_path / "data"):
        shutil.rmtree(folder)
    return tmp_path / "data"


def spectra_folders(root):
    return sorted(root.glob(f"{TASK}/ci-derived-*/spectra-*"))


def fresh(task):
    d = task.dataset
    return task.likelihood.prepare(d.images, d.ctf, d.sigma)


def test_a_later_load_maps_the_bits_prepare_computes(cache):
    first = cryobench.load_task(TASK, "ci", data_dir=cache, progress=False)
    again = cryobench.load_task(TASK, "ci", data_dir=cache, progress=False)
    assert isinstance(again.spectra.patches, np.memmap) and not again.spectra.patches.flags.writeable
    ref = fresh(first)
    for task in (first, again):
        assert np.array_equal(task.spectra.patches, ref.patches)
        assert np.array_equal(task.spectra.half_norms, ref.half_norms)
    assert len(spectra_folders(cache)) == 1
    assert again.test_nll(again.init) == first.test_nll(first.init)


@pytest.mark.parametrize("name", prepared.FILES)
def test_a_tampered_copy_is_rebuilt(cache, capsys, name):
    cryobench.load_task(TASK, "ci", data_dir=cache, progress=False)
    (folder,) = spectra_folders(cache)
    path = folder / name
    data = bytearray(path.read_bytes())
    data[-9] ^= 0xFF                                    # one byte of the last value, same size
    path.write_bytes(bytes(data))
    task = cryobench.load_task(TASK, "ci", data_dir=cache, progress=False)
    err = capsys.readouterr().err
    assert str(folder) in err and name in err and "preparing the spectra again" in err
    ref = fresh(task)
    assert np.array_equal(task.spectra.patches, ref.patches)
    assert np.array_equal(task.spectra.half_norms, ref.half_norms)


def test_other_numerical_code_gets_its_own_copy_and_says_so(cache, monkeypatch, capsys):
    cryobench.load_task(TASK, "ci", data_dir=cache, progress=False)
    assert capsys.readouterr().err == ""                             # a first build is silent
    monkeypatch.setattr(prepared, "model_code_digest", lambda: "other code")
    cryobench.load_task(TASK, "ci", data_dir=cache, progress=False)
    assert len(spectra_folders(cache)) == 2
    assert "preparing the image spectra again for this code" in capsys.readouterr().err


def test_a_cache_that_cannot_be_written_still_loads(cache, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(prepared, "temporary_dir", refuse)
    task = cryobench.load_task(TASK, "ci", data_dir=cache, progress=False)
    assert "cannot keep the prepared spectra" in capsys.readouterr().err
    assert spectra_folders(cache) == []
    assert np.array_equal(task.spectra.patches, fresh(task).patches)
