"""Task specifications: the TOML files in ``tasks/`` (see ``tasks/README.md`` for the keys).

A specification fixes everything that defines a task except the data itself: the dataset (a
simulation recipe or a RELION STAR file), the objective (r_max, prior, quadrature shifts), the
protocol (minibatch, test and validation sizes, budget) and the random-sphere initial density,
with per-scale sizes under ``[scales.ci]``, ``[scales.small]`` and ``[scales.paper]``.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from .io import InputError

TASKS_DIR = Path(__file__).resolve().parent.parent / "tasks"
SCALES = ("ci", "small", "paper")

_SECTIONS = {
    "dataset": None,  # checked by the dataset's own loader
    "objective": {"prior_lambda_pos", "prior_lambda_neg", "prior_beta", "oversampling",
                  "shift_sigma", "shift_truncation"},
    "protocol": {"batch_size", "n_test", "n_validation", "budget_epochs"},
    "init": {"n_spheres", "radius_min", "radius_max"},
}
_SCALE_KEYS = {"n_images", "box", "pixel_size", "rmax", "rmax_fraction", "n_validation"}


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


def _check_keys(path: Path, where: str, got: dict, allowed: set) -> None:
    unknown = sorted(set(got) - allowed)
    if unknown:
        raise InputError(f"{path}: [{where}] has unknown key {unknown[0]!r}; "
                         f"allowed: {', '.join(sorted(allowed))}")


def known_tasks(tasks_dir: Path = TASKS_DIR) -> list[str]:
    """Names of the task specifications shipped in ``tasks/``."""
    return sorted(p.stem for p in Path(tasks_dir).glob("*.toml"))


def load_spec(name_or_path, tasks_dir: Path = TASKS_DIR) -> TaskSpec:
    """Parse a task by name (``tasks/NAME.toml``) or by the path of a TOML file."""
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
    _check_keys(path, "top level", raw, {"name", "description", "seed", "scales", "default_scale",
                                         *_SECTIONS})
    for section, allowed in _SECTIONS.items():
        if allowed is not None:
            _check_keys(path, section, raw.get(section, {}), allowed)
    for scale, values in raw["scales"].items():
        _check_keys(path, f"scales.{scale}", values, _SCALE_KEYS)
    return TaskSpec(raw["name"], path.resolve(), raw)
