"""Task specifications: the TOML files in ``tasks/`` (see ``tasks/README.md`` for the keys).

A specification fixes everything that defines a task except the data itself: the dataset (a
simulation recipe or a RELION STAR file), the objective (r_max, prior, quadrature shifts), the
protocol (minibatch, test and validation sizes, budget) and the random-sphere initial density,
with per-scale sizes under ``[scales.ci]``, ``[scales.small]`` and ``[scales.paper]``.
"""
from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cryobench.base.paths import TASKS_DIR
from cryobench.errors import InputError

SCALES = ("ci", "small", "paper")



@dataclass(frozen=True)
class Rule:
    """The type and range a task-file value must have (bounds are open when ``open_*``)."""

    kind: str                       # "int", "number", "bool" or "str"
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def problem(self, value) -> str | None:
        """None if ``value`` obeys the rule, else what it must be ("must be an integer ≥ 1")."""
        want = {"int": "an integer", "number": "a number", "bool": "true or false",
                "str": "a string", "table": "a table"}[self.kind]
        bounds = []
        if self.low is not None and self.high is not None:
            bounds.append(f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}"
                          f"{')' if self.open_high else ']'}")
        elif self.low is not None:
            bounds.append(f"{'>' if self.open_low else '≥'} {self.low:g}")
        elif self.high is not None:
            bounds.append(f"{'<' if self.open_high else '≤'} {self.high:g}")
        must = f"must be {want}{' ' + bounds[0] if bounds else ''}"
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = {"int": isinstance(value, int) and not isinstance(value, bool), "number": numeric,
              "bool": isinstance(value, bool), "str": isinstance(value, str),
              "table": isinstance(value, dict)}[self.kind]
        if not ok or (numeric and not math.isfinite(value)):
            return must
        if numeric and ((self.low is not None and (value < self.low or
                                                   (self.open_low and value == self.low))) or
                        (self.high is not None and (value > self.high or
                                                    (self.open_high and value == self.high)))):
            return must
        return None


_INT1, _POS, _NONNEG = Rule("int", 1), Rule("number", 0, open_low=True), Rule("number", 0)
_NUM, _STR, _BOOL = Rule("number"), Rule("str"), Rule("bool")
_FRACTION = Rule("number", 0, 1, open_low=True, open_high=True)
# Every key a task file may hold, with its rule ([dataset] keys per kind are checked for their
# presence by the dataset's own loader; their types and ranges here).
_TOP = {"name": _STR, "description": _STR, "seed": Rule("int"), "default_scale": _STR}
_SECTIONS = {
    "dataset": {"kind": _STR, "phantom": _STR, "snr": _POS, "voltage": _POS, "cs": _NONNEG,
                "amplitude_contrast": _FRACTION, "defocus_min": _NONNEG, "defocus_max": _NONNEG,
                "astigmatism": _NONNEG, "shift_sigma": _NONNEG, "shift_truncation": _POS,
                "outlier_fraction": Rule("number", 0, 1, open_high=True), "bfactor": _NUM,
                "star": _STR, "particle_radius": _POS, "invert_sign": _BOOL, "reference": _STR},
    "objective": {"kind": _STR, "prior_alpha": _POS, "prior_lambda_pos": _NONNEG, "prior_lambda_neg": _NONNEG, "prior_beta": _POS,
                  "oversampling": _INT1, "shift_sigma": _NONNEG, "shift_truncation": _POS,
                  "pose_error_deg": _NONNEG, "pose_error_A": _NONNEG,      # data/local_refinement.py
                  "local_search": Rule("table")},
    "protocol": {"batch_size": _INT1, "n_test": _INT1, "n_validation": _INT1,
                 "budget_epochs": _POS},
    "init": {"n_spheres": _INT1, "radius_min": _POS, "radius_max": _POS,
             "lowpass_resolution": _POS},
}
_SCALE_KEYS = {"n_images": _INT1, "box": Rule("int", 8), "pixel_size": _POS, "rmax": _POS,
               "rmax_fraction": _FRACTION, "n_validation": _INT1}


@dataclass(frozen=True)
class Scale:
    """The sizes of one scale: image count, box, pixel size (Å) and r_max (Fourier pixels)."""

    name: str
    n_images: int | None
    box: int | None
    pixel_size: float | None
    rmax: float | None
    rmax_fraction: float | None
    n_validation: int

    def rmax_px(self, box: int) -> float:
        """r_max in Fourier pixels for a box of ``box`` pixels."""
        return float(self.rmax) if self.rmax is not None else self.rmax_fraction * box / 2


@dataclass(frozen=True)
class TaskSpec:
    """A parsed task specification file."""

    name: str
    path: Path
    raw: dict

    @property
    def seed(self) -> int:
        return int(self.raw["seed"])

    def section(self, name: str) -> dict:
        return dict(self.raw.get(name, {}))

    @property
    def default_scale(self) -> str:
        """The scale used when none is named: ``default_scale`` if the task declares one, else its
        only scale, else ``ci``; an :class:`InputError` when none of these exists."""
        scales = self.raw.get("scales", {})
        declared = self.raw.get("default_scale")
        if declared is not None:
            if declared not in scales:
                raise InputError(f"{self.path}: default_scale {declared!r} is not one of its "
                                 f"scales ({', '.join(scales) or 'none'})")
            return declared
        if len(scales) == 1:
            return next(iter(scales))
        if "ci" in scales:
            return "ci"
        raise InputError(f"{self.path}: no scale given and the task has several "
                         f"({', '.join(scales)}) but no default_scale; pass --scale NAME or add "
                         f"default_scale = \"NAME\" at the top of the file")

    def scale(self, name: str | None = None) -> Scale:
        """The sizes of scale ``name`` (None: :attr:`default_scale`); an unknown scale is an
        :class:`InputError`."""
        scales = self.raw.get("scales", {})
        name = self.default_scale if name is None else name
        if name not in scales:
            raise InputError(f"{self.path}: unknown scale {name!r}; this task has "
                             f"{', '.join(scales) or 'no scales'}")
        s = scales[name]
        if ("rmax" in s) == ("rmax_fraction" in s):
            raise InputError(f"{self.path}: [scales.{name}] needs exactly one of rmax, rmax_fraction")
        n_val = s.get("n_validation", self.section("protocol").get("n_validation", 0))
        return Scale(name, s.get("n_images"), s.get("box"), s.get("pixel_size"), s.get("rmax"),
                     s.get("rmax_fraction"), int(n_val))


def _show(value) -> str:
    """A value as it reads in TOML (tables and arrays by their kind)."""
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return json.dumps(value, default=str)


def _check_table(path: Path, where: str, got, rules: dict) -> None:
    """Refuse a non-table, an unknown key or a value breaking its :class:`Rule`, in one line."""
    if not isinstance(got, dict):
        raise InputError(f"{path}: [{where}] must be a table, got {_show(got)}")
    unknown = sorted(set(got) - set(rules))
    if unknown:
        raise InputError(f"{path}: [{where}] has unknown key {unknown[0]!r}; "
                         f"allowed: {', '.join(sorted(rules))}")
    for key, value in got.items():
        problem = rules[key].problem(value)
        if problem:
            place = "" if where == "top level" else f"[{where}] "
            raise InputError(f"{path}: {place}{key} = {_show(value)}: {problem}")


def check_splits(spec: "TaskSpec", scale: Scale, n_images: int) -> dict:
    """Sizes {"train", "validation", "test"} of a task at a scale holding ``n_images`` images.

    Refuses, in one line naming the task file, the keys and the numbers, splits that are not
    positive integers or that leave no training image. Call it before any work is done.
    """
    protocol = spec.section("protocol")
    n_test = protocol.get("n_test", 100)
    s = spec.raw["scales"][scale.name]
    where = (f"[scales.{scale.name}]" if "n_validation" in s else
             "[protocol]" if "n_validation" in protocol else None)
    if where is None:
        raise InputError(f"{spec.path}: n_validation is missing: give the number of validation "
                         f"images in [protocol] or [scales.{scale.name}]")
    n_val = s.get("n_validation", protocol.get("n_validation"))
    for key, place, value in (("n_test", "[protocol]", n_test), ("n_validation", where, n_val)):
        problem = _INT1.problem(value)
        if problem:
            raise InputError(f"{spec.path}: {place} {key} = {_show(value)}: {problem}")
    n_train = n_images - n_test - n_val
    if n_train < 1:
        raise InputError(f"{spec.path}: [protocol] n_test = {n_test} and {where} n_validation = "
                         f"{n_val} leave {n_train} training images of the {n_images} images at "
                         f"scale {scale.name!r}; they must leave at least one")
    return {"train": n_train, "validation": n_val, "test": n_test}


def known_tasks(tasks_dir: Path = TASKS_DIR) -> list[str]:
    """Names of the task specifications shipped in ``tasks/``."""
    return sorted(p.stem for p in Path(tasks_dir).glob("*.toml"))


def load_spec(name_or_path, tasks_dir: Path = TASKS_DIR) -> TaskSpec:
    """Parse a task by name (``tasks/NAME.toml``) or by the path of a TOML file (a parsed
    :class:`TaskSpec` is returned as it is)."""
    if isinstance(name_or_path, TaskSpec):
        return name_or_path
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = Path(tasks_dir) / f"{name_or_path}.toml"
        if not path.is_file():
            raise InputError(f"unknown task {str(name_or_path)!r}; known tasks: "
                             f"{', '.join(known_tasks(tasks_dir))} (or give a path to a .toml file)")
    if not path.is_file():
        raise InputError(f"{path}: task specification not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML ({exc})") from None
    for key in ("name", "seed", "dataset", "scales"):
        if key not in raw:
            raise InputError(f"{path}: missing required key {key!r}")
    unknown = sorted(set(raw) - {*_TOP, "scales", *_SECTIONS})
    if unknown:
        raise InputError(f"{path}: top level has unknown key {unknown[0]!r}; allowed: "
                         f"{', '.join(sorted({*_TOP, 'scales', *_SECTIONS}))}")
    _check_table(path, "top level", {k: raw[k] for k in _TOP if k in raw}, _TOP)
    for section, rules in _SECTIONS.items():
        _check_table(path, section, raw.get(section, {}), rules)
    if not isinstance(raw["scales"], dict) or not raw["scales"]:
        raise InputError(f"{path}: scales = {_show(raw['scales'])}: must be a table of "
                         f"[scales.NAME] tables (e.g. [scales.ci])")
    for scale, values in raw["scales"].items():
        _check_table(path, f"scales.{scale}", values, _SCALE_KEYS)
    init = raw.get("init", {})
    if init.get("radius_min", 0.1) > init.get("radius_max", 0.3):
        raise InputError(f"{path}: [init] radius_min = {init.get('radius_min', 0.1)} exceeds "
                         f"radius_max = {init.get('radius_max', 0.3)}")
    return TaskSpec(raw["name"], path.resolve(), raw)
