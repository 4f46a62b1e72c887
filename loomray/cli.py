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
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code=2)


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
