"""The dataset cache is verified: tampered files are rebuilt (never served under the clean id),
folders without a manifest are rebuilt, killed writers' temporaries are cleaned."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import cryobench
import cryobench.data.cache as cache
from cryobench.data.cache import manifest_problem, remove_dead_temporaries
from cryobench.data.datasets import SIMULATED_FILES, ensure_simulated, simulated_dir
from cryobench.data.spec import load_spec
from cryobench.task import task_hash

TASK = "synthetic-cylinder"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A ci cache simulated once for this module, with the clean task's hash, images and init."""
    root = tmp_path_factory.mktemp("pristine")
    task = cryobench.load_task(TASK, "ci", data_dir=root, progress=False)
    return root, task.content_hash, np.array(task.dataset.images), task.init.copy()


@pytest.fixture
def cache_dir(pristine, tmp_path):
    """A private copy of the pristine cache, free to corrupt."""
    shutil.copytree(pristine[0], tmp_path / "data", symlinks=True)
    spec = load_spec(TASK)
    return tmp_path / "data", simulated_dir(spec, spec.scale("ci"), tmp_path / "data")


def rewrite(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF                 # one byte flipped, same size
    path.write_bytes(bytes(data))


def truncate(path):
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)


TAMPER = {"rewrite": rewrite, "truncate": truncate, "delete": os.unlink}


@pytest.mark.parametrize("how", TAMPER)
@pytest.mark.parametrize("name", SIMULATED_FILES)
def test_a_tampered_file_is_rebuilt_and_the_task_stays_clean(pristine, cache_dir, capsys, name, how):
    root, folder = cache_dir
    _, clean_hash, clean_images, clean_init = pristine
    TAMPER[how](folder / name)
    task = cryobench.load_task(TASK, "ci", data_dir=root, progress=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and name in err[0] and "simulating the dataset again" in err[0], err
    assert task.content_hash == clean_hash and task_hash(TASK, "ci", data_dir=root) == clean_hash
    assert np.array_equal(task.dataset.images, clean_images) and np.array_equal(task.init, clean_init)
    assert manifest_problem(folder, SIMULATED_FILES) is None
    assert capsys.readouterr().err == ""       # the rebuilt folder is trusted again


@pytest.mark.parametrize("name", SIMULATED_FILES)
def test_task_hash_verifies_before_it_names_the_data(pristine, cache_dir, capsys, name):
    root, folder = cache_dir
    rewrite(folder / name)
    assert task_hash(TASK, "ci", data_dir=root) == pristine[1]      # rebuilt, then hashed
    assert name in capsys.readouterr().err and manifest_problem(folder, SIMULATED_FILES) is None


def test_a_rewrite_that_keeps_size_and_mtime_is_still_caught(cache_dir, monkeypatch):
    _, folder = cache_dir
    newest = max(os.stat(folder / n).st_ctime_ns for n in SIMULATED_FILES)
    for _ in range(300):                # until the file system's clock has passed the copies' ctimes
        if cache.fs_now(folder) > newest:
            break
        time.sleep(0.01)
    assert manifest_problem(folder, SIMULATED_FILES) is None        # hashes and remembers them
    stamps = json.loads((folder / "verified.json").read_text())
    assert set(stamps) == set(SIMULATED_FILES)

    def no_hashing(path):
        raise AssertionError(f"{path} hashed again")
    with monkeypatch.context() as m:
        m.setattr(cache, "file_sha256", no_hashing)
        assert manifest_problem(folder, SIMULATED_FILES) is None    # stat only
    stack = folder / "particles.mrcs"
    st = os.stat(stack)
    rewrite(stack)
    os.utime(stack, ns=(st.st_atime_ns, st.st_mtime_ns))           # size and mtime as before
    assert os.path.getsize(stack) == st.st_size and os.stat(stack).st_mtime_ns == st.st_mtime_ns
    assert "particles.mrcs" in manifest_problem(folder, SIMULATED_FILES)


@pytest.mark.parametrize("manifest", [None, "{not json", '{"particles.star": "abc"}', "[]"])
def test_a_folder_without_a_readable_manifest_is_rebuilt(pristine, cache_dir, capsys, manifest):
    root, folder = cache_dir
    if manifest is None:
        (folder / "manifest.json").unlink()
    else:
        (folder / "manifest.json").write_text(manifest)
    assert task_hash(TASK, "ci", data_dir=root) == pristine[1]
    assert "manifest.json is missing, unreadable or incomplete" in capsys.readouterr().err
    assert manifest_problem(folder, SIMULATED_FILES) is None


def test_a_half_written_folder_is_rebuilt_not_directory_not_empty(pristine, tmp_path):
    spec = load_spec(TASK)
    folder = simulated_dir(spec, spec.scale("ci"), tmp_path)
    folder.mkdir(parents=True)
    (folder / "particles.mrcs").write_bytes(b"partial")
    assert ensure_simulated(spec, spec.scale("ci"), tmp_path, progress=False) == folder
    assert task_hash(TASK, "ci", data_dir=tmp_path) == pristine[1]


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporaries_of_dead_writers_are_removed_and_live_ones_kept(cache_dir):
    root, folder = cache_dir
    parent, host = folder.parent, socket.gethostname()
    # a simulation killed after creating its folder: the marker ensure_simulated really uses
    made = subprocess.run([sys.executable, "-c", "import sys; from cryobench.data.cache import "
                           "temporary_dir; d = temporary_dir(sys.argv[1], 'ci-x'); "
                           "(d / 'particles.mrcs').write_bytes(b'half'); print(d)", str(parent)],
                          capture_output=True, text=True, check=True).stdout.strip()
    killed = parent / os.path.basename(made)
    dead = parent / f".ci-y.tmp-{dead_pid()}-{host}-abc123"
    live = parent / f".ci-z.tmp-{os.getpid()}-{host}-def456"
    elsewhere = parent / f".ci-w.tmp-{dead_pid()}-another-host.example-gh789"
    for d in (dead, live, elsewhere):
        d.mkdir()
        (d / "particles.mrcs").write_bytes(b"half")
    assert killed.is_dir() and ".tmp-" in killed.name
    ensure_simulated(load_spec(TASK), load_spec(TASK).scale("ci"), root, progress=False)
    assert not killed.exists() and not dead.exists()
    assert live.is_dir() and elsewhere.is_dir()              # a live writer, another host's writer
    assert remove_dead_temporaries(parent) == []


# ------------------------------------------------------------------ the derived initial density
@pytest.mark.parametrize("how", ["rewrite", "truncate", "delete-record", "garbage-record"])
def test_a_corrupt_init_is_rebuilt(pristine, cache_dir, capsys, how):
    root, _ = cache_dir
    clean_init = pristine[3]
    init = next(root.glob(f"{TASK}/ci-derived-*/init.mrc"))
    record = init.with_name("init.json")
    {"rewrite": rewrite, "truncate": truncate, "delete-record": os.unlink,
     "garbage-record": lambda p: p.write_text("{")}[how](record if "record" in how else init)
    task = cryobench.load_task(TASK, "ci", data_dir=root, progress=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "init.mrc" in err[0] and "building it again" in err[0], err
    assert np.array_equal(task.init, clean_init)
    cryobench.load_task(TASK, "ci", data_dir=root, progress=False)
    assert capsys.readouterr().err == ""


def test_a_star_tasks_corrupt_init_is_rebuilt(tmp_path, capsys):
    from test_splits import noise, star_files, star_task
    star_files(tmp_path, noise(160))
    spec = star_task(tmp_path)
    first = cryobench.load_task(spec, "ci", data_dir=tmp_path / "cache", progress=False)
    rewrite(first.derived_dir / "init.mrc")
    again = cryobench.load_task(spec, "ci", data_dir=tmp_path / "cache", progress=False)
    assert "init.mrc" in capsys.readouterr().err
    assert np.array_equal(again.init, first.init) and again.content_hash == first.content_hash


def test_a_file_changed_in_the_clock_tick_of_its_hash_is_not_remembered(cache_dir):
    _, folder = cache_dir
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "verified.json").unlink(missing_ok=True)
    ctime = os.stat(folder / "meta.json").st_ctime_ns
    cache.record_verified(folder, {"meta.json": manifest["meta.json"]}, since=ctime)
    assert "meta.json" not in json.loads((folder / "verified.json").read_text())
    cache.record_verified(folder, {"meta.json": manifest["meta.json"]}, since=ctime + 1)
    assert "meta.json" in json.loads((folder / "verified.json").read_text())


def test_a_shared_cache_is_readable_by_every_user(pristine):
    """Every folder and file of a simulated dataset and of the derived files is readable by
    other users (a cache shared on a cluster)."""
    for path in pristine[0].rglob("*"):
        mode = path.stat().st_mode
        assert mode & 0o044 == 0o044, f"{path} has mode {oct(mode & 0o777)}"
        if path.is_dir():
            assert mode & 0o011 == 0o011, f"{path} has mode {oct(mode & 0o777)}"
