"""The ``cryobench`` command line (SPEC §6). ``cryobench COMMAND --help`` says the rest."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


from .errors import InputError
from .spec import SCALES, check_splits, known_tasks, load_spec

SCALE_HELP = (f"a scale of the task: {', '.join(SCALES)} for the shipped tasks, or any scale the "
              "task's own [scales.NAME] tables declare (default: the task's default_scale, else "
              "its only scale, else ci)")


def _data_dir(args) -> Path:
    from .datasets import default_data_dir
    return Path(args.data_dir) if args.data_dir else default_data_dir()


def cmd_list(args) -> None:
    """Print the tasks and the optimizers with their hyper-parameter defaults and ranges."""
    from .registry import scan
    print("tasks:")
    for name in known_tasks():
        spec = load_spec(name)
        print(f"  {name:22s} {spec.raw.get('description', '')}")
    print("optimizers:")
    registry = scan()
    for name, m in sorted(registry.methods.items()):
        hypers = "  ".join(f"{k}={h.default:g} [{h.low:g}, {h.high:g}{', log' if h.log else ''}]"
                           for k, h in m.hypers.items())
        print(f"  {name:16s} {hypers}")
    for error in registry.broken.values():
        print(f"  broken: {error}")


def describe(spec, scale_name: str, data_dir: Path) -> dict:
    """Sizes of a task at a scale: images, splits, box, r_max, quadrature, flops per evaluation."""
    from .datasets import dataset_size, load_dataset, simulated_dir
    from .task import likelihood_for
    scale = spec.scale(scale_name)
    kind = spec.section("dataset").get("kind")
    check_splits(spec, scale, dataset_size(spec, scale))        # before reading any stack
    if kind == "simulated":
        box, pixel, n_images = scale.box, scale.pixel_size, scale.n_images
        folder = simulated_dir(spec, scale, data_dir)
        cached = str(folder) if (folder / "manifest.json").is_file() else f"not simulated yet ({folder})"
    else:
        data = load_dataset(spec, scale, data_dir, progress=False)
        box, pixel, n_images = data.images.shape[-1], data.pixel_size, len(data.images)
        cached = str(spec.path.parent / spec.section("dataset")["star"])
        real = _star_lines(spec, data)
    protocol = spec.section("protocol")
    sizes = check_splits(spec, scale, n_images)
    lik = likelihood_for(spec, scale, box, pixel)
    quad, rmax = lik.quadrature, lik.rmax
    n_train = sizes["train"]
    return {
        "task": spec.name, "scale": scale.name, "images": n_images,
        "splits (train / validation / test)": f"{n_train} / {sizes['validation']} / {sizes['test']}",
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
        **(real if kind != "simulated" else {}),
    }


def _star_lines(spec, data) -> dict:
    """What ``info`` says about a STAR task's origins, reference map and contrast."""
    from .io import read_particles
    from .realdata import CONTRAST_Z
    recipe = spec.section("dataset")
    origins = read_particles(spec.path.parent / recipe["star"], max_images=1).origins
    z = data.contrast_z
    sign = ("as the model expects (white particles)" if z > CONTRAST_Z else
            "OPPOSITE to the model's: change invert_sign" if z < -CONTRAST_Z else "inconclusive")
    return {"origins": "applied (images re-centred)" if origins is not None else "none in the STAR file",
            "reference": (f"{recipe['reference']} (resampled to {data.images.shape[-1]} px, "
                          f"{data.pixel_size:.4g} Å/px)") if "reference" in recipe else "none",
            "contrast": f"z = {z:+.1f}, {sign}"}


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
    check_splits(spec, scale, scale.n_images or 0)     # a task whose splits do not fit is refused
    if args.out:
        from .simulate import simulate
        meta = simulate(simulation_params(spec, scale), Path(args.out), progress=not args.quiet)
        folder = Path(args.out)
    else:
        folder = ensure_simulated(spec, scale, _data_dir(args), progress=not args.quiet)
        import json
        meta = json.loads((folder / "meta.json").read_text())
    print(f"{spec.name} ({scale.name}): {meta['params']['n_images']} images in {folder}")


def _parse_sets(items) -> dict:
    """``["lr=0.5", "momentum=0.9"]`` → {"lr": 0.5, "momentum": 0.9} (values as numbers)."""
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InputError(f"--set {item!r}: expected NAME=VALUE, e.g. --set lr=0.5")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise InputError(f"--set {item!r}: {value!r} is not a number") from None
    return out


def _tuned_file(value, default: Path) -> dict:
    """Tuned values from --tuned: 'none' for defaults only; a named file must exist; without
    --tuned, ``default`` if it exists."""
    from .tuning import load_tuned
    if value == "none":
        return {}
    if value is not None and not Path(value).is_file():
        raise InputError(f"--tuned {value}: no such tuned-values file")
    return load_tuned(value or default)


def _report_interrupted(status: dict, out: Path) -> int:
    """Exit status 1 with one line when some cells have no result (they were interrupted)."""
    lost = [c for c, s in status.items() if s == "interrupted"]
    if lost:
        print(f"cryobench: error: {len(lost)} of {len(status)} cells were interrupted and have no "
              f"result in {out / 'cells'} (the reason is printed above); run the same command "
              "again to compute them", file=sys.stderr)
        return 1
    return 0


def cmd_run(args) -> int:
    """Run one optimizer on one task and write its cell folder (trace, metadata, densities)."""
    from .cell import make_cell
    from .grid import config_label, run_grid
    from .registry import resolve
    from .results import load_results
    from .run import RunSpec, preflight
    from .task import task_hash
    from .tuning import default_tuned_file, resolve_params
    method = resolve(args.optimizer)
    if args.budget is not None and args.budget < 1:
        raise InputError(f"--budget {args.budget}: a budget is a positive number of gradient evaluations")
    if args.time_limit is not None and not args.time_limit > 0:
        raise InputError(f"--time-limit {args.time_limit}: a time limit is a positive number of seconds")
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads {args.threads}: the thread count is a positive integer")
    if args.seed < 0:
        raise InputError(f"--seed {args.seed}: a seed is a training stream index ≥ 0")
    scale = load_spec(args.task).scale(args.scale).name
    thash = task_hash(args.task, scale, _data_dir(args))
    tuned = _tuned_file(args.tuned, default_tuned_file(args.task))
    params, source = resolve_params(method, _parse_sets(args.set), tuned, args.task, scale, thash)
    spec = RunSpec(args.task, scale, args.optimizer, params, args.seed, args.budget,
                   time_limit=args.time_limit, label=config_label(method, params),
                   threads=args.threads or 1)
    preflight(spec, method, _data_dir(args))
    cell = make_cell(spec, thash, method)
    out = Path(args.out)
    status = run_grid([cell], out, workers=1, data_dir=_data_dir(args), progress=False)
    print("hyper-parameters: " + ", ".join(f"{k}={v:g} ({source[k]})" for k, v in params.items()))
    if status[cell.cell] == "interrupted":
        return _report_interrupted(status, out)
    row = load_results(out / "cells" / cell.cell).cells.iloc[0]
    print(f"status {row.status}{': ' + row.message if row.message else ''}; {row.evals:,} evaluations "
          f"in {row.wall_s or 0:.1f} s; final test NLL {row.final_nll:.6g}; FSC 0.5 at "
          f"{row.resolution_A:.3g} Å")
    print(f"results: {out / 'cells' / cell.cell}")
    return 0


def cmd_grid(args) -> int:
    """Run a grid file's cells (cached: finished cells are not recomputed)."""
    from .grid import expand, load_grid, run_grid
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads {args.threads}: the thread count is a positive integer")
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers {args.workers}: the number of processes is a positive integer")
    grid = load_grid(args.grid)
    out = Path(args.out) if args.out else grid.path.parent
    cells = expand(grid, _data_dir(args), threads=args.threads or 1)
    status = run_grid(cells, out, args.workers, args.scheduler, _data_dir(args),
                      progress=not args.quiet)
    counts = {s: list(status.values()).count(s) for s in sorted(set(status.values()))}
    print(f"{len(cells)} cells in {out / 'cells'}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return _report_interrupted(status, out)


def cmd_tune(args) -> None:
    """Choose hyper-parameters on the validation split and record them for run and grid."""
    from .tuning import tune
    chosen = tune(args.task, args.scale, args.optimizers.split(","), args.params.split(","),
                  args.points, args.budget, args.out, args.record,
                  args.workers, _data_dir(args), progress=not args.quiet, seeds=args.seeds)
    for (task, name), entry in sorted(chosen.items()):
        values = ", ".join(f"{k}={v:g}" for k, v in entry["params"].items()
                           if k in args.params.split(","))
        edge = "; ".join(f"{k} blew up at {v['value']:g} ({v['ratio']:.3g}×)" if v["value"] is not None
                         else f"no {k} blew up in the range" for k, v in entry["nearest_blow_up"].items())
        print(f"{task:20s} {name:14s} {values}  (median validation NLL {entry['validation_nll']:.6g}"
              f" over {len(entry['seeds'])} seeds; {edge})")
    print("recorded in " + ", ".join(sorted({e["recorded_in"] for e in chosen.values()})))


def cmd_report(args) -> None:
    """Figures, tables and profiles of one or more results folders."""
    from .report import write_report
    from .results import load_results
    out = Path(args.out) if args.out else Path(args.results[0]) / "report"
    paths = write_report(load_results(*args.results), out)
    print(f"wrote {len(paths)} files into {out} (start with {out / 'report.md'})")


def cmd_leaderboard(args) -> None:
    """Regenerate the leaderboard (markdown and figures) from the committed results."""
    from .report import write_leaderboard
    paths = write_leaderboard(Path(args.results))
    print(f"wrote {len(paths)} files; see {Path(args.results) / 'LEADERBOARD.md'}")


def cmd_verify(args) -> int:
    """Recompute committed cells (or their trace prefixes) and compare with what is stored."""
    from .verify import verify
    if args.sample is not None and args.sample < 1:
        raise InputError(f"--sample {args.sample}: the number of cells is a positive integer")
    if args.prefix is not None and args.prefix < 1:
        raise InputError(f"--prefix {args.prefix}: a prefix is a positive number of evaluations")
    return verify(args.results, args.sample, args.prefix)


def cmd_bench(args) -> None:
    """Kernel and SGEMM throughput, SGD epoch, test NLL and peak memory per task (SPEC §5)."""
    from .bench import DEFAULT_TASKS, run_benches
    run_benches(args.task or DEFAULT_TASKS, args.scale, _data_dir(args), threads=args.threads,
                epoch_batches=args.epoch_batches, repeats=args.repeats)


def cmd_gate(args) -> int:
    """The quality gate: every optimizer on the ci tasks against the committed reference."""
    from .gate import DEFAULT_REFERENCE, gate
    return gate(reference=Path(args.reference or DEFAULT_REFERENCE), update=args.update,
                budget=args.budget, seeds=args.seeds, data_dir=_data_dir(args))


def cmd_speed_gate(args) -> int:
    """The speed check: kernel time over GEMM time, interleaved, against the committed reference."""
    from .speedgate import DEFAULT_REFERENCE, speed_gate
    return speed_gate(Path(args.reference or DEFAULT_REFERENCE), args.update,
                      tolerance=args.tolerance, tasks=args.task, scale=args.scale,
                      data_dir=_data_dir(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cryobench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, func, help_text, task=True):
        p = sub.add_parser(name, help=help_text, description=help_text)
        if task:
            p.add_argument("task", help="task name (see `cryobench list`) or path to a .toml")
            p.add_argument("--scale", help=SCALE_HELP)
        p.add_argument("--data-dir", help="dataset cache (default $CRYOBENCH_DATA or "
                                          "~/.cache/cryobench)")
        p.set_defaults(func=func)
        return p

    add("list", cmd_list, "list tasks and optimizers", task=False)
    add("info", cmd_info, "sizes of a task at a scale: images, r_max, quadrature, flops")
    p = add("simulate", cmd_simulate, "simulate a task's dataset (cached unless --out)")
    p.add_argument("--out", help="write the dataset into this folder instead of the cache")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = add("run", cmd_run, "run one optimizer on one task: trace, status, densities, FSC")
    p.add_argument("optimizer", help="registered name, module:attr or path/file.py:attr")
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="a hyper-parameter value (repeatable); others come from --tuned or defaults")
    p.add_argument("--seed", type=int, default=0, help="training stream and optimizer RNG (default 0)")
    p.add_argument("--budget", type=int, help="gradient evaluations (default: the task's 10 epochs)")
    p.add_argument("--time-limit", type=float, help="stop after this many seconds of optimizer time, "
                                                    "inside a step too (default 6 hours)")
    p.add_argument("--tuned", help="tuned values file (default: results/tuned.json for a shipped "
                   "task, TASK.tuned.json beside any other task file); 'none' for defaults")
    p.add_argument("--threads", type=int, help="BLAS threads (default 1; part of the run's "
                                                "identity, since they change the last bits)")
    p.add_argument("--out", default="runs", help="results folder (default ./runs)")

    p = add("grid", cmd_grid, "run a TOML grid of tasks × scales × optimizers × values × seeds",
            task=False)
    p.add_argument("grid", help="grid file, e.g. results/paper-small/grid.toml")
    p.add_argument("--out", help="results folder (default: the grid file's folder)")
    p.add_argument("--workers", type=int, help="local processes (default: one per core)")
    p.add_argument("--threads", type=int, help="BLAS threads per cell (default 1; part of each "
                                                "cell's identity, since they change the last bits)")
    p.add_argument("--scheduler", help="address of a Dask distributed scheduler, e.g. tcp://host:8786")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = add("tune", cmd_tune, "choose hyper-parameters on the validation split", task=False)
    p.add_argument("task", nargs="+", help="task names or .toml paths")
    p.add_argument("--scale", help=SCALE_HELP + "; without it each task uses its own")
    p.add_argument("--optimizers", default="sgd,momentum,nesterov,adagrad,tonga,olbfgs,hessian-free",
                   help="comma-separated (default: the paper's seven)")
    p.add_argument("--params", default="lr", help="hyper-parameters to search (default lr)")
    p.add_argument("--points", type=int, default=9, help="values per hyper-parameter (default 9)")
    p.add_argument("--seeds", type=int, default=2, help="training streams per candidate; the "
                                                       "median decides (default 2, at least 2)")
    p.add_argument("--budget", type=int, help="gradient evaluations per candidate (default 1 epoch)")
    p.add_argument("--out", help="folder for the candidate runs (default: results/tune/SCALE for "
                   "a shipped task, TASK.tune/SCALE beside any other task file)")
    p.add_argument("--record", help="tuned values file to update (default: results/tuned.json for "
                   "a shipped task; TASK.tuned.json beside any other task file, never the "
                   "repository's results/)")
    p.add_argument("--workers", type=int, help="local processes (default: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = add("report", cmd_report, "figures 3 and 4, the 5K/50K/Final table, FSC, profiles",
            task=False)
    p.add_argument("results", nargs="+", help="results folders (holding cells/)")
    p.add_argument("--out", help="output folder (default: RESULTS/report)")

    p = add("leaderboard", cmd_leaderboard, "regenerate results/LEADERBOARD.md from committed results",
            task=False)
    p.add_argument("--results", default=str(Path(__file__).resolve().parent.parent / "results"),
                   help="the results folder (default: the repository's results/)")

    p = add("verify", cmd_verify, "recompute stored cells (or their trace prefixes) and compare: "
                                  "bit-identical on the same platform, within the seed spread elsewhere",
            task=False)
    p.add_argument("results", nargs="+", help="results folders (holding cells/)")
    p.add_argument("--sample", type=int, help="verify this many cells, spread over the methods "
                                              "(default: all)")
    p.add_argument("--prefix", type=int, metavar="EVALS",
                   help="recompute each trace up to this many evaluations (default: whole runs)")

    p = add("bench", cmd_bench, "kernel vs SGEMM throughput, SGD epoch, test NLL, peak memory",
            task=False)
    p.add_argument("--task", action="append", help="task to bench (repeatable; default: "
                                                  "synthetic-cylinder and thermus-style)")
    p.add_argument("--scale", default="ci", help=f"a scale of the benched tasks: "
                   f"{', '.join(SCALES)}, or a --task's own [scales.NAME] (default ci)")
    p.add_argument("--epoch-batches", type=int, metavar="N",
                   help="time N SGD minibatches and extrapolate to the epoch (default: the whole "
                        "epoch; 50 at paper scale)")
    p.add_argument("--threads", type=int, help="BLAS and numba threads (default: all cores)")
    p.add_argument("--repeats", type=int, default=5, help="timings are the best of this many "
                                                         "(default 5)")

    p = add("gate", cmd_gate, "quality gate: each optimizer on the ci tasks vs committed reference "
                              "values; exit 1 if one got worse beyond its seed noise", task=False)
    p.add_argument("--reference", help="reference file (default results/gate/reference.json)")
    p.add_argument("--update", action="store_true", help="rewrite the reference from this tree")
    p.add_argument("--budget", type=int, help="with --update: gradient evaluations (default 2000)")
    p.add_argument("--seeds", type=int, help="with --update: seeds per method (default 5)")

    p = add("speed-gate", cmd_speed_gate, "speed check: kernel time over SGEMM time on the same "
            "shapes, interleaved, vs the committed reference; exit 1 if slower than allowed",
            task=False)
    p.add_argument("--reference", help="reference file (default results/gate/speed.json)")
    p.add_argument("--update", action="store_true", help="rewrite the reference on this machine")
    p.add_argument("--tolerance", type=float, help="fail above this × the reference ratio "
                                                   "(default: the reference's, 1.4)")
    p.add_argument("--task", action="append", help="with --update: task (repeatable; default both)")
    p.add_argument("--scale", help="with --update: scale (default small)")
    return parser


def main(argv=None) -> int:
    from .grid import GridInterrupted
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (InputError, ValueError, FileNotFoundError) as exc:
        print(f"cryobench: error: {exc}", file=sys.stderr)
        return 2
    except GridInterrupted as exc:
        print(f"cryobench: {exc}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
