"""The `loomray` command line: parse, validate, call the library."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="LOOM-CFM flow matching on Ray: train, sweep, evaluate, benchmark.",
    no_args_is_help=True,
    add_completion=False,
)
bench_app = typer.Typer(help="Measure speed: figures go to docs/results.md.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

console = Console()


def fail(message: str) -> None:
    """End the command with one clear sentence and exit code 2."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _config_or_fail(config: str, overrides: list[str]):
    from loomray.config import ConfigError, load_config

    try:
        return load_config(config, overrides)
    except ConfigError as err:
        fail(str(err))


@app.command("presets")
def presets_cmd() -> None:
    """List the shipped presets."""
    from loomray.config import load_config, preset_names

    table = Table()
    for col in ("preset", "data", "model", "coupling", "batch", "steps", "workers"):
        table.add_column(col)
    for name in preset_names():
        c = load_config(name)
        model = c.model.kind if c.model.kind == "mlp" else f"unet {c.model.channels}ch"
        table.add_row(
            name,
            f"{c.data.name} {'x'.join(map(str, c.sample_shape))}",
            model,
            f"{c.coupling.kind} K={c.coupling.caches}",
            str(c.train.batch),
            str(c.train.steps),
            f"{c.train.workers} x {'GPU' if c.train.gpus_per_worker else 'CPU'}",
        )
    console.print(table)


config_app = typer.Typer(help="Inspect configurations.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show_cmd(
    config: str = typer.Option(..., "--config", "-c", help="Preset name or YAML path."),
    overrides: list[str] = typer.Argument(None, help="section.key=value overrides."),
) -> None:
    """Print the resolved config and the model's parameter count."""
    from loomray.config import dump_config
    from loomray.models import build_model, count_parameters

    cfg = _config_or_fail(config, overrides or [])
    typer.echo(dump_config(cfg), nl=False)
    params = count_parameters(build_model(cfg))
    typer.echo(f"# model parameters: {params:,} ({params / 1e6:.2f}M)")


@app.command("sample")
def sample_cmd(
    ckpt: str = typer.Option(..., help="Checkpoint file or run directory."),
    method: str = typer.Option(
        "midpoint-2", help="Sampler: euler-N, midpoint-N, heun-N, rk4-N (N steps) or dopri5."
    ),
    n: int = typer.Option(64, help="Number of samples."),
    out: str = typer.Option("samples.png", help="PNG to write (grid, or scatter for toy2d)."),
    seed: int = typer.Option(0, help="Noise seed."),
) -> None:
    """Draw samples from a checkpoint's EMA model and write them as an image."""
    import torch

    from loomray.checkpoint import CheckpointError, ema_model_of, load_checkpoint
    from loomray.coupling import noise_from_seeds
    from loomray.images import save_samples
    from loomray.sampling import parse_method, sample

    if n < 1:
        fail(f"--n must be at least 1, got {n}")
    try:
        parse_method(method)
        cfg, model = ema_model_of(load_checkpoint(ckpt))
    except (CheckpointError, ValueError) as err:
        fail(str(err))
    z = torch.from_numpy(
        noise_from_seeds(seed * 1_000_003 + torch.arange(n).numpy(), cfg.sample_shape)
    )
    result = sample(model, z, method, rtol=cfg.eval.rtol, atol=cfg.eval.atol)
    path = save_samples(result.x, out, title=f"{cfg.name} {result.method} ({result.nfe} NFE)")
    console.print(f"wrote {n} samples ({result.method}, {result.nfe} NFE) to {path}")


@bench_app.command("coupling")
def bench_coupling_cmd(
    rows: int = typer.Option(100_000, help="Table rows (images, plus flips)."),
    caches: int = typer.Option(4, help="Noise caches per row (K)."),
    batch: int = typer.Option(128, help="Global batch solved per step."),
    dim: int = typer.Option(3072, help="Values per sample (3x32x32 = 3072)."),
    steps: int = typer.Option(300, help="Timed solves."),
    threads: int = typer.Option(1, help="BLAS threads (the service runs on one core)."),
) -> None:
    """Solves per second of the LOOM coupling and where the time goes."""
    from loomray.bench.coupling import PARTS, bench_coupling

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
    with console.status("timing LOOM solves..."):
        r = bench_coupling(rows, caches, batch, dim, steps, threads=threads)
    console.print(f"LOOM coupling: rows={r.rows} K={r.caches} batch={r.batch} dim={r.dim}")
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


def main() -> None:  # pragma: no cover - console entry
    app()
