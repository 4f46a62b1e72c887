"""`loomray bench sample`: the speed of each sampler on a trained model."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from loomray.cli import _path_or_fail, bench_app, console, fail


@bench_app.command("sample")
def bench_sample_cmd(
    ckpt: str = typer.Option(..., help="Checkpoint file or run directory."),
    methods: str = typer.Option(
        None, help="Comma-separated samplers (euler-N, midpoint-N, rk4-N, dopri5; default: "
        "the run's eval.methods)."
    ),
    n: int = typer.Option(4096, help="Samples per sampler."),
    batch: int = typer.Option(None, help="Samples per batch (default: the run's eval.batch)."),
    device: str = typer.Option(None, help="cuda or cpu (default: cuda when available)."),
    out: str = typer.Option(None, help="Also write the table as JSON here."),
) -> None:
    """Images/s and NFE of each sampler on a checkpoint's EMA model (no FID)."""
    from dataclasses import replace

    import torch

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
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev not in ("cuda", "cpu") or (dev == "cuda" and not torch.cuda.is_available()):
        fail(f"--device must be cpu or cuda (with a GPU), got {dev}")
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
    name = torch.cuda.get_device_name() if dev == "cuda" else "CPU"
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
