"""What each ``cryobench`` command does (the functions ``cryobench.cli.parser`` dispatches to)."""
from __future__ import annotations

import sys
from pathlib import Path

from cryobench.data.spec import check_splits, known_tasks, load_spec
from cryobench.errors import InputError


def _data_dir(args) -> Path:
    from cryobench.data.datasets import default_data_dir
    return Path(args.data_dir) if args.data_dir else default_data_dir()


def cmd_list(args) -> None:
    """Print the tasks and the optimizers with their hyper-parameter defaults and ranges."""
    from cryobench.harness.registry import scan
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
    from cryobench.data.datasets import dataset_size, load_dataset, simulated_dir
    from cryobench.task import likelihood_for
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
    from cryobench.data.realdata import CONTRAST_Z
    from cryobench.data.star import read_particles
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
    from cryobench.data.datasets import ensure_simulated, simulation_params
    spec = load_spec(args.task)
    scale = spec.scale(args.scale)
    if spec.section("dataset").get("kind") != "simulated":
        raise InputError(f"{spec.path}: task {spec.name!r} reads a STAR file; nothing to simulate")
    check_splits(spec, scale, scale.n_images or 0)     # a task whose splits do not fit is refused
    if args.out:
        from cryobench.data.simulate import simulate
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
    from cryobench.harness.tuned import load_tuned
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
    from cryobench.harness.cell import make_cell
    from cryobench.harness.grid import config_label, run_grid
    from cryobench.harness.registry import resolve
    from cryobench.harness.results import load_results
    from cryobench.harness.run import RunSpec, preflight
    from cryobench.harness.tuned import default_tuned_file, resolve_params
    from cryobench.task import task_hash
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
    from cryobench.harness.grid import expand, load_grid, run_grid
    from cryobench.harness.reference import record_references
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads {args.threads}: the thread count is a positive integer")
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers {args.workers}: the number of processes is a positive integer")
    grid = load_grid(args.grid)
    out = Path(args.out) if args.out else grid.path.parent
    cells = expand(grid, _data_dir(args), threads=args.threads or 1)
    written = record_references(out, {(c.spec.task, c.spec.scale): c.task_hash for c in cells},
                                _data_dir(args))
    if written:
        print(f"wrote the ground truth's test NLL into {written}")
    status = run_grid(cells, out, args.workers, args.scheduler, _data_dir(args),
                      progress=not args.quiet)
    counts = {s: list(status.values()).count(s) for s in sorted(set(status.values()))}
    print(f"{len(cells)} cells in {out / 'cells'}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return _report_interrupted(status, out)


def _ranges(items: list[str]) -> dict:
    """``--range NAME=LOW,HIGH`` arguments as {name: (low, high)}, one error line for a bad one."""
    out = {}
    for item in items:
        name, _, bounds = item.partition("=")
        try:
            low, high = (float(v) for v in bounds.split(","))
        except ValueError:
            raise InputError(f"--range {item}: expected NAME=LOW,HIGH with two numbers") from None
        out[name.strip()] = (low, high)
    return out


def cmd_tune(args) -> None:
    """Choose hyper-parameters on the validation split and record them for run and grid."""
    from cryobench.harness.tuning import tune
    chosen = tune(args.task, args.scale, args.optimizers.split(","), args.params.split(","),
                  args.points, args.budget, args.out, args.record,
                  args.workers, _data_dir(args), progress=not args.quiet, seeds=args.seeds,
                  per_decade=args.per_decade, ranges=_ranges(args.range))
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
    from cryobench.harness.results import load_results
    from cryobench.report.figures import write_report
    out = Path(args.out) if args.out else Path(args.results[0]) / "report"
    paths = write_report(load_results(*args.results), out)
    print(f"wrote {len(paths)} files into {out} (start with {out / 'report.md'})")


def leaderboard_sizes(root: Path, sets: list[str]) -> dict:
    """{(task, scale): (K training images, band-limit resolution 1/r_max in Å, box side in Å)} of
    the simulated (task, scale) pairs in the result sets, from the task specifications (for the
    findings)."""
    import json

    from cryobench.data.spec import load_spec
    from cryobench.task import split_sizes
    pairs = set()
    for name in sets:
        for meta in sorted((root / name).glob("cells/*/meta.json")):
            run = json.loads(meta.read_text())["run"]
            pairs.add((run["task"], run["scale"]))
    sizes = {}
    for task, scale in sorted(pairs):
        sc = load_spec(task).scale(scale)
        if sc.box and sc.pixel_size:
            sizes[task, scale] = (split_sizes(task, scale)["train"],
                                  sc.box * sc.pixel_size / sc.rmax_px(sc.box), sc.box * sc.pixel_size)
    return sizes


def cmd_leaderboard(args) -> None:
    """Regenerate the leaderboard (markdown, HTML page and figures) from the committed results."""
    from cryobench.report.figures import result_sets, write_leaderboard
    root = Path(args.results)
    paths = write_leaderboard(root, sizes=leaderboard_sizes(root, result_sets(root)))
    print(f"wrote {len(paths)} files; see {Path(args.results) / 'LEADERBOARD.md'} and .html")


def cmd_verify(args) -> int:
    """Recompute committed cells (or their trace prefixes) and compare with what is stored."""
    from cryobench.harness.verify import verify
    if args.sample is not None and args.sample < 1:
        raise InputError(f"--sample {args.sample}: the number of cells is a positive integer")
    if args.prefix is not None and args.prefix < 1:
        raise InputError(f"--prefix {args.prefix}: a prefix is a positive number of evaluations")
    return verify(args.results, args.sample, args.prefix)


def cmd_bench(args) -> None:
    """Kernel and SGEMM throughput, SGD epoch, test NLL and peak memory per task (SPEC §5)."""
    from cryobench.checks.bench import DEFAULT_TASKS, run_benches
    run_benches(args.task or DEFAULT_TASKS, args.scale, _data_dir(args), threads=args.threads,
                epoch_batches=args.epoch_batches, repeats=args.repeats)


def cmd_gate(args) -> int:
    """The quality gate: every optimizer on the ci tasks against the committed reference."""
    from cryobench.checks.gate import DEFAULT_REFERENCE, gate
    return gate(reference=Path(args.reference or DEFAULT_REFERENCE), update=args.update,
                budget=args.budget, seeds=args.seeds, data_dir=_data_dir(args))


def cmd_speed_gate(args) -> int:
    """The speed check: kernel time over GEMM time, interleaved, against the committed reference."""
    from cryobench.checks.speedgate import DEFAULT_REFERENCE, speed_gate
    return speed_gate(Path(args.reference or DEFAULT_REFERENCE), args.update,
                      tolerance=args.tolerance, tasks=args.task, scale=args.scale,
                      data_dir=_data_dir(args))
