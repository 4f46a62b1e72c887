"""`loomray sweep`: a Ray Tune + Optuna search over a sweep file."""

from __future__ import annotations

import typer

from loomray.cli.common import (
    DASHBOARD_HOST_HELP,
    Table,
    _show_dashboard,
    _warn_exposure,
    app,
    console,
    fail,
    plural,
)


@app.command("sweep")
def sweep_cmd(
    spec: str = typer.Argument(
        ...,
        help="Sweep spec YAML, or a shipped spec by name (caches, caches-digits); docs/sweeps.md.",
    ),
    overrides: list[str] = typer.Argument(
        None,
        help="key=value: the spec's own keys (trials=8, concurrency=2, "
        "scheduler.grace_steps=50) or config keys for every trial (train.steps=200).",
    ),
    storage: str = typer.Option(None, help="Where sweeps go (overrides the spec's storage)."),
    resume: bool = typer.Option(False, help="Continue the interrupted sweep of this spec."),
    address: str = typer.Option(
        None,
        help="Ray cluster to join: auto, ray://host:10001, host:6379. Default: start a local Ray.",
    ),
    verbose: bool = typer.Option(False, help="Stream the trials' logs to this terminal."),
    dashboard_host: str = typer.Option("127.0.0.1", help=DASHBOARD_HOST_HELP),
    concurrency: str = typer.Option(
        None,
        help="Trials at once (overrides the spec's; may change on --resume): N, or auto "
        "for as many as the cluster can hold.",
    ),
    plan: bool = typer.Option(
        False, "--plan", help="Print the models, trials, GPU-hours and wall clock; start nothing."
    ),
    plan_gpus: int = typer.Option(
        None, "--gpus", help="With --plan: the GPUs to plan for (default: concurrency's worth)."
    ),
    plan_gpu: str = typer.Option("H100", "--gpu", help="With --plan: the GPU of the step rate."),
    rate: float = typer.Option(None, help="With --plan: training steps/s instead of measured."),
) -> None:
    """Search caches, batch size, sampler NFE (any config key) for the best FID with Tune."""
    from loomray.data import DatasetError
    from loomray.sweep import SweepError, load_spec, prepare_sweep_dir, run_sweep
    from loomray.train.launch import LaunchError

    try:
        sweep = load_spec(spec, storage, overrides or [])
        if concurrency is not None:
            sweep.concurrency = _concurrency_or_fail(concurrency)
        if plan:
            return _print_plan(sweep, plan_gpus, plan_gpu, rate)
        prepare_sweep_dir(sweep, resume)  # checks only; run_sweep checks again
        console.print(
            f"sweep [bold]{sweep.name}[/]: {sweep.trials} trials over "
            f"{', '.join(sweep.space)}; objective {' + '.join(sweep.objectives)}; "
            f"writing to {sweep.dir}"
        )
        _warn_exposure(dashboard_host)
        result = run_sweep(
            sweep,
            resume=resume,
            address=address,
            quiet=not verbose,
            on_dashboard=_show_dashboard,
            dashboard_host=dashboard_host,
        )
    except (SweepError, LaunchError, DatasetError) as err:
        fail(str(err))
    except ConnectionError as err:
        fail(f"cannot reach the Ray cluster at {address}: {err}")
    _sweep_table(sweep, result)
    _sweep_summary(sweep, result)
    if result.interrupted:
        console.print(
            f"the sweep stopped with {result.finished} of {sweep.trials} trials finished; "
            f"continue it with: loomray sweep {spec} --resume"
            + (f" --storage {storage}" if storage else ""),
            markup=False,
        )
        raise typer.Exit(code=1)


def _sweep_summary(sweep, result) -> None:
    """Below the table: the resources the trials held, the best trial, the files."""
    if result.busy and result.busy[1]:
        resource, most, share = result.busy
        console.print(
            f"{resource} time held by trials: {100 * share:.0f}% of {most:g} {resource}s over "
            f"{result.seconds:.0f} s, {plural(result.concurrency, 'trial')} at once; trials "
            f"waited {result.waited_s:.0f} s in their slots for another trial's training",
            markup=False,
        )
    if sweep.multi:
        console.print("* on the Pareto front of (" + ", ".join(sweep.objectives) + ")")
    if result.best is not None:
        b, metric = result.best, sweep.metric
        console.print(
            f"best: {metric} {b[metric]:.3f} with {b['method']} ({b['nfe']:g} NFE), "
            + ", ".join(f"{k}={b[k]}" for k in sweep.space if not k.startswith("sampler."))
        )
    for what, path in result.files.items():
        console.print(f"{what + ':':8s}{path}")


def _sweep_table(sweep, result) -> None:
    """The trials of a finished sweep, best first, and what they trained."""
    metric = sweep.metric
    keys = [k for k in sweep.space if not k.startswith("sampler.")]
    table = Table(title=f"sweep {sweep.name}: trials by {metric}")
    for col in ("trial", *(k.split(".")[-1] for k in keys), "sampler", "NFE", metric, "model"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for r in result.rows:
        value = r[metric]
        table.add_row(
            r["trial"],
            *(f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys),
            r["method"],
            f"{r['nfe']:g}" if r["nfe"] is not None else "-",
            f"{value:.3f}" if value is not None else "-",
            (r["model"][:8] + ("+" if r["trained"] else "")) if r["model"] else "-",
            r["status"] + (" *" if r.get("pareto") else ""),
        )
    console.print(table)
    console.print("model: the trained model's key under models/ (+: this trial trained it)")
    failed = [r for r in result.rows if r.get("error")]
    if failed:
        console.print(
            f"{plural(len(failed), 'trial')} failed; trial {failed[0]['trial']}: "
            f"{failed[0]['error']}",
            markup=False,
        )
    pruned = sum(r["status"] == "pruned" for r in result.rows)
    stopped = sum(r["status"] == "pruned" and r["trained"] for r in result.rows)
    console.print(
        f"{result.finished} trial{'s' if result.finished != 1 else ''} finished "
        + (f"and {pruned} pruned (ASHA stopped their training) " if pruned else "")
        + f"in {result.seconds:.0f} s; "
        f"{result.trained} model{'s' if result.trained != 1 else ''} trained for them"
        + (f", {stopped} of them stopped early by ASHA" if stopped else "")
        + " (trials that differ only in sampler reuse a trained model)"
    )


def _print_plan(sweep, gpus: int | None, gpu: str, rate: float | None) -> None:
    """`loomray sweep --plan`: what the sweep will train and cost; nothing starts."""
    from loomray.sweep import SweepError
    from loomray.sweep.plan import duration, plan_sweep

    if gpus is not None and gpus < 1 or rate is not None and rate <= 0:
        fail("--gpus must be at least 1 and --rate positive")
    try:
        p = plan_sweep(sweep, gpus, gpu, rate)
    except SweepError as err:
        fail(str(err))
    keys = list(p.models[0].params) if p.models else []
    table = Table(title=f"sweep {sweep.name}: the models it may train")
    for col in (*(k.split(".")[-1] for k in keys), "steps", "images", f"{p.device}s", "hours"):
        table.add_column(col, justify="right")
    for m in p.models:
        row = [str(m.params[k]) for k in keys]
        table.add_row(
            *row, f"{m.steps:,}", f"{m.steps * m.batch:,}", f"{m.gpus:g}", f"{m.hours:.2f}"
        )
    console.print(table)
    more = f" of {p.configurations}" if p.configurations > len(p.models) else ""
    console.print(
        f"{sweep.trials} trials, {len(p.models)}{more} models trained at most (trials that "
        f"differ only in sampler score a trained model)\n"
        "training alone, estimated low (one process's step; DDP and the service add):\n"
        f"training: {p.gpu_hours:.1f} {p.device}-hours at {p.rate:g} steps/s "
        f"({p.rate_source}); about {duration(p.wall_hours)} of wall clock on {p.gpus:g} "
        f"{p.device}s "
        f"({plural(p.slots, 'training')} at once)\n"
        f"in-training evaluation, not priced: {p.evaluations} evaluations, {p.samples:,} "
        f"samples, {p.nfe:,.0f} network evaluations; ASHA stops some trainings early",
        markup=False,
    )


def _concurrency_or_fail(text: str) -> int:
    """``--concurrency``: N >= 1, or auto (0)."""
    if text == "auto":
        return 0
    if not text.isdigit() or int(text) < 1:
        fail(f"--concurrency must be an integer >= 1 or auto, got {text!r}")
    return int(text)
