"""Writing files: never a special file replaced, never an update lost to a second writer, never a
folder cryobench did not make removed."""
import multiprocessing
import os

import pytest

from cryobench.base.files import atomic_write, locked
from cryobench.errors import InputError
from cryobench.harness.results import remove_stale_temporaries


def test_a_device_or_folder_is_never_replaced(tmp_path):
    with pytest.raises(InputError, match="not a regular file"):
        atomic_write("/dev/null", "{}")
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")
    with pytest.raises(InputError, match="not a regular file"):
        atomic_write(tmp_path, "{}")
    atomic_write(tmp_path / "a.json", "{}")
    assert (tmp_path / "a.json").read_text() == "{}"


def _add(path, key):
    import json
    with locked(path):
        data = json.loads(path.read_text()) if path.exists() else {}
        data[key] = 1
        atomic_write(path, json.dumps(data))


def test_two_writers_keep_every_entry(tmp_path):
    """Read-modify-write under the lock from two processes, 100 entries each: all 200 kept."""
    import json
    path = tmp_path / "tuned.json"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=lambda w=w: [_add(path, f"{w}-{i}") for i in range(100)])
             for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert len(json.loads(path.read_text())) == 200
    assert sorted(os.listdir(tmp_path)) == ["tuned.json"]          # no lock file left behind


def test_only_cryobenchs_own_temporaries_are_removed(tmp_path):
    """A hidden folder of the user's in an output folder is not a leftover of cryobench's."""
    mine = tmp_path / ".cryobench-abc.tmp-999999999-x"
    theirs = tmp_path / ".notes.tmp-1-x"
    mine.mkdir()
    theirs.mkdir()
    assert remove_stale_temporaries(tmp_path) == 1
    assert not mine.exists() and theirs.exists()
