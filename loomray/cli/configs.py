"""`loomray presets`, `config show/reference`, `import` and `table`: configurations,
released checkpoints and the paper's tables."""

from __future__ import annotations

from pathlib import Path

import typer

from loomray.cli.common import (
    HELP_FLAGS,
    Table,
    _config_or_fail,
    app,
    console,
    fail,
    locked_or_fail,
)


@app.command("presets")
def presets_cmd() -> None:
    """List the shipped presets."""
    from loomray.config import load_config, preset_names

    table = Table()
    for col in ("preset", "data", "model", "coupling", "batch", "steps", "workers"):
        table.add_column(col, no_wrap=col == "preset")
    for name in preset_names():
        c = load_config(name)
        model = c.model.kind if c.model.kind == "mlp" else f"unet {c.model.channels}ch"
        table.add_row(
            name,
            f"{c.data.name} {'x'.join(map(str, c.sample_shape))}",
            model,
            c.coupling.kind + (f" K={c.coupling.caches}" if c.coupling.kind == "loom" else ""),
            str(c.train.batch),
            str(c.train.steps),
            f"{c.train.workers} x {'GPU' if c.train.gpus_per_worker else 'CPU'}",
        )
    console.print(table)


config_app = typer.Typer(
    help="Inspect configurations.", no_args_is_help=True, context_settings=HELP_FLAGS
)


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


@config_app.command("reference")
def config_reference_cmd() -> None:
    """Print every config key with its type, default and meaning (docs/config.md)."""
    from loomray.config.reference import render_reference

    typer.echo(render_reference())


@app.command("import")
def import_cmd(
    path: str = typer.Argument(
        ..., help="The authors' released model.pth (Hugging Face cvg-unibe/loom-cfm_<preset>)."
    ),
    preset: str = typer.Option(
        ..., help="cifar10 (also for the cifar10_reflow release), imagenet32, imagenet64, ffhq256."
    ),
    run_dir: str = typer.Option(..., help="A new run directory to write."),
) -> None:
    """Bring the LOOM-CFM authors' released weights in as a loomray run (docs/reproduce.md)."""
    from loomray.train.official import ReleaseError, check_run_dir, import_official

    folder = Path(run_dir).expanduser()
    try:
        check_run_dir(folder)
        with locked_or_fail(folder, "run dir"):
            check_run_dir(folder)  # as it is now that nobody else can write into it
            with console.status(f"importing {path} as {preset}..."):
                done = import_official(path, preset, run_dir)
    except ReleaseError as err:
        fail(str(err))
    extra = f" and {done['autoencoder']} autoencoder tensors" if done["autoencoder"] else ""
    console.print(
        f"imported {done['keys']} tensors{extra} at step {done['step']} into {run_dir} "
        f"({done['checkpoint']}): {done['weights']}; try: loomray evaluate --ckpt {run_dir}",
        markup=False,
    )


@app.command("table")
def table_cmd(
    path: str = typer.Argument(
        ..., help="table.parquet, a checkpoint folder holding one, or a run dir (latest)."
    ),
) -> None:
    """Check an assignment table (checksum, seed multiset) and describe it."""
    from loomray.checkpoint import CheckpointError, resolve_checkpoint
    from loomray.coupling import AssignmentTable
    from loomray.train.worker import TABLE_FILE

    target = Path(path)
    try:
        if target.is_dir():
            beside = target / TABLE_FILE
            target = beside if beside.is_file() else resolve_checkpoint(target).parent / TABLE_FILE
        if not target.is_file():
            raise ValueError(f"no assignment table at {target}")
        t = AssignmentTable.load(target)  # checks checksum, shape and seed multiset
    except (CheckpointError, ValueError) as err:
        fail(str(err))
    console.print(
        f"{target}: {t.rows:,} rows x {t.caches} caches at step {t.step}; checksum ok; "
        f"the same seed multiset it was created with (fingerprint {t.fingerprint[:16]})",
        soft_wrap=True,
    )
