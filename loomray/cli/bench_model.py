"""`loomray bench eval/quality/sample/loop`: a trained model's evaluation cost,
quality against the baselines, sampler speed, and the training step alone."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from loomray.cli.common import (
    Table,
    _config_or_fail,
    _device_or_fail,
    _path_or_fail,
    _worker_counts,
    bench_app,
    console,
    fail,
    keep_results,
    locked_or_fail,
    scaling,
)


def _device_name(dev: str) -> str:
    import torch

    device = torch.device(dev)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


@bench_app.command("eval")
def bench_eval_cmd(
    config: str = typer.Option("digits", "--config", "-c", help="Preset name or YAML path."),
    overrides: list[str] = typer.Argument(None, help="section.key=value overrides."),
    workers: str = typer.Option("1,2", help="Comma-separated worker counts to time."),
    n: int = typer.Option(None, help="Samples per sampler (default: eval.n)."),
    steps: int = typer.Option(300, help="Training steps of the model evaluated."),
    repeats: int = typer.Option(2, help="Timed rounds over the worker counts."),
    address: str = typer.Option(None, help="Ray cluster to join (default: a local Ray)."),
) -> None:
    """Wall time of one evaluation (every eval.methods sampler) with 1, 2, ... workers."""

    from loomray.bench.eval import bench_eval
    from loomray.cluster.connect import LaunchError, connect
    from loomray.data import DatasetError
    from loomray.evaluation.weights import EvaluationError

    counts = sorted(set(_worker_counts(workers)))
    if steps < 1 or repeats < 1:
        fail(f"--steps and --repeats must be at least 1, got {steps} and {repeats}")
    cfg = _config_or_fail(config, list(overrides or []))
    count = n or cfg.eval.n
    try:
        connect(address, quiet=True)
        with console.status(f"{cfg.name}: evaluating {count} samples per sampler..."):
            runs = bench_eval(cfg, counts, count, steps, repeats)
    except (LaunchError, DatasetError, EvaluationError) as err:
        fail(str(err))
    methods = list(cfg.eval.methods)
    table = Table(title=f"{cfg.name}: {count} samples x {', '.join(methods)}")
    for col in ("workers", "seconds (median)", "speed-up", *methods):
        table.add_column(col, justify="right")
    for w, seconds, speedup in scaling(runs, counts):
        values = [f"{next(r for r in runs if r.workers == w).values[m]:.4f}" for m in methods]
        table.add_row(str(w), f"{seconds:.1f}", f"{speedup:.2f}x", *values)
    console.print(table)
    console.print(f"per round: {', '.join(f'{r.workers}w {r.seconds:.1f}s' for r in runs)}")


@bench_app.command("quality")
def bench_quality_cmd(
    config: str = typer.Option("digits", "--config", "-c", help="Preset name or YAML path."),
    overrides: list[str] = typer.Argument(None, help="section.key=value overrides."),
    seeds: int = typer.Option(3, help="Seeds per coupling."),
    steps: int = typer.Option(None, help="Training steps of every run (default: the config's)."),
    n: int = typer.Option(None, help="Samples per score (default: eval.n)."),
    out: str = typer.Option("bench-quality", help="Folder for the table (JSON) and the plot."),
    methods: str = typer.Option(
        None, help="Samplers to score, comma-separated (default: the config's eval.methods)."
    ),
    jobs: int = typer.Option(1, help="Runs side by side, one process and one thread each."),
) -> None:
    """Independent vs minibatch-OT vs LOOM: same model, steps and seeds; quality per NFE."""

    from loomray.bench.quality import run_quality
    from loomray.data import DatasetError
    from loomray.evaluation.evaluate import method_names
    from loomray.evaluation.weights import EvaluationError
    from loomray.paths import folder_to_write

    extra = list(overrides or []) + ([f"train.steps={steps}"] if steps else [])
    cfg = _config_or_fail(config, extra)
    folder = _path_or_fail(folder_to_write, out, "--out")
    if seeds < 1 or jobs < 1:
        fail(f"--seeds and --jobs must be at least 1, got {seeds} and {jobs}")
    try:
        names = method_names(methods, cfg)
    except EvaluationError as err:
        fail(str(err))
    keep_results(folder, "quality.json")
    with locked_or_fail(folder, "output folder"):
        try:
            runs, global_pair, metric = run_quality(
                cfg, seeds, names, n, log=lambda line: console.print(line), jobs=jobs
            )
        except (EvaluationError, DatasetError) as err:
            fail(str(err))
        _quality_table(cfg, seeds, runs, metric, global_pair)
        _write_quality(folder, cfg, seeds, runs, metric, global_pair)


def _quality_table(cfg, seeds: int, runs, metric: str, global_pair: float) -> None:
    import numpy as np

    from loomray.bench.quality import KINDS, summarize

    methods = list(runs[0].scores)
    summary = summarize(runs, methods)
    table = Table(
        title=f"{cfg.name}: {metric.upper()} (mean ± std over {seeds} seeds), "
        f"{cfg.train.steps} steps"
    )
    table.add_column("sampler (NFE)")
    for kind in KINDS:
        table.add_column(kind, justify="right")
    for m in methods:
        nfe = np.mean([r.nfe[m] for r in runs])
        table.add_row(
            f"{m} ({nfe:.0f})", *(f"{summary[k][m][0]:.3f} ± {summary[k][m][1]:.3f}" for k in KINDS)
        )
    table.add_row("pair cost", *(f"{summary[k]['pair_cost'][0]:.4f}" for k in KINDS))
    table.add_row("global OT pair cost", *(f"{global_pair:.4f}" for _ in KINDS))
    console.print(table)


def _write_quality(folder: Path, cfg, seeds: int, runs, metric: str, global_pair: float) -> None:
    import json

    from loomray.bench.quality import plot_quality, summarize

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "quality.json").write_text(
        json.dumps(
            {
                "config": cfg.to_dict(),
                "metric": metric,
                "global_ot_pair_cost": global_pair,
                "runs": [r.__dict__ for r in runs],
            },
            indent=2,
        )
    )
    plot = plot_quality(
        summarize(runs, list(runs[0].scores)),
        runs,
        metric,
        folder / "quality.png",
        f"{cfg.name}: {cfg.train.steps} steps, {seeds} seeds",
    )
    console.print(f"wrote {folder / 'quality.json'} and {plot}", markup=False)


@bench_app.command("sample")
def bench_sample_cmd(
    ckpt: str = typer.Option(..., help="Checkpoint file or run directory."),
    methods: str = typer.Option(
        None,
        help="Comma-separated samplers (euler-N, midpoint-N, heun-N, rk4-N, dopri5; default: "
        "the run's eval.methods).",
    ),
    n: int = typer.Option(4096, help="Samples per sampler."),
    batch: int = typer.Option(None, help="Samples per batch (default: the run's eval.batch)."),
    device: str = typer.Option(None, help="cuda or cpu (default: cuda when available)."),
    out: str = typer.Option(None, help="Also write the table as JSON here."),
) -> None:
    """Images/s and NFE of each sampler on a checkpoint's EMA model (no FID)."""
    from dataclasses import replace

    from loomray.bench.sample import bench_sample
    from loomray.checkpoint import CheckpointError, ema_model_of, load_checkpoint
    from loomray.flow.sampling import parse_method
    from loomray.latents.autoencoder import AutoencoderError
    from loomray.paths import file_to_write

    if n < 1:
        fail(f"--n must be at least 1, got {n}")
    if batch is not None and batch < 1:
        fail(f"--batch must be at least 1, got {batch}")
    if out:
        _path_or_fail(file_to_write, out, "--out")
    dev = _device_or_fail(device)
    try:
        cfg, model = ema_model_of(load_checkpoint(ckpt))
        chosen = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
        chosen = chosen or list(cfg.eval.methods)
        for m in chosen:
            parse_method(m)
    except (CheckpointError, ValueError) as err:
        fail(str(err))
    if batch is not None:
        cfg = replace(cfg, eval=replace(cfg.eval, batch=batch))
    name = _device_name(dev)
    try:
        rows = bench_sample(
            model, cfg, chosen, n, dev, progress=lambda line: console.print(line, markup=False)
        )
    except AutoencoderError as err:
        fail(str(err))
    table = Table(title=f"{cfg.name} on {name}: {n} samples per sampler, batch {cfg.eval.batch}")
    for col in ("sampler", "NFE", "seconds", "images/s"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r.method, f"{r.nfe:.1f}", f"{r.seconds:.2f}", f"{r.images_per_s:,.0f}")
    console.print(table)
    if out:
        records = [
            {**r.__dict__, "images_per_s": r.images_per_s, "device": name, "batch": cfg.eval.batch}
            for r in rows
        ]
        Path(out).write_text(json.dumps(records, indent=2))


@bench_app.command("loop")
def bench_loop_cmd(
    config: str = typer.Option("cifar10", "--config", "-c", help="Preset name or YAML path."),
    overrides: list[str] = typer.Argument(None, help="section.key=value overrides."),
    steps: int = typer.Option(50, help="Timed steps per mode."),
    warmup: int = typer.Option(10, help="Untimed steps first."),
    device: str = typer.Option(None, help="cuda or cpu (default: cuda when available)."),
    out: str = typer.Option(None, help="Also write the table as JSON here."),
    modes: str = typer.Option(
        None,
        help="Comma-separated noise sources to time: independent, loom-inline, loom-overlap, "
        "independent-fp32 (the bf16 reference on CUDA). Default: all.",
    ),
    batch_per_rank: int = typer.Option(
        None,
        help="The batch of this one process, as one rank of a multi-GPU run sees it (the "
        "paper's 4-GPU CIFAR-10: 32); default the config's global batch.",
    ),
    profile: str = typer.Option(
        None,
        help="Also profile 10 more steps of each mode (torch.profiler), time 10 more by "
        "phase of the loop without it, and write the summaries and operator tables to "
        "this folder.",
    ),
) -> None:
    """Steps/s of one training process (no Ray): independent, LOOM inline, LOOM overlapped."""
    from loomray.bench.loop import MODES, bench_loop
    from loomray.data import DatasetError
    from loomray.paths import file_to_write

    if steps < 1 or warmup < 0:
        fail(f"--steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}")
    if out:
        _path_or_fail(file_to_write, out, "--out")
    profile_dir = _profile_folder(profile) if profile else None
    chosen = [m.strip() for m in modes.split(",") if m.strip()] if modes else list(MODES)
    unknown = [m for m in chosen if m not in MODES]
    if unknown or not chosen:
        fail(f"unknown --modes {', '.join(unknown) or '(none)'}; use {', '.join(MODES)}")
    extra = list(overrides or [])
    if batch_per_rank is not None:
        extra += [f"train.batch={batch_per_rank}", "train.workers=1"]
    cfg = _config_or_fail(config, extra)
    dev = _device_or_fail(device)
    try:
        with console.status(f"{cfg.name} on {dev}: {warmup} + {steps} steps per mode..."):
            runs = bench_loop(cfg, dev, steps, warmup, chosen, 10 if profile_dir else 0)
    except DatasetError as err:
        fail(str(err))
    table = _loop_table(cfg, dev, steps, runs)
    console.print(table)
    if out:
        rows = [
            {
                **{k: v for k, v in r.__dict__.items() if k != "profile"},
                "device": _device_name(dev),
                "batch": cfg.train.batch,
            }
            for r in runs
        ]
        Path(out).write_text(json.dumps(rows, indent=2))
    if profile_dir:
        _write_profiles(runs, profile_dir, str(table.title))


def _profile_folder(path: str) -> Path:
    """The --profile folder, made now: a bad one fails before minutes of benchmark."""
    from loomray.paths import folder_to_write

    folder = _path_or_fail(folder_to_write, path, "--profile")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        fail(f"--profile {path} cannot be made: {err.strerror or err}")
    return folder


def _loop_table(cfg, dev: str, steps: int, runs) -> Table:
    if cfg.train.graph:
        compiled = ", CUDA graphs" if dev == "cuda" else ", torch.compile (reduce-overhead)"
    else:
        compiled = ", torch.compile" if cfg.train.compile else ""
    table = Table(
        title=f"{cfg.name} on {_device_name(dev)}, batch {cfg.train.batch}, {steps} timed "
        f"steps{compiled}"
    )
    for col in ("noise", "precision", "steps/s", "images/s", "blocked on noise", "vs independent"):
        table.add_column(col, justify="right")
    base = next((r.steps_per_s for r in runs if r.mode == "independent"), runs[0].steps_per_s)
    for r in runs:
        table.add_row(
            r.mode.removesuffix("-fp32"),
            "bf16" if r.bf16 else "fp32",
            f"{r.steps_per_s:.2f}",
            f"{r.steps_per_s * cfg.train.batch:.0f}",
            "in the step" if r.mode == "loom-inline" else f"{r.wait_ms:.2f} ms",
            f"{r.steps_per_s / base:.3f}",
        )
    return table


def _write_profiles(runs, folder: Path, title: str) -> None:
    """Each mode's profile as a summary (JSON) and the operator tables (text)."""
    for r in runs:
        p = r.profile
        summary = {k: v for k, v in p.__dict__.items() if k != "table"}
        (folder / f"{r.mode}.json").write_text(json.dumps({"title": title, **summary}, indent=2))
        (folder / f"{r.mode}.txt").write_text(f"{title}: {r.mode}, {p.steps} steps\n{p.table}")
        console.print(
            f"{r.mode}: {p.wall_ms:.1f} ms per profiled step; device {p.device_ms:.1f} ms, "
            f"host {p.cpu_ms:.1f} ms ({sum(p.blocking.values()):.1f} in CUDA calls that can "
            f"wait), {p.launches:.0f} launches per step",
            markup=False,
        )
        phases = ", ".join(f"{k} {v:.1f}" for k, v in p.phases.items() if k != "wall")
        console.print(
            f"{r.mode}: host ms per unprofiled step by phase: {phases} "
            f"(of {p.phases.get('wall', 0.0):.1f})",
            markup=False,
        )
    console.print(f"wrote the profiles to {folder}", markup=False)
