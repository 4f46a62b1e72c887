"""`loomray bench loop` (the training step alone, optionally profiled) and `loomray bench
sample` (the speed of each sampler on a trained model)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from loomray.cli import (
    Table,
    _config_or_fail,
    _device_name,
    _device_or_fail,
    _path_or_fail,
    bench_app,
    console,
    fail,
)


@bench_app.command("sample")
def bench_sample_cmd(
    ckpt: str = typer.Option(..., help="Checkpoint file or run directory."),
    methods: str = typer.Option(
        None, help="Comma-separated samplers (euler-N, midpoint-N, heun-N, rk4-N, dopri5; default: "
        "the run's eval.methods)."
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
    from loomray.latents.autoencoder import AutoencoderError
    from loomray.paths import file_to_write
    from loomray.sampling import parse_method

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
            {**{k: v for k, v in r.__dict__.items() if k != "profile"},
             "device": _device_name(dev), "batch": cfg.train.batch}
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


@bench_app.command("sweep")
def bench_sweep_cmd(
    trials: int = typer.Option(16, help="Trials of each sweep."),
    steps: int = typer.Option(60, help="Training steps of each model (of batch 128)."),
    gpu_nodes: int = typer.Option(4, help="Fake GPU nodes the autoscaler may add."),
    gpus_per_node: int = typer.Option(4, help="GPUs each fake node declares."),
    out: str = typer.Option(None, help="Also write the table as JSON here."),
) -> None:
    """GPU time a sweep of caches.yaml's shape keeps busy, on a fake autoscaling GPU
    cluster (tiny models on the CPU): trials waiting in their slots vs put aside."""
    from dataclasses import asdict

    from loomray.bench.sweep import bench_sweep
    from loomray.paths import file_to_write
    from loomray.sweep import SweepError

    if min(trials, steps, gpu_nodes, gpus_per_node) < 1:
        fail("--trials, --steps, --gpu-nodes and --gpus-per-node must be at least 1")
    path = _path_or_fail(file_to_write, out, "--out") if out else None
    try:
        runs = bench_sweep(trials, steps, gpu_nodes, gpus_per_node, log=console.print)
    except SweepError as err:
        fail(str(err))
    gpus = gpu_nodes * gpus_per_node
    table = Table(title=f"caches.yaml's shape, {trials} trials, {gpus} fake GPUs")
    for col in ("waiting trials", "at once", "wall s", "GPU time held", "slot-s waited",
                "models trained", "trials done", "pruned"):
        table.add_column(col, justify="right")
    for r in runs:
        table.add_row(
            "put aside" if r.put_aside else "hold a slot", str(r.concurrency),
            f"{r.seconds:.0f}", f"{100 * r.busy:.0f}%", f"{r.waited_s:.0f}", str(r.trained),
            str(r.finished), str(r.pruned),
        )
    console.print(table)
    if path:
        path.write_text(json.dumps([asdict(r) for r in runs], indent=2))
