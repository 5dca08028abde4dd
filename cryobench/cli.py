"""The ``cryobench`` command line (SPEC §6). ``cryobench COMMAND --help`` says the rest."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .io import InputError
from .spec import SCALES, known_tasks, load_spec


def _data_dir(args) -> Path:
    from .datasets import default_data_dir
    return Path(args.data_dir) if args.data_dir else default_data_dir()


def cmd_list(args) -> None:
    """Print the tasks and the optimizers with their hyper-parameter defaults and ranges."""
    from .registry import discover
    print("tasks:")
    for name in known_tasks():
        spec = load_spec(name)
        print(f"  {name:22s} {spec.raw.get('description', '')}")
    print("optimizers:")
    for name, m in sorted(discover().items()):
        hypers = "  ".join(f"{k}={h.default:g} [{h.low:g}, {h.high:g}{', log' if h.log else ''}]"
                           for k, h in m.hypers.items())
        print(f"  {name:16s} {hypers}")


def describe(spec, scale_name: str, data_dir: Path) -> dict:
    """Sizes of a task at a scale: images, splits, box, r_max, quadrature, flops per evaluation."""
    from .datasets import load_dataset, simulated_dir
    from .task import likelihood_for
    scale = spec.scale(scale_name)
    kind = spec.section("dataset").get("kind")
    if kind == "simulated":
        box, pixel, n_images = scale.box, scale.pixel_size, scale.n_images
        folder = simulated_dir(spec, scale, data_dir)
        cached = str(folder) if (folder / "manifest.json").is_file() else f"not simulated yet ({folder})"
    else:
        data = load_dataset(spec, scale, data_dir, progress=False)
        box, pixel, n_images = data.images.shape[-1], data.pixel_size, len(data.images)
        cached = str(spec.path.parent / spec.section("dataset")["star"])
    protocol = spec.section("protocol")
    lik = likelihood_for(spec, scale, box, pixel)
    quad, rmax = lik.quadrature, lik.rmax
    n_test = protocol.get("n_test", 100)
    n_train = n_images - n_test - scale.n_validation
    return {
        "task": spec.name, "scale": scale.name, "images": n_images,
        "splits (train / validation / test)": f"{n_train} / {scale.n_validation} / {n_test}",
        "box": f"{box} px, {pixel:.4g} Å/px", "r_max": f"{rmax:.4g} px = 1/{box * pixel / rmax:.4g} Å"
        f" ({100 * rmax / (box / 2):.3g} % of Nyquist)",
        "Fourier coefficients (half disk)": len(lik.points),
        "quadrature": f"{len(quad.directions)} directions × {len(quad.inplane_angles)} in-plane × "
                      f"{len(quad.shifts)} shifts = {quad.size:,} points",
        "flops per gradient evaluation": f"{lik.flops_per_image() / 1e6:.4g} MFLOP",
        "minibatch": protocol.get("batch_size", 100),
        "budget": f"{protocol.get('budget_epochs', 10)} epochs = "
                  f"{int(protocol.get('budget_epochs', 10) * n_train):,} gradient evaluations",
        "data": cached,
    }


def cmd_info(args) -> None:
    """Print the sizes of a task at a scale."""
    for key, value in describe(load_spec(args.task), args.scale, _data_dir(args)).items():
        print(f"{key:34s} {value}")


def cmd_simulate(args) -> None:
    """Simulate a task's dataset (into the cache, or into --out)."""
    from .datasets import ensure_simulated, simulation_params
    spec = load_spec(args.task)
    scale = spec.scale(args.scale)
    if spec.section("dataset").get("kind") != "simulated":
        raise InputError(f"{spec.path}: task {spec.name!r} reads a STAR file; nothing to simulate")
    if args.out:
        from .simulate import simulate
        meta = simulate(simulation_params(spec, scale), Path(args.out), progress=not args.quiet)
        folder = Path(args.out)
    else:
        folder = ensure_simulated(spec, scale, _data_dir(args), progress=not args.quiet)
        import json
        meta = json.loads((folder / "meta.json").read_text())
    print(f"{spec.name} ({scale.name}): {meta['params']['n_images']} images in {folder}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cryobench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, func, help_text, task=True):
        p = sub.add_parser(name, help=help_text, description=help_text)
        if task:
            p.add_argument("task", help="task name (see `cryobench list`) or path to a .toml")
            p.add_argument("--scale", default="ci", help=f"one of {', '.join(SCALES)} (default ci)")
        p.add_argument("--data-dir", help="dataset cache (default $CRYOBENCH_DATA or "
                                          "~/.cache/cryobench)")
        p.set_defaults(func=func)
        return p

    add("list", cmd_list, "list tasks and optimizers", task=False)
    add("info", cmd_info, "sizes of a task at a scale: images, r_max, quadrature, flops")
    p = add("simulate", cmd_simulate, "simulate a task's dataset (cached unless --out)")
    p.add_argument("--out", help="write the dataset into this folder instead of the cache")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (InputError, ValueError, FileNotFoundError) as exc:
        print(f"cryobench: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
