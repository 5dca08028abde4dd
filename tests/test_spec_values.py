"""Every wrong-typed or out-of-range task-file value is one line naming the file, the key and the
problem (exit status 2 from the command line)."""
import subprocess
import sys

import pytest

from cryobench import InputError
from cryobench.data.spec import TASKS_DIR, load_spec

BAD_VALUES = [  # (text in synthetic-cylinder.toml, replacement, expected message after the path)
    ("box = 24", 'box = "24"', '[scales.ci] box = "24": must be an integer ≥ 8'),
    ("box = 24", "box = 24.0", "[scales.ci] box = 24.0: must be an integer ≥ 8"),
    ("box = 24", "box = true", "[scales.ci] box = true: must be an integer ≥ 8"),
    ("n_images = 500", "n_images = 1.5", "[scales.ci] n_images = 1.5: must be an integer ≥ 1"),
    ("n_images = 500", "n_images = -3", "[scales.ci] n_images = -3: must be an integer ≥ 1"),
    ("pixel_size = 14.933333333333334", 'pixel_size = "x"',
     '[scales.ci] pixel_size = "x": must be a number > 0'),
    ("pixel_size = 14.933333333333334", "pixel_size = nan",
     "[scales.ci] pixel_size = NaN: must be a number > 0"),
    ("rmax_fraction = 0.10", "rmax_fraction = 1.5",
     "[scales.paper] rmax_fraction = 1.5: must be a number in (0, 1)"),
    ("rmax_fraction = 0.10", "rmax_fraction = 0",
     "[scales.paper] rmax_fraction = 0: must be a number in (0, 1)"),
    ("batch_size = 100", "batch_size = -100", "[protocol] batch_size = -100: must be an integer ≥ 1"),
    ("budget_epochs = 10", 'budget_epochs = "ten"',
     '[protocol] budget_epochs = "ten": must be a number > 0'),
    ("budget_epochs = 10", "budget_epochs = 0", "[protocol] budget_epochs = 0: must be a number > 0"),
    ("snr = 0.05", "snr = [0.05]", "[dataset] snr = an array: must be a number > 0"),
    ("prior_beta = 1.0", "prior_beta = -1", "[objective] prior_beta = -1: must be a number > 0"),
    ("oversampling = 2 ", "oversampling = 1.5 ", "[objective] oversampling = 1.5: must be an integer ≥ 1"),
    ("n_spheres = 30", 'n_spheres = "many"', '[init] n_spheres = "many": must be an integer ≥ 1'),
    ("radius_max = 0.3", "radius_max = 0.05", "[init] radius_min = 0.1 exceeds radius_max = 0.05"),
    ("seed = 1501", "seed = 1.5", "seed = 1.5: must be an integer"),
    ("seed = 1501", 'seed = "1501"', 'seed = "1501": must be an integer'),
    ("seed = 1501\n", "", "missing required key 'seed'"),
    ('name = "synthetic-cylinder"', "name = 7", "name = 7: must be a string"),
    ("description = ", 'colour = "red"\ndescription = ',
     "top level has unknown key 'colour'; allowed: dataset, default_scale, description, init, name, objective, "
     "protocol, scales, seed"),
    ("batch_size = 100", "batchsize = 100", "[protocol] has unknown key 'batchsize'; allowed: "
     "batch_size, budget_epochs, n_test, n_validation"),
]
WHOLE_FILE = [  # a task written from scratch: (TOML text, expected message after the path)
    ('name = "t"\nseed = 1\nscales = "ci"\n[dataset]\nkind = "simulated"\n',
     'scales = "ci": must be a table of [scales.NAME] tables (e.g. [scales.ci])'),
    ('name = "t"\nseed = 1\nscales = {}\n[dataset]\nkind = "simulated"\n',
     "scales = a table: must be a table of [scales.NAME] tables"),
    ('name = "t"\nseed = 1\nprotocol = 3\n[dataset]\nkind = "simulated"\n[scales.ci]\nrmax = 3.0\n',
     "[protocol] must be a table, got 3"),
    ('name = "t"\nseed = 1\n[dataset]\nkind = "simulated"\n[scales]\nci = 5\n',
     "[scales.ci] must be a table, got 5"),
    ('name = "t"\nseed = 1\n[dataset]\nkind = "star"\nstar = "p.star"\ninvert_sign = "yes"\n'
     '[scales.ci]\nrmax = 3.0\n', '[dataset] invert_sign = "yes": must be true or false'),
    ('name = "t"\nseed = 1\n[dataset]\nkind = "star"\nstar = 3\n[scales.ci]\nrmax = 3.0\n',
     "[dataset] star = 3: must be a string"),
]


def write(tmp_path, text):
    path = tmp_path / "task.toml"
    path.write_text(text)
    return path


def edited(tmp_path, old, new):
    text = (TASKS_DIR / "synthetic-cylinder.toml").read_text()
    assert old in text, old
    return write(tmp_path, text.replace(old, new, 1))


@pytest.mark.parametrize("old, new, message", BAD_VALUES, ids=[b[1] or "no seed" for b in BAD_VALUES])
def test_a_bad_task_value_is_one_line_naming_file_and_key(tmp_path, old, new, message):
    path = edited(tmp_path, old, new)
    with pytest.raises(InputError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: {message}"


@pytest.mark.parametrize("text, message", WHOLE_FILE, ids=range(len(WHOLE_FILE)))
def test_a_malformed_task_layout_is_one_line(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}: {message}"), str(info.value)


@pytest.mark.parametrize("command", ["info", "simulate"])
def test_the_command_line_prints_the_line_and_exits_2(tmp_path, command):
    path = edited(tmp_path, "budget_epochs = 10", 'budget_epochs = "ten"')
    proc = subprocess.run([sys.executable, "-m", "cryobench.cli", command, str(path), "--scale", "ci",
                           "--data-dir", str(tmp_path / "cache")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        f'cryobench: error: {path}: [protocol] budget_epochs = "ten": must be a number > 0']
    assert not (tmp_path / "cache").exists()


def test_the_shipped_tasks_pass_their_own_rules():
    for name in ("synthetic-cylinder", "thermus-style"):
        assert load_spec(name).name == name


@pytest.mark.parametrize("dataset, message", [
    ('kind = "simulated"', "[scales.ci] needs n_images for a simulated dataset"),
    ('kind = "star"', "[dataset] needs 'star' for a STAR dataset"),
    ('kind = "film"', "[dataset] kind must be 'simulated' or 'star', got 'film'"),
])
def test_a_dataset_without_its_source_is_one_line(tmp_path, dataset, message):
    from cryobench.task import split_sizes
    path = write(tmp_path, f'name = "t"\nseed = 1\n[dataset]\n{dataset}\n[scales.ci]\nrmax = 3.0\n'
                           f'n_validation = 5\n')
    with pytest.raises(InputError) as info:
        split_sizes(path, "ci")
    assert str(info.value) == f"{path}: {message}"
