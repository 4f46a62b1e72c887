"""`loomray bench coupling/train/sweep`: the coupling service's solves, training
throughput, and what a sweep would cost; each a table."""

from __future__ import annotations

import json

import typer

from loomray.cli.common import (
    Table,
    _config_or_fail,
    _path_or_fail,
    _resolve_train_config,
    _worker_counts,
    bench_app,
    console,
    fail,
    plural,
)


@bench_app.command("coupling")
def bench_coupling_cmd(
    rows: int = typer.Option(100_000, help="Table rows (images, plus flips)."),
    caches: int = typer.Option(4, help="Noise caches per row (K)."),
    batch: int = typer.Option(128, help="Global batch solved per step."),
    dim: int = typer.Option(3072, help="Values per sample (3x32x32 = 3072)."),
    steps: int = typer.Option(300, help="Timed solves."),
    threads: int = typer.Option(1, help="Threads for noise and costs (coupling.service_cpus)."),
    solver: str = typer.Option(
        "lapjv", help="Assignment solver: lapjv (used), lap (the same, holding the GIL), scipy."
    ),
    data: str = typer.Option("random", help="random, or mnist: image rows (at most 5000)."),
    warmup: int = typer.Option(10, help="Untimed solves first (let an image table settle)."),
    lookahead: bool = typer.Option(
        True, help="Prepare the next step's noise and costs during this one's assignment."
    ),
) -> None:
    """Solves per second of the LOOM coupling and where the time goes."""
    from loomray.bench.coupling import PARTS, bench_coupling
    from loomray.coupling.ot import SOLVERS

    for name, value in (
        ("rows", rows),
        ("caches", caches),
        ("batch", batch),
        ("dim", dim),
        ("steps", steps),
        ("threads", threads),
    ):
        if value < 1:
            fail(f"--{name} must be at least 1, got {value}")
    if batch > rows:
        fail(f"--batch ({batch}) cannot exceed --rows ({rows})")
    if solver not in SOLVERS:
        fail(f"--solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    if data not in ("random", "mnist"):
        fail(f"--data must be random or mnist, got {data!r}")
    if warmup < 0:
        fail(f"--warmup must be at least 0, got {warmup}")
    with console.status("timing LOOM solves..."):
        try:
            r = bench_coupling(
                rows,
                caches,
                batch,
                dim,
                steps,
                warmup,
                threads,
                solver=solver,
                data=data,
                lookahead=lookahead,
            )
        except ValueError as err:
            fail(str(err))
    console.print(
        f"LOOM coupling: rows={r.rows} K={r.caches} batch={r.batch} dim={r.dim} "
        f"data={r.data} solver={r.solver} (timed after {r.warmup} solves)"
        + (", next step prepared during each assignment" if r.lookahead and r.threads > 1 else "")
    )
    table = Table()
    table.add_column("part")
    table.add_column("ms / solve", justify="right")
    table.add_column("share", justify="right")
    for part in PARTS:
        ms = r.ms_per_part[part]
        table.add_row(part, f"{ms:.3f}", f"{100 * ms / r.ms_per_solve:.0f}%")
    table.add_row("total", f"{r.ms_per_solve:.3f}", "100%")
    console.print(table)
    console.print(
        f"[bold]{r.solves_per_s:.1f} solves/s[/] on {r.threads} thread(s), {r.steps} steps"
    )
    from loomray.coupling.wire import wire_bytes

    floats, packed = wire_bytes(r.batch, r.dim, 1)
    console.print(
        f"bytes per step through the service: {floats / 1e6:.1f} MB as float32 batch and "
        f"noise, {packed / 1e6:.2f} MB as uint8 images and seeds ({floats / packed:.1f}x fewer)"
    )


@bench_app.command("train")
def bench_train_cmd(
    config: str = typer.Option("digits", "--config", "-c", help="Preset name or YAML path."),
    overrides: list[str] = typer.Argument(None, help="section.key=value overrides."),
    workers: str = typer.Option(
        None,
        help="Training workers; several (1,2) measure scaling: LOOM at each count with "
        "the same --batch-per-rank.",
    ),
    batch_per_rank: int = typer.Option(None, help="With several --workers (default 64)."),
    steps: int = typer.Option(1000, help="Steps of each run."),
    address: str = typer.Option(None, help="Ray cluster to join (default: a local Ray)."),
    repeats: int = typer.Option(1, help="Alternating loom/independent pairs to run."),
) -> None:
    """Steps/s with the LOOM service vs independent coupling, and the workers' wait."""
    import numpy as np

    from loomray.bench.train import bench_train
    from loomray.cluster.connect import LaunchError, connect
    from loomray.data import DatasetError

    counts = _worker_counts(workers) if workers else []
    extra = [*(overrides or []), f"train.steps={steps}", f"train.ckpt_every={steps}"]
    if len(counts) > 1:
        return _bench_scaling(config, extra, counts, batch_per_rank or 64, steps, address)
    cfg = _resolve_train_config(config, extra, counts[0] if counts else None, None)
    log_every = max(1, steps // 10)
    cfg.train.log_every = log_every
    if repeats < 1:
        fail(f"--repeats must be at least 1, got {repeats}")
    try:
        connect(address, quiet=True)
        with console.status(f"training {cfg.name} {2 * repeats} times for {steps} steps..."):
            runs = bench_train(cfg, repeats)
    except (LaunchError, DatasetError) as err:
        fail(str(err))
    table = Table()
    columns = ("repeat", "coupling", "steps/s", "wait / step", "wait share", "solve ms", "journal")
    for col in columns:
        table.add_column(col, justify="right")
    for i, pair in enumerate(runs):
        for r in pair:
            table.add_row(
                str(i + 1),
                r.kind,
                f"{r.steps_per_s:.2f}",
                f"{r.wait_ms:.2f} ms",
                f"{100 * r.wait_fraction:.2f}%",
                f"{r.solve_ms:.2f}",
                f"{r.journal_bytes_per_step:,.0f} B/step",
            )
    console.print(
        f"{cfg.name}: {plural(cfg.train.workers, 'worker')}, batch {cfg.train.batch}, "
        f"{steps} steps per run (first of 10 windows left out)"
    )
    console.print(table)
    ratios = [loom.steps_per_s / ind.steps_per_s for loom, ind in runs]
    waits = [loom.wait_fraction for loom, _ in runs]
    console.print(
        f"[bold]ratio loom / independent: {np.mean(ratios):.3f}[/] "
        f"(per repeat {', '.join(f'{x:.3f}' for x in ratios)}); LOOM wait "
        f"{100 * np.mean(waits):.2f}% of step time"
    )


def _bench_scaling(config, extra, counts, per_rank, steps, address) -> None:
    from loomray.bench.train import bench_scaling
    from loomray.cluster.connect import LaunchError, connect
    from loomray.data import DatasetError

    extra = [*extra, f"train.batch={max(counts) * per_rank}", f"train.workers={max(counts)}"]
    cfg = _config_or_fail(config, extra)
    cfg.train.log_every = max(1, steps // 10)
    try:
        connect(address, quiet=True)
        with console.status(f"training {cfg.name} at {', '.join(map(str, counts))} workers..."):
            runs = bench_scaling(cfg, counts, per_rank)
    except (LaunchError, DatasetError) as err:
        fail(str(err))
    table = Table(title=f"{cfg.name}: LOOM, {per_rank} images per rank, {steps} steps per run")
    for col in ("workers", "global batch", "images/s", "vs 1st", "wait share"):
        table.add_column(col, justify="right")
    for r in runs:
        ratio = r.images_per_s / runs[0].images_per_s
        table.add_row(
            str(r.workers),
            str(r.batch),
            f"{r.images_per_s:.0f}",
            f"{ratio:.2f}x",
            f"{100 * r.wait_fraction:.2f}%",
        )
    console.print(table)


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
